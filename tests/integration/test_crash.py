"""Nothing outlives its supervisor: the watchdog, the journal, `tether reap`, caller death.

Each job here has a double-forked daemon, a setsid child and a TERM-ignoring
process; every one writes its identity (pid, start time) to ``marks/NAME.pid``.
The tests kill tether's own processes the hard way (SIGKILL) and check, by
identity, that nothing of the job is left and that the journal is clean.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from helpers import (
    alive,
    as_user,
    cgroup_writable,
    ensure_unprivileged_user,
    is_root,
    kill_identity,
    proc_stat,
    tether_cmd,
    user_python,
    wait_for,
    wait_for_file,
    wait_for_marks,
)
from tether._platform.linux.cgroupfs import JobCgroup
from tether.journal import (
    RUNTIME_DIR_VAR,
    JobRecord,
    Journal,
    JournalError,
    JournalProblem,
    boot_id,
)
from tether.policy import Policy
from tether.tracking.cookie import new_cookie

needs_cgroup = pytest.mark.skipif(not cgroup_writable(), reason="needs cgroup v2 write access")
needs_root = pytest.mark.skipif(not is_root(), reason="needs root (uid 0)")

POLICY = "TERM,1s,KILL"
NAMES = ("leader", "daemon", "setsid", "ignorer")
# Liveness bounds for readiness waits, not timing assertions (bench/crash.py measures).
SETTLE = 20.0

TREE = r"""
import os, signal, sys
marks = sys.argv[1]

def mark(name):
    with open("/proc/self/stat", "rb") as f:
        start = int(f.read().rsplit(b")", 1)[1].split()[19])
    tmp = f"{marks}/.{name}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {start}\n")
    os.rename(tmp, f"{marks}/{name}.pid")

def hang():
    while True:
        signal.pause()

if os.fork() == 0:  # a double-forked daemon, in a session of its own
    os.setsid()
    if os.fork() == 0:
        mark("daemon")
        hang()
    os._exit(0)
if os.fork() == 0:
    os.setsid()
    mark("setsid")
    hang()
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    mark("ignorer")
    hang()
mark("leader")
hang()
"""

# A process the tests did start, but no tether job did: it notes every catchable
# signal it gets, so "never signalled" can be asserted, not assumed.
STRANGER = r"""
import os, signal, sys
out = sys.argv[1]
def note(sig, frame):
    with open(out + ".signals", "a") as f:
        f.write(f"{sig}\n")
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCONT):
    signal.signal(s, note)
os.setsid()
with open("/proc/self/stat", "rb") as f:
    start = int(f.read().rsplit(b")", 1)[1].split()[19])
with open(out + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {start}\n")
os.rename(out + ".tmp", out)
while True:
    signal.pause()
"""


def journal() -> Journal:
    return Journal(os.environ[RUNTIME_DIR_VAR])


def records() -> list[JobRecord]:
    return [e for e in journal().entries() if isinstance(e, JobRecord)]


def write_tree(tmp_path: Path) -> tuple[Path, Path]:
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    return script, marks


def start_run(
    tmp_path: Path, *options: str, stderr: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    script, marks = write_tree(tmp_path)
    errf = (stderr or tmp_path / "stderr").open("wb")
    # stderr to a file: the watchdog writes there after tether is gone.
    with errf:
        return subprocess.Popen(
            tether_cmd(
                "run", "--policy", POLICY, *options, "--", sys.executable, str(script), str(marks)
            ),
            stderr=errf,
            env=env,
        )  # fmt: skip


def running_record() -> JobRecord:
    wait_for(
        lambda: any(r.state == "running" and r.watchdog for r in records()),
        SETTLE,
        "the job's record",
    )
    (record,) = records()
    return record


def all_gone(ids: dict[str, tuple[int, int]]) -> bool:
    return not any(alive(*i) for i in ids.values())


@pytest.fixture
def stranger(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    out = tmp_path / "stranger"
    proc = subprocess.Popen([sys.executable, "-c", STRANGER, str(out)])
    pid, start = (int(x) for x in wait_for_file(out).split())
    try:
        yield pid, start, Path(str(out) + ".signals")
    finally:
        kill_identity(pid, start)
        proc.wait()


def assert_untouched(stranger: tuple[int, int, Path]) -> None:
    pid, start, signals = stranger
    assert alive(pid, start), "the stranger was killed"
    st = proc_stat(pid)
    assert st is not None and st.state != "T", "the stranger was stopped"
    assert not signals.exists(), f"the stranger got signals {signals.read_text().split()}"


# -- the watchdog ---------------------------------------------------------------


@pytest.mark.parametrize(
    "trackers", [pytest.param("auto", marks=needs_cgroup), "subreaper,session,cookie,walk"]
)
def test_sigkill_of_tether_run_leaves_nothing(tmp_path: Path, trackers: str) -> None:
    proc = start_run(tmp_path, "--trackers", trackers)
    ids = wait_for_marks(tmp_path / "marks", NAMES)
    record = running_record()
    assert record.watchdog is not None and alive(*record.watchdog)
    assert record.leader == ids["leader"]
    assert record.supervisor[0] == proc.pid

    proc.kill()
    proc.wait()
    wait_for(lambda: all_gone(ids), SETTLE, "the watchdog to terminate the tree")
    wait_for(lambda: not records(), SETTLE, "the journal record to be removed")
    wait_for(lambda: not alive(*record.watchdog), SETTLE, "the watchdog to exit")
    err = (tmp_path / "stderr").read_text()
    assert f"supervisor pid {proc.pid} of job {record.job_id} is gone" in err
    assert "4 member(s) terminated, nothing left" in err
    assert "Traceback" not in err


def test_watchdog_is_not_a_member_and_leaves_with_its_job(tmp_path: Path) -> None:
    proc = start_run(tmp_path, "--json", str(tmp_path / "report.json"))
    ids = wait_for_marks(tmp_path / "marks", NAMES)
    record = running_record()
    assert record.watchdog is not None
    wd = proc_stat(record.watchdog[0])
    assert wd is not None and wd.sid == record.watchdog[0], "the watchdog has its own session"
    # A dedicated supervisor's watchdog idles as a shell (~0.3 MB, not an
    # interpreter's ~4 MB) until it is told "done" or the supervisor dies.
    assert wd.comm == "sh"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=SETTLE)
    report = json.loads((tmp_path / "report.json").read_text())
    assert record.watchdog[0] not in {m["pid"] for m in report["members"]}
    assert report["complete"] is True
    assert all_gone(ids)
    assert not records()
    wait_for(lambda: not alive(*record.watchdog), SETTLE, "the watchdog to exit")
    assert "tether watchdog" not in (tmp_path / "stderr").read_text()


def test_the_watchdogs_shell_gets_no_bash_functions(tmp_path: Path) -> None:
    """Where /bin/sh is bash, an exported function named read (or cd) would
    replace the builtin the watchdog's shell stage relies on: such variables
    are kept from it (the job itself keeps its environment)."""
    env = {**os.environ, "BASH_FUNC_read%%": "() { line=done; }", "SHELLOPTS": "xtrace"}
    proc = start_run(tmp_path, env=env)
    try:
        wait_for_marks(tmp_path / "marks", NAMES)
        record = running_record()
        assert record.watchdog is not None
        environ = Path(f"/proc/{record.watchdog[0]}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith((b"BASH_FUNC_", b"SHELLOPTS="))]
        leader = Path(f"/proc/{record.leader[0]}/environ").read_bytes()  # type: ignore[index]
        assert b"BASH_FUNC_read%%=" in leader
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=SETTLE)


def start_library_caller(tmp_path: Path, program: str) -> tuple[subprocess.Popen[bytes], str]:
    """``python -c program`` (which starts a job and prints its id), stderr to a
    file: (the process, the job's id)."""
    with (tmp_path / "stderr").open("wb") as errf:
        proc = subprocess.Popen(
            [sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=errf
        )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip()


def kill_caller_and_await_recovery(
    proc: subprocess.Popen[bytes], ids: dict[str, tuple[int, int]]
) -> None:
    """SIGKILL the caller; its watchdog must terminate the tree and drop the record."""
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    wait_for(lambda: all_gone(ids), SETTLE, "the watchdog to terminate the tree")
    wait_for(lambda: not records(), SETTLE, "the journal record to be removed")


def test_library_caller_killed_leaves_nothing(tmp_path: Path) -> None:
    """tether.start() in a process that is then SIGKILLed: its watchdog takes over."""
    script, marks = write_tree(tmp_path)
    argv = [sys.executable, str(script), str(marks)]
    program = (
        "import tether\n"
        f"job = tether.start({argv!r}, policy={POLICY!r})\n"
        "print(job.id, flush=True)\n"
        "job.wait()\n"
    )
    proc, job_id = start_library_caller(tmp_path, program)
    ids = wait_for_marks(marks, NAMES)
    record = running_record()
    assert record.job_id == job_id
    kill_caller_and_await_recovery(proc, ids)
    # The watchdog prints its summary after it drops the record.
    wait_for(lambda: "nothing left" in (tmp_path / "stderr").read_text(), SETTLE, "the summary")


def test_library_caller_killed_after_its_record_was_lost_leaves_nothing(tmp_path: Path) -> None:
    """The job keeper's request carries the job's record: a caller that dies
    after its journal record was lost (removed by someone) still has its job
    recovered, from that copy."""
    script, marks = write_tree(tmp_path)
    argv = [sys.executable, str(script), str(marks)]
    program = (
        "import os, signal, sys, time, tether, tether.job\n"
        "real = tether.job.Job._write_record\n"
        "def write(job):\n"
        "    real(job)\n"
        "    if job._record is None or job._record.leader is None:\n"
        "        return  # the record before the start\n"
        "    print(job.id, flush=True)\n"
        f"    while len(os.listdir({str(marks)!r})) < {len(NAMES)}:\n"
        "        time.sleep(0.05)\n"
        "    job._journal.remove(job.id)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "tether.job.Job._write_record = write\n"
        f"tether.start({argv!r}, policy={POLICY!r})\n"
    )
    proc, _job_id = start_library_caller(tmp_path, program)
    ids = wait_for_marks(marks, NAMES)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    assert not records(), "the record was not removed"
    wait_for(lambda: all_gone(ids), SETTLE, "the job keeper to terminate the tree")
    wait_for(lambda: "nothing left" in (tmp_path / "stderr").read_text(), SETTLE, "the summary")


@pytest.mark.parametrize(
    "options",
    [
        # No subreaper tracker: no keeper, so this process is the supervisor.
        "trackers='session,cookie,walk'",
        # A dedicated supervisor may fork too (only tether's own commands say they do not).
        "dedicated_supervisor=True",
    ],
)
def test_a_library_callers_fork_does_not_blind_its_watchdog(tmp_path: Path, options: str) -> None:
    """A library caller may fork while its job runs, and the fork keeps the
    watchdog pipe's write end open after the caller dies: the watchdog must
    see the death through the caller's pidfd, not wait for the pipe's end.
    (Why only `tether run`'s watchdog may idle as a shell that reads the pipe.)"""
    script, marks = write_tree(tmp_path)
    argv = [sys.executable, str(script), str(marks)]
    forked = tmp_path / "forked"
    program = (
        "import os, time, tether\n"
        f"job = tether.start({argv!r}, policy={POLICY!r}, {options})\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(120); os._exit(0)\n"
        f"open({str(forked)!r}, 'w').write(str(pid))\n"
        "print(job.id, flush=True)\n"
        "job.wait()\n"
    )
    proc, job_id = start_library_caller(tmp_path, program)
    child = int(wait_for_file(forked))
    child_identity = (child, proc_stat(child).starttime)  # type: ignore[union-attr]
    try:
        ids = wait_for_marks(marks, NAMES)
        record = running_record()
        assert record.job_id == job_id and record.watchdog is not None
        watchdog = proc_stat(record.watchdog[0])
        assert watchdog is not None and watchdog.comm.startswith("python")
        kill_caller_and_await_recovery(proc, ids)
    finally:
        kill_identity(*child_identity)


# -- tether reap ----------------------------------------------------------------


def test_reap_after_tether_and_its_watchdog_were_killed(tmp_path: Path) -> None:
    proc = start_run(tmp_path, "--restartable")
    ids = wait_for_marks(tmp_path / "marks", NAMES)
    record = running_record()
    assert record.watchdog is not None and record.restartable
    kill_identity(*record.watchdog)
    proc.kill()
    proc.wait()
    wait_for(lambda: not alive(*record.watchdog), SETTLE, "the watchdog to die")
    assert not all_gone(ids)

    listed = subprocess.run(tether_cmd("ps", "--json"), capture_output=True, check=False)
    assert listed.returncode == 0, listed.stderr
    (job,) = json.loads(listed.stdout)["jobs"]
    assert job["job_id"] == record.job_id
    assert job["orphaned"] is True
    assert job["supervisor"]["alive"] is False and job["watchdog"]["alive"] is False

    dry = subprocess.run(tether_cmd("reap", "--dry-run"), capture_output=True, check=False)
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout.decode()
    assert f"job {record.job_id}" in out and "would terminate" in out
    assert "restartable" in out
    for pid, _start in ids.values():
        assert f"pid {pid} " in out
    assert all(alive(*i) for i in ids.values()), "--dry-run signalled something"
    assert proc_stat(ids["ignorer"][0]).state != "T"  # type: ignore[union-attr]
    assert records(), "--dry-run removed the record"

    done = subprocess.run(tether_cmd("reap", "--json"), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (job,) = result["jobs"]
    assert job["action"] == "terminated"
    assert job["restartable"] is True
    assert job["report"]["complete"] is True
    assert {m["pid"] for m in job["report"]["members"]} >= {i[0] for i in ids.values()}
    assert all_gone(ids)
    assert not records()

    again = subprocess.run(tether_cmd("reap"), capture_output=True, check=False)
    assert again.returncode == 0 and b"nothing to reap" in again.stdout


def test_reap_leaves_supervised_jobs_alone(tmp_path: Path) -> None:
    proc = start_run(tmp_path)
    ids = wait_for_marks(tmp_path / "marks", NAMES)
    running_record()
    done = subprocess.run(tether_cmd("reap"), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert b"left alone" in done.stdout
    assert not all_gone(ids)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=SETTLE)
    assert all_gone(ids)


def _forged(
    pid: int, start: int, *, job_id: str | None = None, boot: str | None = None
) -> JobRecord:
    return JobRecord(
        job_id=job_id or new_cookie(),
        cookie=new_cookie(),
        argv=("forged",),
        policy=Policy.parse(POLICY),
        owner_uid=os.geteuid(),
        started_at=time.time(),
        boot_id=boot_id() if boot is None else boot,
        supervisor=(pid, start + 7),
        not_before=start - 100,
        sid=pid,
        leader=(pid, start),
        members=((pid, start),),
        state="running",
    )


def test_record_of_a_reused_pid_signals_nobody(stranger: tuple[int, int, Path]) -> None:
    pid, start, _ = stranger
    # Every identity in the record names the stranger's pid with another start
    # time: the pid was reused after the job's processes died.
    record = _forged(pid, start)
    record = JobRecord(
        **{**record.__dict__, "leader": (pid, start + 7), "members": ((pid, start + 7),)}
    )
    journal().write(record)
    done = subprocess.run(tether_cmd("reap"), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert b"terminated, nothing left" in done.stdout
    assert_untouched(stranger)
    assert not records()


def test_symlinked_record_is_refused(tmp_path: Path, stranger: tuple[int, int, Path]) -> None:
    pid, start, _ = stranger
    # Followed, this record would be valid and its session would be the
    # stranger's: the symlink must be refused, not read.
    record = _forged(pid, start)
    target = tmp_path / "elsewhere.json"
    target.write_bytes(record.to_json())
    link = Path(os.environ[RUNTIME_DIR_VAR]) / f"{record.job_id}.json"
    link.symlink_to(target)
    try:
        for args in (("reap",), ("reap", "--dry-run"), ("ps",)):
            done = subprocess.run(tether_cmd(*args), capture_output=True, check=False)
            err = done.stderr.decode()
            assert done.returncode == 1, (args, err)
            assert f"{link}: is a symlink, not a record: skipped" in err
            assert "Traceback" not in err
        assert_untouched(stranger)
    finally:
        link.unlink()


def test_truncated_record_is_reported_and_others_still_reaped(
    tmp_path: Path, stranger: tuple[int, int, Path]
) -> None:
    proc = start_run(tmp_path)
    ids = wait_for_marks(tmp_path / "marks", NAMES)
    record = running_record()
    assert record.watchdog is not None
    kill_identity(*record.watchdog)
    proc.kill()
    proc.wait()
    pid, start, _ = stranger
    bad = _forged(pid, start)
    path = Path(os.environ[RUNTIME_DIR_VAR]) / f"{bad.job_id}.json"
    raw = bad.to_json()
    path.write_bytes(raw[: len(raw) // 2])
    path.chmod(0o600)
    try:
        wait_for(lambda: not alive(*record.watchdog), SETTLE, "the watchdog to die")
        done = subprocess.run(tether_cmd("reap"), capture_output=True, check=False)
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert f"{path}: corrupt or truncated" in err
        assert "Traceback" not in err
        assert all_gone(ids), "the valid record beside the bad one was not reaped"
        assert_untouched(stranger)
        (left,) = list(journal().entries())
        assert isinstance(left, JournalProblem)
    finally:
        path.unlink()


def test_record_from_a_previous_boot_is_cleared(stranger: tuple[int, int, Path]) -> None:
    pid, start, _ = stranger
    # The identities even match the stranger: after a reboot they mean nothing.
    journal().write(_forged(pid, start, boot="a-previous-boot"))
    dry = subprocess.run(tether_cmd("reap", "--dry-run"), capture_output=True, check=False)
    assert dry.returncode == 0 and b"record would remove" in dry.stdout
    assert records()
    done = subprocess.run(tether_cmd("reap"), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert b"left by a previous boot; record removed" in done.stdout
    assert not records()
    assert_untouched(stranger)


def test_journal_open_to_others_is_refused() -> None:
    directory = os.environ[RUNTIME_DIR_VAR]
    os.chmod(directory, 0o777)
    try:
        for args in (("reap",), ("ps",), ("run", "true")):
            done = subprocess.run(tether_cmd(*args), capture_output=True, check=False)
            err = done.stderr.decode()
            assert done.returncode == (125 if args[0] == "run" else 2), (args, err)
            assert err.startswith(f"tether: journal directory {directory} must be owned by uid")
            assert len(err.strip().splitlines()) == 1
        # A library job too, before anything runs (its job keeper's included).
        with pytest.raises(JournalError):
            tether.start(["sleep", "300"])
    finally:
        os.chmod(directory, 0o700)


# -- the caller -----------------------------------------------------------------


def _caller(tmp_path: Path, *options: str) -> subprocess.Popen[bytes]:
    """A shell that starts tether run and waits for it, like a CI agent."""
    script, marks = write_tree(tmp_path)
    cmd = " ".join(
        tether_cmd("run", "--policy", POLICY, *options, "--json", str(tmp_path / "report.json"))
    )
    with (tmp_path / "stderr").open("wb") as errf:
        return subprocess.Popen(
            ["sh", "-c", f"{cmd} -- {sys.executable} {script} {marks} & "
                         f"echo $! > {tmp_path}/tether.pid; wait"],
            stderr=errf,
        )  # fmt: skip


def test_caller_death_terminates_the_job(tmp_path: Path) -> None:
    caller = _caller(tmp_path)
    ids = wait_for_marks(tmp_path / "marks", NAMES)
    tether_pid = int(wait_for_file(tmp_path / "tether.pid"))
    caller.kill()
    caller.wait()
    wait_for(lambda: all_gone(ids), SETTLE, "the job to be terminated")
    report = json.loads(wait_for_file(tmp_path / "report.json"))
    assert report["reason"] == f"the caller (pid {caller.pid}) exited"
    assert report["complete"] is True
    wait_for(lambda: proc_stat(tether_pid) is None, SETTLE, "tether to exit")
    assert not records()


def test_outlive_caller_keeps_the_job(tmp_path: Path) -> None:
    caller = _caller(tmp_path, "--outlive-caller")
    ids = wait_for_marks(tmp_path / "marks", NAMES)
    tether_pid = int(wait_for_file(tmp_path / "tether.pid"))
    caller.kill()
    caller.wait()
    wait_for(lambda: (proc_stat(tether_pid) or proc_stat(1)).ppid != caller.pid, SETTLE,  # type: ignore[union-attr]
             "tether to be orphaned")  # fmt: skip
    record = running_record()
    assert all(alive(*i) for i in ids.values())
    os.kill(tether_pid, signal.SIGTERM)  # our own child's child, alive: checked just above
    wait_for(lambda: all_gone(ids), SETTLE, "the job to be terminated")
    report = json.loads(wait_for_file(tmp_path / "report.json"))
    assert report["reason"] == "tether received SIGTERM"
    assert record.job_id == report["job_id"]


# -- without privileges ---------------------------------------------------------


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="tether-crash-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_unprivileged_sigkill_of_tether_run_leaves_nothing(open_tmp: Path) -> None:
    user = ensure_unprivileged_user()
    python = user_python(user)
    if python is None:
        pytest.skip("no Python the unprivileged user can run with tether importable")
    tmp_path = open_tmp
    script, marks = write_tree(tmp_path)
    os.chown(marks, user.pw_uid, user.pw_gid)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, user.pw_uid, user.pw_gid)
    with (tmp_path / "stderr").open("wb") as errf:
        proc = subprocess.Popen(
            as_user(user, ["env", f"{RUNTIME_DIR_VAR}={runtime}", *python, "-m", "tether.cli",
                           "run", "--policy", POLICY, "--", python[-1], str(script), str(marks)]),
            stderr=errf,
        )  # fmt: skip
    ids = wait_for_marks(marks, NAMES)
    user_journal = Journal(str(runtime))

    def user_records() -> list[JobRecord]:
        # Read as root: ownership differs from ours, so look at the files directly.
        return _records_in(runtime)

    wait_for(lambda: any(r.watchdog for r in user_records()), SETTLE, "the job's record")
    (record,) = user_records()
    assert record.owner_uid == user.pw_uid
    assert "cgroup" not in record.trackers
    # setpriv execs tether in place: the Popen child is the supervisor itself.
    assert record.supervisor[0] == proc.pid
    proc.kill()
    proc.wait()
    wait_for(lambda: all_gone(ids), SETTLE, "the watchdog to terminate the tree")
    wait_for(lambda: not user_records(), SETTLE, "the journal record to be removed")
    # The watchdog prints its summary after it drops the record.
    wait_for(lambda: "nothing left" in (tmp_path / "stderr").read_text(), SETTLE, "the summary")
    user_journal.close()


@needs_root
def test_unprivileged_reap(open_tmp: Path) -> None:
    """A user's own `tether reap` terminates the user's orphaned job (no cgroup)."""
    user = ensure_unprivileged_user()
    python = user_python(user)
    if python is None:
        pytest.skip("no Python the unprivileged user can run with tether importable")
    script, marks = write_tree(open_tmp)
    os.chown(marks, user.pw_uid, user.pw_gid)
    runtime = open_tmp / "runtime"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, user.pw_uid, user.pw_gid)
    tether_as_user = ["env", f"{RUNTIME_DIR_VAR}={runtime}", *python, "-m", "tether.cli"]
    proc = subprocess.Popen(
        as_user(user, [*tether_as_user, "run", "-q", "--policy", POLICY, "--",
                       python[-1], str(script), str(marks)]),
    )  # fmt: skip
    ids = wait_for_marks(marks, NAMES)

    def user_records() -> list[JobRecord]:
        return _records_in(runtime)

    wait_for(lambda: any(r.watchdog for r in user_records()), SETTLE, "the job's record")
    (record,) = user_records()
    assert record.watchdog is not None
    kill_identity(*record.watchdog)
    proc.kill()
    proc.wait()
    wait_for(lambda: not alive(*record.watchdog), SETTLE, "the watchdog to die")
    assert not all_gone(ids)
    done = subprocess.run(
        as_user(user, [*tether_as_user, "reap", "--json"]), capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    (job,) = json.loads(done.stdout)["jobs"]
    assert job["action"] == "terminated"
    trackers = {t["name"]: t for t in job["report"]["trackers"]}
    assert trackers["cgroup"]["used"] is False
    assert any("without a cgroup" in c for c in job["report"]["caveats"])
    assert all_gone(ids)
    assert not user_records()


def test_tether_run_reaps_adopted_orphans_while_the_job_runs(tmp_path: Path) -> None:
    """As a subreaper (or a container's PID 1), tether reaps like an init would."""
    script = (
        "for i in 1 2 3 4 5; do (sleep 0.01 &); done; "
        f"touch {tmp_path}/ready; while [ ! -e {tmp_path}/go ]; do sleep 0.05; done"
    )
    proc = subprocess.Popen(tether_cmd("run", "-q", "--", "sh", "-c", script))
    wait_for((tmp_path / "ready").exists, SETTLE, "the orphans to be started")

    def adopted_orphans() -> list[str]:
        """tether's children other than the leader (sh) and its watchdog (python)."""
        out = []
        for entry in os.listdir("/proc"):
            st = proc_stat(int(entry)) if entry.isdigit() else None
            if st is not None and st.ppid == proc.pid and st.comm == "sleep":
                out.append(f"{st.pid} {st.state}")
        return out

    try:
        # Each orphan is adopted by tether, exits after 10 ms, and must then
        # be reaped: a zombie stays tether's child, so this only holds once
        # every one of them was both adopted-and-exited and collected.
        wait_for(lambda: not adopted_orphans(), SETTLE, "adopted orphans to be reaped")
        assert proc.poll() is None, "the job should still be running"
    finally:
        (tmp_path / "go").touch()
        assert proc.wait(timeout=SETTLE) == 0


@pytest.mark.parametrize(
    "trackers",
    [
        "['session', 'cookie', 'walk']",
        # In the job's cgroup, the reaper must neither freeze it (itself with
        # it, for ever) nor cgroup.kill it (its own shell with it).
        pytest.param("'auto'", marks=pytest.mark.skipif(not is_root(), reason="cgroup as root")),
    ],
)
def test_reap_run_inside_an_orphaned_job_spares_its_own_ancestors(
    tmp_path: Path, trackers: str
) -> None:
    """`tether reap` from within a job whose supervisor died (no watchdog) finds
    that job orphaned: its leader is the reaper's ancestor, never a member."""
    out = tmp_path / "out"
    reap = " ".join(tether_cmd("reap"))
    script = f"sleep 1; {reap} > {out}.reap 2>&1; echo survived > {out}; exec sleep 30"
    program = (
        "import tether, time\n"
        f"job = tether.start(['sh', '-c', {script!r}], watchdog=False, trackers={trackers})\n"
        "print(job.id, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc, _job_id = start_library_caller(tmp_path, program)
    wait_for(lambda: any(r.state == "running" for r in records()), SETTLE, "the job's record")
    (record,) = records()
    assert record.leader is not None
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    try:
        wait_for(out.exists, SETTLE, "the leader to outlive the reap it ran")
    finally:
        kill_identity(record.leader.pid, record.leader.starttime)
        if record.cgroup is not None:  # the reaper could not remove it: its shell was in it
            cg = JobCgroup(record.cgroup)
            cg.thaw()
            cg.wait_empty(SETTLE)
            cg.remove()


def _records_in(runtime: Path) -> list[JobRecord]:
    """The records in a journal directory read as files (not through
    Journal, which checks the owner): a job's newer slot, if a rewrite
    left two for a moment."""
    best: dict[str, JobRecord] = {}
    for path in runtime.glob("*.json"):
        try:
            record = JobRecord.from_json(path.read_bytes())
        except FileNotFoundError:
            continue  # the older slot, unlinked as it was listed
        if record.job_id not in best or record.revision > best[record.job_id].revision:
            best[record.job_id] = record
    return list(best.values())
