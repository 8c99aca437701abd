"""Library jobs get a keeper (tether.keeper): real daemons that hide from the
cookie and the session — ssh-agent and gpg-agent (non-dumpable: their environ is
unreadable even to their own user), a setproctitle-style daemon (its environ
area overwritten) and an `env -i` double fork — leave nothing under
tether.start(), as root and as an unprivileged user, and the report is complete
only when that is true.

Without the keeper (``watchdog=False``: the old in-process spawn) the same jobs
leave every one of these daemons running, reported complete.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from helpers import (
    SRC,
    alive,
    as_user,
    ensure_unprivileged_user,
    is_root,
    kill_identity,
    proc_stat,
    read_identity,
    user_python,
    wait_for,
)
from tether._platform.linux import procfs
from tether.journal import JobRecord, Journal, JournalProblem

#: Run as the job owner: start the job, wait for its leader, wait for the
#: daemon to be ready, then end the job and print what the report says.
LIBRARY = r"""
import json, os, sys, time
import tether
argv, ready = json.loads(sys.argv[1]), sys.argv[2]
with tether.start(argv, policy="TERM,3s,KILL", stdout=open(os.devnull, "w")) as job:
    job.wait()
    deadline = time.monotonic() + 20
    while not os.path.exists(ready) and time.monotonic() < deadline:
        time.sleep(0.02)
    was_ready = os.path.exists(ready)
    report = job.cancel()
print(json.dumps({
    "ready": was_ready,
    "complete": report.complete,
    "members": [m.cmdline for m in report.members],
    "survivors": [s.pid for s in report.survivors],
    "trackers": [str(t) for t in report.trackers],
}))
"""

#: A daemon that renames itself the way setproctitle does: it writes its title
#: over the argv and environ area (here through /proc/self/mem, as
#: prctl(PR_SET_MM) would need CAP_SYS_RESOURCE), so neither its cookie nor its
#: command line survive. It double-forks out of the job's session first.
RETITLED = r"""
import os, sys, time
mark = sys.argv[1]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
with open("/proc/self/stat", "rb") as f:
    fields = f.read().rsplit(b")", 1)[1].split()
arg_start, arg_end, env_start, env_end = (int(fields[i]) for i in (45, 46, 47, 48))
with open("/proc/self/mem", "r+b", buffering=0) as mem:
    mem.seek(env_start)
    mem.write(b"\0" * (env_end - env_start))
    title = b"renamed-daemon"[: arg_end - arg_start - 1]
    mem.seek(arg_start)
    mem.write(title + b"\0" * (arg_end - arg_start - len(title)))
with open(f"/proc/{os.getpid()}/environ", "rb") as f:
    assert b"TETHER_JOB_ID" not in f.read(), "environ not overwritten"
starttime = fields[19].decode()
with open(mark + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {starttime}")
os.rename(mark + ".tmp", mark)
time.sleep(3600)
"""

#: `env -i` double fork: no cookie, own session, parent gone.
ENV_I = r"""
import os, sys, time
mark = sys.argv[1]
with open(f"/proc/{os.getpid()}/stat", "rb") as f:
    starttime = f.read().rsplit(b")", 1)[1].split()[19].decode()
with open(mark + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {starttime}")
os.rename(mark + ".tmp", mark)
time.sleep(3600)
"""


def _cmdline_has(text: str) -> list[tuple[int, int]]:
    """Live processes whose command line contains ``text``."""
    out = []
    for pid in procfs.pids():
        try:
            with procfs.ProcDir(pid) as d:
                if text.encode() in d.read("cmdline"):
                    st = d.stat()
                    if st.state not in ("Z", "X"):
                        out.append((pid, st.starttime))
        except (procfs.ProcessGone, OSError):
            continue
    return out


def _alive_identity(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    pid, starttime = read_identity(path)
    st = proc_stat(pid)
    return [(pid, starttime)] if st and st.starttime == starttime and st.state != "Z" else []


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    if not is_root():
        pytest.skip("creating and switching to an unprivileged user needs root")
    return ensure_unprivileged_user()


@pytest.fixture(params=["root", "unprivileged"])
def owner(request: pytest.FixtureRequest, user: pwd.struct_passwd) -> pwd.struct_passwd | None:
    """None: the test process's own uid (root); else the unprivileged user."""
    return None if request.param == "root" else user


@pytest.fixture
def work(owner: pwd.struct_passwd | None) -> Iterator[Path]:
    """A short private directory of the job owner's (agents' socket paths are short)."""
    d = Path(tempfile.mkdtemp(prefix="tk-", dir="/tmp"))
    if owner is not None:
        os.chown(d, owner.pw_uid, owner.pw_gid)
    d.chmod(0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _script(work: Path, name: str, text: str, owner: pwd.struct_passwd | None) -> str:
    path = work / name
    path.write_text(text)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return str(path)


def _run_library(
    owner: pwd.struct_passwd | None, argv: list[str], ready: Path
) -> dict[str, object]:
    program = LIBRARY
    if owner is None:
        cmd = ["env", f"PYTHONPATH={SRC}", sys.executable, "-c", program]
    else:
        py = user_python(owner)
        if py is None:
            pytest.skip(f"no Python that uid {owner.pw_uid} can run with tether importable")
        cmd = as_user(owner, [*py, "-c", program])
    done = subprocess.run(
        [*cmd, json.dumps(argv), str(ready)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ready"], f"the daemon never got ready: {done.stderr}"
    return result


def _program_python(owner: pwd.struct_passwd | None) -> str:
    if owner is None:
        return sys.executable
    py = user_python(owner)
    if py is None:
        pytest.skip(f"no Python that uid {owner.pw_uid} can run")
    return py[-1]


def _daemon(kind: str, work: Path, owner: pwd.struct_passwd | None) -> tuple[list[str], Path]:
    """(the job's argv, the file that exists once its daemon is up)."""
    if kind == "ssh-agent":
        if shutil.which("ssh-agent") is None:
            pytest.skip("needs ssh-agent (apt: openssh-client)")
        sock = work / "agent.sock"
        return ["ssh-agent", "-s", "-a", str(sock)], sock
    if kind == "gpg-agent":
        if shutil.which("gpg-agent") is None:
            pytest.skip("needs gpg-agent (apt: gnupg)")
        home = work / "gnupg"
        home.mkdir(mode=0o700)
        if owner is not None:
            os.chown(home, owner.pw_uid, owner.pw_gid)
        # Its own GNUPGHOME: the socket lands there, not in the user's.
        return ["gpg-agent", "--homedir", str(home), "--daemon"], home / "S.gpg-agent"
    py = _program_python(owner)
    mark = work / f"{kind}.pid"
    if kind == "retitled":
        return [py, _script(work, "retitled.py", RETITLED, owner), str(mark)], mark
    script = _script(work, "env_i.py", ENV_I, owner)
    # Double fork out of the session with an empty environment.
    return ["sh", "-c", f"env -i setsid {py} {script} {mark} & exit 0"], mark


def _leftovers(kind: str, work: Path) -> list[tuple[int, int]]:
    if kind in ("ssh-agent", "gpg-agent"):
        return _cmdline_has(str(work))
    return _alive_identity(work / f"{kind}.pid")


@pytest.mark.parametrize("kind", ["ssh-agent", "gpg-agent", "retitled", "env-i"])
def test_library_job_leaves_no_daemon(
    kind: str, owner: pwd.struct_passwd | None, work: Path
) -> None:
    argv, ready = _daemon(kind, work, owner)
    try:
        result = _run_library(owner, argv, ready)
        left = _leftovers(kind, work)
        assert not left, f"{kind} outlived tether.start(): {left}; report {result}"
        assert result["complete"] is True, result
        assert not result["survivors"], result
        # Found, not just gone: the daemon is among the members the report names.
        named = {"ssh-agent": "ssh-agent", "gpg-agent": "gpg-agent"}
        word = named.get(kind, "renamed-daemon" if kind == "retitled" else "env_i.py")
        assert any(word in m for m in result["members"]), result  # type: ignore[union-attr]
        assert any("subreaper: used" in t for t in result["trackers"]), result  # type: ignore[union-attr]
    finally:
        for ident in _leftovers(kind, work):
            kill_identity(*ident)


def _job_keeper_of(job: tether.Job) -> tuple[int, int]:
    leader = proc_stat(job.pid)
    assert leader is not None
    job_keeper = proc_stat(leader.ppid)
    assert job_keeper is not None
    return job_keeper.pid, job_keeper.starttime


def test_job_keeper_is_the_leaders_parent_not_a_member_and_keeps_the_next_job() -> None:
    """The leader's parent is a job keeper (subreaper) under this process's keeper;
    it is never a member, and once the job is proven empty it waits for this
    process's next job instead of leaving (no fork, no exit per job)."""
    with tether.start(["sleep", "60"]) as job:
        job_keeper = _job_keeper_of(job)
        keeper = proc_stat(proc_stat(job_keeper[0]).ppid)  # type: ignore[union-attr]
        assert keeper is not None and keeper.ppid == os.getpid()
        report = job.cancel()
    assert report.complete
    assert [m.pid for m in report.members] == [job.pid]
    assert any(t.name == "subreaper" and t.used for t in report.trackers)
    assert alive(*job_keeper), "the job keeper left instead of waiting for the next job"
    with tether.start(["sleep", "60"]) as again:
        assert _job_keeper_of(again) == job_keeper
        report = again.cancel()
    assert [m.pid for m in report.members] == [again.pid]


def test_at_most_two_job_keepers_wait_and_a_dead_one_is_passed_over() -> None:
    jobs = [tether.start(["sleep", "60"]) for _ in range(3)]
    job_keepers = [_job_keeper_of(j) for j in jobs]
    assert len(set(job_keepers)) == 3, "concurrent jobs share no job keeper"
    for j in jobs:
        assert j.cancel().complete
    wait_for(lambda: sum(alive(*k) for k in job_keepers) == 2, 10.0, "a third job keeper to exit")
    # The waiting job keepers are killed: the next job still starts (the
    # keeper forks a new job keeper once neither takes the request).
    for k in job_keepers:
        if alive(*k):
            kill_identity(*k)
    wait_for(lambda: not any(alive(*k) for k in job_keepers), 10.0, "the job keepers to be gone")
    done = tether.run(["true"])
    assert done.returncode == 0 and done.report.complete


def test_a_job_keeper_killed_with_the_request_unanswered_fails_the_start() -> None:
    """A job keeper that waits answers on the socket the request came on: if
    it dies before it answers, the start ends with an error, not a hang."""
    with tether.start(["sleep", "60"]) as job:
        job_keeper = _job_keeper_of(job)
        assert job.cancel().complete
    # It says "ready" within microseconds of "idle" (no state shows that it
    # has: given ample time); stopped then, it takes the request and never answers.
    time.sleep(0.5)
    os.kill(job_keeper[0], signal.SIGSTOP)
    killer = threading.Timer(0.5, kill_identity, job_keeper)
    killer.start()
    outcome: list[object] = []
    starter = threading.Thread(
        target=lambda: outcome.append(_start_error(["sleep", "60"])), daemon=True
    )
    starter.start()
    starter.join(60)
    killer.join()
    assert not starter.is_alive(), "the start hung on a dead job keeper"
    assert isinstance(outcome[0], OSError), outcome
    assert "exited before starting the job" in str(outcome[0])
    assert not list(Journal.default().entries()), "the failed start left its record"
    done = tether.run(["true"])  # the next start goes through the keeper
    assert done.returncode == 0 and done.report.complete


def _start_error(argv: list[str]) -> object:
    try:
        tether.start(argv).cancel()
    except OSError as err:
        return err
    return "started"


def test_caller_sigkill_keeper_terminates_what_only_it_can_find(tmp_path: Path) -> None:
    """SIGKILL of the library caller: the job keeper terminates the job from its
    journal record, including an `env -i` daemon that left the session (no
    cookie, no session: only the keeper's adoption finds it)."""
    mark = tmp_path / "env-i.pid"
    script = _script(tmp_path, "env_i.py", ENV_I, None)
    argv = ["sh", "-c", f"env -i setsid {sys.executable} {script} {mark} & exec sleep 3600"]
    program = (
        "import sys, tether\n"
        f"job = tether.start({argv!r}, policy='TERM,3s,KILL')\n"
        "print(job.pid, flush=True)\n"
        "job.wait()\n"
    )
    with (tmp_path / "stderr").open("wb") as errf:
        proc = subprocess.Popen(
            ["env", f"PYTHONPATH={SRC}", sys.executable, "-c", program],
            stdout=subprocess.PIPE,
            stderr=errf,
        )
    assert proc.stdout is not None
    leader = int(proc.stdout.readline())
    wait_for(mark.exists, 20.0, "the env -i daemon")
    daemon = read_identity(mark)
    leader_st = proc_stat(leader)
    try:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        wait_for(lambda: not _alive_identity(mark), 20.0, "the job keeper to end the daemon")
        if leader_st is not None:
            wait_for(
                lambda: (st := proc_stat(leader)) is None or st.starttime != leader_st.starttime,
                20.0,
                "the leader to be ended and reaped",
            )
        wait_for(lambda: "nothing left" in (tmp_path / "stderr").read_text(), 20.0, "the summary")
    finally:
        kill_identity(*daemon)


#: A caller that starts two jobs a moment apart (its keeper forks a spare job
#: keeper once idle), prints its keeper's identity and those of the keeper's
#: children, then exits by ``sys.argv[1]`` ("exit", or "kill" for SIGKILL).
_SPARE_CALLER = r"""
import json, os, signal, sys, time
import tether
from tether.keeper import _client
from tether._platform.linux import procfs
from tether.journal import Journal
for _ in range(2):
    tether.run(["true"])
    time.sleep(0.1)
with procfs.ProcDir(_client.pid) as d:
    keeper = [_client.pid, d.stat().starttime]
kids = []
for pid in procfs.pids():
    try:
        with procfs.ProcDir(pid) as d:
            st = d.stat()
    except (OSError, procfs.ProcessGone):  # exited during the scan
        continue
    if st.ppid == keeper[0] and st.state not in ("Z", "X"):
        kids.append([pid, st.starttime])
print(json.dumps([keeper, kids]), flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_keeper_and_its_spare_job_keeper_leave_with_the_caller(how: str) -> None:
    """The spare job keeper waits for a request that will never come once the
    caller is gone: the keeper closes its channel, the spare exits, and the
    keeper (which waits for every job keeper) exits after it."""
    proc = subprocess.run(
        ["env", f"PYTHONPATH={SRC}", sys.executable, "-c", _SPARE_CALLER, how],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    keeper, kids = json.loads(proc.stdout)
    assert kids, "the keeper had forked no spare job keeper"

    def gone(pid: int, starttime: int) -> bool:
        st = proc_stat(pid)
        return st is None or st.starttime != starttime or st.state in ("Z", "X")

    try:
        wait_for(lambda: all(gone(*i) for i in [keeper, *kids]), 20.0, "the keeper and spare")
    finally:
        for ident in [keeper, *kids]:
            if not gone(*ident):
                kill_identity(*ident)


@pytest.mark.parametrize(
    "args, env",
    [(["echo", "a\0b"], None), (["true"], {"BAD": "a\0b"}), (["true"], {"A=B": "c"})],
    ids=["nul-in-argv", "nul-in-env", "equals-in-name"],
)
def test_an_argument_popen_refuses_is_refused_as_popen_does(
    args: list[str], env: dict[str, str] | None
) -> None:
    """subprocess raises ValueError before anything starts; so does a kept job
    (the job keeper answers with the error, and still serves the next job)."""
    full_env = None if env is None else {**os.environ, **env}
    with pytest.raises(ValueError):
        subprocess.run(args, env=full_env, check=False)
    with pytest.raises(ValueError):
        tether.run(args, env=full_env)
    assert tether.run(["true"]).returncode == 0


_FORKING_CALLER = r"""
import os, sys, warnings
warnings.simplefilter("error")  # an unclosed inherited socket would be a ResourceWarning
import tether
with tether.start(["true"]) as job:  # leaves its job keeper waiting
    job.wait()
parents = job._selection.keeper_pid
pid = os.fork()
if pid == 0:
    try:
        with tether.start(["true"]) as job:  # its own keeper: not the parent's
            code = job.wait()
        sys.stderr.flush()
        os._exit(code if job._selection.keeper_pid != parents else 98)
    except BaseException:
        import traceback; traceback.print_exc()
        os._exit(99)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert tether.run(["true"]).returncode == 0
print("ok", flush=True)
"""


def test_a_fork_of_the_caller_starts_its_own_jobs_and_leaves_the_parents_alone() -> None:
    proc = subprocess.run(
        ["env", f"PYTHONPATH={SRC}", sys.executable, "-X", "dev", "-c", _FORKING_CALLER],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert "ResourceWarning" not in proc.stderr, proc.stderr


def test_a_job_that_lowers_its_job_keepers_limits_does_not_fail_the_next() -> None:
    """A job may prlimit its parent, the job keeper: a hard limit it lowered
    cannot be raised back, so that job keeper takes no next job (the keeper
    starts one) rather than failing it."""
    first = tether.run(["sh", "-c", "prlimit --pid $PPID --nofile=512:512"])
    assert first.returncode == 0
    for _ in range(3):
        done = tether.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True)
        assert done.returncode == 0
        assert done.stdout.strip() != "512", "a job inherited the lowered limit"


_HELD_LOCK_FORK = r"""
import os, signal, sys, threading
import tether
from tether.keeper import _client
assert tether.run(["true"]).returncode == 0
took, go = threading.Event(), threading.Event()
def hold():
    with _client._lock:  # as a thread in the middle of starting a job
        took.set()
        go.wait()
t = threading.Thread(target=hold)
t.start()
took.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a deadlocked child dies of SIGALRM instead of hanging
    code = tether.run(["true"]).returncode
    sys.stderr.flush()
    os._exit(code)
_, status = os.waitpid(pid, 0)
go.set()
t.join()
print(os.waitstatus_to_exitcode(status), flush=True)
"""


def test_a_fork_taken_while_another_thread_starts_a_job_can_start_jobs() -> None:
    proc = subprocess.run(
        ["env", f"PYTHONPATH={SRC}", sys.executable, "-c", _HELD_LOCK_FORK],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "0", (proc.stdout, proc.stderr)


def test_run_records_the_running_job_before_it_waits_on_it() -> None:
    """tether.run defers the running job's record (its leader) to its first
    wait: a job that runs on is recorded while it runs, as with start()."""
    before = {e.job_id for e in Journal.default().entries() if not isinstance(e, JournalProblem)}
    done: list[tether.CompletedJob] = []
    argv = ("sleep", "3.25")  # this test's job, told from any other by its argv
    runner = threading.Thread(target=lambda: done.append(tether.run(list(argv))))
    runner.start()
    try:

        def running() -> list[JobRecord]:
            return [
                e
                for e in Journal.default().entries()
                if isinstance(e, JobRecord)
                and e.job_id not in before
                and e.argv == argv
                and e.leader is not None
            ]

        wait_for(lambda: bool(running()), 10.0, "the running job's record")
        (record,) = running()
        assert record.state == "running" and record.members == (record.leader,)
        assert record.watchdog is not None and alive(*record.watchdog)
    finally:
        runner.join(30)
    assert done and done[0].returncode == 0 and done[0].report.complete
    assert not Journal.default().read(record.job_id)


def test_run_writes_no_running_record_for_a_leader_gone_before_the_first_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deferred write is spared when the leader has exited before run's
    first wait and the tree is then proven empty: one journal write a job."""
    import tether.job

    writes: list[str] = []
    real_write = Journal.write

    def counting(self: Journal, record: JobRecord) -> bytes:
        writes.append(record.state)
        return real_write(self, record)

    real_record_running = tether.job.Job.record_running

    def after_the_exit(job: tether.job.Job, *, unless_exited: bool = False) -> None:
        # The leader (true) is given time to exit before the first wait.
        select.select([job.leader_fileno], [], [], 10.0)
        real_record_running(job, unless_exited=unless_exited)

    monkeypatch.setattr(Journal, "write", counting)
    monkeypatch.setattr(tether.job.Job, "record_running", after_the_exit)
    done = tether.run(["true"])
    assert done.returncode == 0 and done.report.complete
    assert writes == ["starting"], writes


def test_a_job_keeper_killed_mid_job_is_said_and_its_pid_no_longer_trusted() -> None:
    """A killed job keeper takes the subtree scans with it: the job is still
    ended (its leader is held by a pidfd), and the report says what can no
    longer be ruled out instead of claiming the subtree was read."""
    with tether.start(["sleep", "60"]) as job:
        job_keeper = _job_keeper_of(job)
        leader = proc_stat(job.pid)
        assert leader is not None
        kill_identity(*job_keeper)
        wait_for(lambda: not alive(*job_keeper), 10.0, "the job keeper to be gone")
        report = job.cancel()
    assert [m.pid for m in report.members] == [job.pid]
    assert not alive(job.pid, leader.starttime)
    assert any(f"the job keeper (pid {job_keeper[0]}) exited" in c for c in report.caveats)


def test_a_subtree_root_that_is_not_the_job_keeper_any_more_is_not_read() -> None:
    """The job keeper's pid, reused by a stranger, must not make the
    stranger's children members: the root's identity is checked."""
    from tether._platform.linux import subtree
    from tether.tracking.subreaper import SubreaperTracker

    stranger = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    try:
        wait_for(lambda: bool(procfs.read_stat(stranger.pid)), 10.0, "the stranger")
        st = proc_stat(stranger.pid)
        assert st is not None
        wait_for(lambda: len(subtree(stranger.pid) or {}) == 2, 10.0, "the stranger's child")
        assert subtree(stranger.pid, root_starttime=st.starttime) is not None
        assert subtree(stranger.pid, root_starttime=st.starttime + 1) is None
        table = subtree(stranger.pid)
        assert table is not None
        assert list(SubreaperTracker(stranger.pid, st.starttime + 1).find(table, set())) == []
        assert len(list(SubreaperTracker(stranger.pid, st.starttime).find(table, set()))) == 1
    finally:
        # Its child first, while the shell (our child) still waits for it:
        # the pid cannot have been reused.
        for child in subtree(stranger.pid) or {}:
            if child != stranger.pid:
                os.kill(child, signal.SIGKILL)
        stranger.kill()
        stranger.wait()


#: Run as root by an interpreter the unprivileged user can also run: a job,
#: then a change of CPU affinity, then a drop of privileges, each followed by
#: a job that says what it inherited.
_CHANGED_CONTEXT = r"""
import os, sys, tether
uid, gid, user_journal = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tether.run(["true"])  # the keeper starts, as root, on all CPUs
os.sched_setaffinity(0, {0})
status = tether.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
print([l.split()[1] for l in status.splitlines() if l.startswith("Cpus_allowed_list:")][0])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
os.environ["TETHER_RUNTIME_DIR"] = user_journal  # root's is closed to it now
print(tether.run(["id", "-u"], capture_output=True, text=True).stdout.strip())
print(tether.run(["id", "-u"], capture_output=True, text=True).stdout.strip())
"""


@pytest.mark.skipif(not is_root(), reason="drops root's privileges")
def test_a_caller_that_drops_privileges_gets_jobs_without_them() -> None:
    """A job inherits what the caller has now, as Popen's would: a keeper
    started before the caller dropped root (or moved CPUs) is let go, not
    used to run the next job as root."""
    user = ensure_unprivileged_user()
    python = user_python(user)
    if python is None:
        pytest.skip("no Python the unprivileged user can run")
    # Where the user can reach it (pytest's tmp_path is under a 0700 directory).
    user_journal = Path(tempfile.mkdtemp(prefix="tether-dropped-journal-"))
    try:
        os.chown(user_journal, user.pw_uid, user.pw_gid)
        done = subprocess.run(
            [
                *python,
                "-c",
                _CHANGED_CONTEXT,
                str(user.pw_uid),
                str(user.pw_gid),
                str(user_journal),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["0", str(user.pw_uid), str(user.pw_uid)], done.stdout
        assert list(user_journal.iterdir()) == []
    finally:
        shutil.rmtree(user_journal, ignore_errors=True)
