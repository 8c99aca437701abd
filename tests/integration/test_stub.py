"""A library job started by the spare job keeper's stub: a child forked ahead
of time into a cgroup the spare made, that execs the job on request.

Real keepers, real cgroups, real processes. Each test turns stubs on and shuts
its keeper down after, so no spare (and no stub cgroup) outlives the test.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
import tether.job
import tether.keeper
from helpers import (
    as_user,
    cgroup_writable,
    ensure_unprivileged_user,
    is_root,
    user_python,
    wait_for,
)
from tether._platform.linux import spawn

pytestmark = [
    pytest.mark.skipif(
        not (is_root() and cgroup_writable()), reason="needs cgroup v2 write access (root)"
    ),
    pytest.mark.skipif(not spawn.usable(), reason="clone3 is not usable here"),
]


@pytest.fixture
def stubs(monkeypatch: pytest.MonkeyPatch, suite_cgroup: str | None) -> Iterator[str]:
    """Stubs on; the suite cgroup (where the stubs' cgroups are made) yielded."""
    assert suite_cgroup is not None
    tether.keeper._client.shutdown()  # a keeper from an earlier test has no stub parent
    monkeypatch.setattr(tether.keeper, "USE_STUBS", True)
    try:
        yield suite_cgroup
    finally:
        assert tether.keeper._client.shutdown(), "the keeper did not exit"


def _stub_cgroups(root: str) -> list[str]:
    return sorted(os.path.join(root, d) for d in os.listdir(root) if d.startswith("tether-stub-"))


def _ready_stub(root: str) -> tuple[str, int]:
    """(cgroup, pid) of the spare's stub, once it is ready."""

    def ready() -> bool:
        return any(_procs(cg) for cg in _stub_cgroups(root))

    wait_for(ready, what="a spare job keeper's stub")
    cg = next(cg for cg in _stub_cgroups(root) if _procs(cg))
    (pid,) = _procs(cg)
    return cg, pid


def _procs(cgroup: str) -> list[int]:
    try:
        return [int(p) for p in Path(cgroup, "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _cgroup_line(text: bytes) -> str:
    return next(ln[3:] for ln in text.decode().splitlines() if ln.startswith("0::"))


def test_a_stub_job_is_in_its_cgroup_from_its_first_instruction(stubs: str) -> None:
    tether.run(["true"])  # teaches the keeper where its jobs' cgroups go
    stub_cgroup, stub_pid = _ready_stub(stubs)
    with tether.start(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE) as job:
        out, _ = job.communicate(timeout=30)
        # The stub became the leader: same pid, in the cgroup made ahead,
        # which the job adopted (its only process: no other was ever in it).
        assert job.pid == stub_pid
        assert job.cgroup_path == stub_cgroup
        assert stub_cgroup.endswith(_cgroup_line(out))
    assert job.returncode == 0 and job.report.complete
    assert not os.path.exists(stub_cgroup)  # removed with the job


def test_a_stub_holds_only_its_socket(stubs: str) -> None:
    # The stub is forked from a job keeper that was forked from the keeper:
    # a pipe of an earlier job kept open there would never see EOF.
    with tether.start(["true"], stdout=subprocess.PIPE) as job:
        assert job.wait(timeout=30) == 0
        _, stub_pid = _ready_stub(stubs)

        def fds() -> list[int]:
            return sorted(int(fd) for fd in os.listdir(f"/proc/{stub_pid}/fd"))

        # It closes what it inherited first thing after the clone.
        wait_for(lambda: fds() == [0, 1, 2, 3], what=f"the stub to close its fds: {fds()}")
        assert os.readlink(f"/proc/{stub_pid}/fd/3").startswith("socket:")
        for fd in (0, 1, 2):  # the keeper's /dev/null, not the job's pipe
            assert os.readlink(f"/proc/{stub_pid}/fd/{fd}") == "/dev/null"
        assert job.stdout is not None
        readable, _, _ = select.select([job.stdout], [], [], 30)
        assert readable and job.stdout.read() == b""


@pytest.mark.parametrize("who", ["spare", "keeper"])
def test_a_stub_dies_with_its_job_keeper(stubs: str, who: str) -> None:
    tether.run(["true"])
    stub_cgroup, stub_pid = _ready_stub(stubs)
    pidfd = os.pidfd_open(stub_pid)
    try:
        spare = int(Path(f"/proc/{stub_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        victim = spare if who == "spare" else tether.keeper._client.pid
        assert victim > 1
        os.kill(victim, signal.SIGKILL)
        # PR_SET_PDEATHSIG (or EOF on its socket): the stub never outlives it.
        readable, _, _ = select.select([pidfd], [], [], 30)
        assert readable, "the stub outlived its job keeper"
    finally:
        os.close(pidfd)
    if who == "spare":
        # The keeper reaps the spare and removes the stub's cgroup.
        wait_for(lambda: not os.path.exists(stub_cgroup), what="the stub cgroup to go")
    else:
        os.waitpid(tether.keeper._client.pid, 0)
        assert tether.keeper._client._control is not None
        tether.keeper._client._control.close()
        tether.keeper._client._control = None
        # The spare (now the init's or a subreaper's) read EOF and cleaned up.
        wait_for(lambda: not os.path.exists(stub_cgroup), what="the stub cgroup to go")
    assert tether.run(["true"]).returncode == 0  # a new keeper takes over


def test_exec_errors_through_a_stub_are_popens(stubs: str, tmp_path: Path) -> None:
    tether.run(["true"])
    # Found and executable, so only the exec itself (in the stub) fails.
    gone, plain, not_exec = tmp_path / "gone", tmp_path / "plain", tmp_path / "not-exec"
    gone.write_text(f"#!{tmp_path}/no-interpreter\n")
    not_exec.write_text("")
    plain.write_text(f"#!{not_exec}\n")
    for script in (gone, plain):
        script.chmod(stat.S_IRWXU)
    for argv, error in (
        ([str(gone)], tether.CommandNotFoundError),
        ([str(plain)], tether.CommandNotExecutableError),
    ):
        stub_cgroup, _ = _ready_stub(stubs)
        with pytest.raises(error):
            tether.run(argv)
        assert not os.path.exists(stub_cgroup)  # the failed start removed it
    tether.run(["true"])
    _ready_stub(stubs)
    with pytest.raises(FileNotFoundError):
        tether.run(["true"], cwd=tmp_path / "missing")


_SHOW = (
    'umask; pwd; echo "$X"; echo "$TETHER_JOB_ID"; trap; ls /proc/self/fd | sort -n | tr "\\n" " "'
)


def test_a_stub_job_gets_what_popen_gives(stubs: str, tmp_path: Path) -> None:
    tether.run(["true"])
    env = {"PATH": os.environ["PATH"], "X": "x y"}
    old = os.umask(0o027)
    try:
        expected = subprocess.run(
            ["sh", "-c", _SHOW], env=env, cwd=tmp_path, capture_output=True, check=True
        ).stdout.splitlines()
        stub_cgroup, stub_pid = _ready_stub(stubs)
        with tether.start(
            ["sh", "-c", _SHOW], env=env, cwd=tmp_path, stdout=subprocess.PIPE
        ) as job:
            out, _ = job.communicate(timeout=30)
            assert job.pid == stub_pid and job.cgroup_path == stub_cgroup
    finally:
        os.umask(old)
    lines = out.splitlines()
    assert lines[0] == expected[0] == b"0027"
    assert lines[1] == expected[1] == str(tmp_path).encode()
    assert lines[2] == b"x y"
    assert lines[3] == job.id.encode()  # the cookie
    assert lines[4:] == expected[4:]  # no trap set; only 0, 1, 2 (and ls's own)


def test_a_request_the_stub_cannot_honour_takes_the_shim(
    stubs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tether.run(["true"])
    stub_cgroup, stub_pid = _ready_stub(stubs)
    stub = os.pidfd_open(stub_pid)
    # No clone3 asked for: the /bin/sh shim enters the caller's cgroup.
    monkeypatch.setattr(tether.job, "_CLONE_INTO_CGROUP", False)
    with tether.start(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE) as job:
        out, _ = job.communicate(timeout=30)
        assert job.pid != stub_pid and job.cgroup_path != stub_cgroup
        assert job.cgroup_path is not None and job.cgroup_path.endswith(_cgroup_line(out))
    assert job.returncode == 0
    # The unused stub is let go and its cgroup removed by its job keeper.
    wait_for(lambda: not os.path.exists(stub_cgroup), what="the unused stub's cgroup to go")
    try:
        assert select.select([stub], [], [], 0)[0], "the unused stub is still alive"
    finally:
        os.close(stub)


_DELEGATED = r"""
import json, os, subprocess, time
import tether, tether.keeper
tether.keeper.USE_STUBS = True
tether.run(["true"])
out = {}
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    tether.run(["true"])
    time.sleep(0.1)  # the spare prepares its stub while we are idle
    with tether.start(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE) as job:
        text, _ = job.communicate(timeout=30)
    if os.path.basename(job.cgroup_path).startswith("tether-stub-"):
        break
out = [job.cgroup_path, text.decode(), job.returncode, job.report.complete, os.geteuid()]
out.append(tether.keeper._client.shutdown())
print(json.dumps(out))
"""


def test_unprivileged_user_in_a_delegated_cgroup(suite_cgroup: str | None) -> None:
    # The spare makes the stub's cgroup and clones into it as the user: a
    # delegated subtree allows both, and the job lands in it from birth.
    assert suite_cgroup is not None
    user = ensure_unprivileged_user()
    py = user_python(user)
    if py is None:
        pytest.skip(f"no Python interpreter that uid {user.pw_uid} can run with tether importable")
    deleg = os.path.join(suite_cgroup, f"delegated-{uuid.uuid4().hex[:12]}")
    os.mkdir(deleg)
    try:
        for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
            os.chown(os.path.join(deleg, name), user.pw_uid, user.pw_gid)
        enter = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
        argv = ["sh", "-c", enter, "sh", deleg, *as_user(user, [*py, "-c", _DELEGATED])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        path, text, rc, complete, uid, shut = json.loads(done.stdout)
    finally:
        events = os.path.join(deleg, "cgroup.events")
        wait_for(lambda: b"populated 0" in Path(events).read_bytes(), what="the keeper to exit")
        subs = [d for d in os.listdir(deleg) if os.path.isdir(os.path.join(deleg, d))]
        for sub in subs:
            os.rmdir(os.path.join(deleg, sub))
        os.rmdir(deleg)
    assert uid == user.pw_uid and shut
    assert os.path.dirname(path) == deleg and os.path.basename(path).startswith("tether-stub-")
    assert path.endswith(_cgroup_line(text.encode())) and rc == 0 and complete
    assert subs == []  # nothing left behind: no job cgroup, no stub cgroup


def test_a_stub_that_cannot_set_up_says_so(suite_cgroup: str | None) -> None:
    # A failure before the exec (here a limit the kernel refuses) comes back
    # on the error pipe as an exec error would, never as a silent exit.
    import resource

    assert suite_cgroup is not None
    cgroup = os.path.join(suite_cgroup, f"tether-stub-test-{uuid.uuid4().hex[:12]}")
    os.mkdir(cgroup)
    cwd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        stub = spawn.prefork(cgroup)
        huge = (resource.RLIMIT_NOFILE, (1 << 40, 1 << 40))
        started = stub.start(["true"], os.environ, stdio=(0, 1, 2), cwd_fd=cwd, rlimits=[huge])
        with pytest.raises(OSError):
            started.wait_exec()  # reaps the stub
        os.close(started.pidfd)
    finally:
        os.close(cwd)
        os.rmdir(cgroup)


_CALLER = r"""
import os, sys, time
import tether, tether.keeper
tether.keeper.USE_STUBS = True
tether.run(["true"])
root = sys.argv[1]
while True:  # until the spare's stub is ready: then wait to be killed
    for d in os.listdir(root):
        if d.startswith("tether-stub-"):
            with open(os.path.join(root, d, "cgroup.procs")) as f:
                pids = f.read().split()
            if pids:
                print(os.path.join(root, d), pids[0], flush=True)
                time.sleep(3600)
    time.sleep(0.01)
"""


def test_a_stub_dies_with_the_caller(suite_cgroup: str | None) -> None:
    assert suite_cgroup is not None
    with subprocess.Popen(
        [sys.executable, "-c", _CALLER, suite_cgroup], stdout=subprocess.PIPE, text=True
    ) as caller:
        try:
            assert caller.stdout is not None
            stub_cgroup, pid = caller.stdout.readline().split()
            stub = os.pidfd_open(int(pid))
        finally:
            caller.kill()
    try:
        # The keeper reads EOF, lets its spare go, which lets its stub go.
        assert select.select([stub], [], [], 30)[0], "the stub outlived its caller"
    finally:
        os.close(stub)
    wait_for(lambda: not os.path.exists(stub_cgroup), what="the stub cgroup to go")
