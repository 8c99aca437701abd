"""The leader is born in its job cgroup (clone3 CLONE_INTO_CGROUP), and the
/bin/sh shim that enters it by writing cgroup.procs still works as the fallback.

spawn.start has two ways to clone: the native extension (_vspawn: vfork-like,
C until the exec) and ctypes (a fork running Python until the exec). The
set-up tests run on both (the ``way`` fixture); the native row is skipped
where the extension was not built.

Real processes, real cgroups: each job reads /proc/self/cgroup as its first act.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
import tether.job
from helpers import (
    as_user,
    cgroup_writable,
    ensure_unprivileged_user,
    is_root,
    user_python,
    wait_for,
)
from tether._platform.linux import spawn

needs_cgroup = pytest.mark.skipif(
    not (is_root() and cgroup_writable()), reason="needs cgroup v2 write access (root)"
)
needs_clone3 = pytest.mark.skipif(not spawn.usable(), reason="clone3 is not usable here")
needs_native = pytest.mark.skipif(not spawn.native(), reason="the _vspawn extension is not built")
needs_root = pytest.mark.skipif(not is_root(), reason="needs root")

needs_ctypes = pytest.mark.skipif(not spawn._ctypes_usable(), reason="ctypes clone3 is unusable")
WAYS = [pytest.param("native", marks=needs_native), pytest.param("ctypes", marks=needs_ctypes)]


@pytest.fixture(params=WAYS)
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way spawn.start can clone, forced."""
    if request.param == "ctypes":
        monkeypatch.setattr(spawn, "_use_native", False)
    return str(request.param)


def _cgroup_of(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode()
    return next(line[3:] for line in text.splitlines() if line.startswith("0::"))


@pytest.fixture
def cgroup(suite_cgroup: str | None) -> Iterator[str]:
    """A cgroup of this test's own, under the suite's; removed after."""
    assert suite_cgroup is not None
    path = os.path.join(suite_cgroup, f"spawn-test-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


def _run(argv: list[str], cgroup: str | None, **kwargs: object) -> bytes:
    """spawn.spawn with stdout to a pipe; the output once the child exits."""
    r, w = os.pipe()
    try:
        pid, pidfd = spawn.spawn(argv, os.environ, stdio=(-1, w, -1), cgroup=cgroup, **kwargs)  # type: ignore[arg-type]
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    try:
        os.waitpid(pid, 0)
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        return out
    finally:
        os.close(r)
        os.close(pidfd)


def _status(out: bytes, field: bytes) -> bytes:
    """A field of a /proc/PID/status text."""
    return next(x for x in out.splitlines() if x.startswith(field + b":")).split(b":", 1)[1].strip()


@needs_cgroup
def test_clone3_child_is_in_the_cgroup_from_birth(way: str, cgroup: str) -> None:
    # Nothing here writes cgroup.procs: only CLONE_INTO_CGROUP can put it there.
    out = _run(["cat", "/proc/self/cgroup"], cgroup)
    assert cgroup.endswith(_cgroup_of(out))


def test_clone3_child_gets_only_its_stdio_and_default_sigpipe(way: str, tmp_path: Path) -> None:
    # An inheritable fd of ours must not reach the job (close_fds), and the
    # job starts with SIGPIPE at its default, not Python's SIG_IGN.
    leaked = os.open(tmp_path, os.O_RDONLY)
    os.set_inheritable(leaked, True)
    try:
        fds = _run(["ls", "/proc/self/fd"], None).split()
        status = _run(["cat", "/proc/self/status"], None)
    finally:
        os.close(leaked)
    assert sorted(int(f) for f in fds)[:3] == [0, 1, 2]
    assert len(fds) == 4  # 0, 1, 2 and ls's own directory fd
    sigign = int(_status(status, b"SigIgn"), 16)
    assert not sigign & (1 << (signal.SIGPIPE - 1))
    assert not sigign & (1 << (signal.SIGXFSZ - 1))
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # ours is left as it was


def test_the_callers_signal_mask_is_the_jobs(way: str) -> None:
    # Every signal is blocked around the clone; the child restores the mask
    # the caller had (here SIGUSR2 blocked), not all-blocked, not empty.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        status = _run(["cat", "/proc/self/status"], None)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == old | {signal.SIGUSR2}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    blocked = int(_status(status, b"SigBlk"), 16)
    expected = sum(1 << (s - 1) for s in old | {signal.SIGUSR2})
    assert blocked == expected


def test_clone3_exec_errors_are_popens(way: str, tmp_path: Path) -> None:
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(FileNotFoundError):
        _run(["tether-no-such-command-here"], None)
    with pytest.raises(PermissionError):
        _run([str(plain)], None)
    with pytest.raises(FileNotFoundError) as err:
        _run(["true"], None, cwd=str(tmp_path / "missing"))
    assert err.value.filename == str(tmp_path / "missing")


def test_eacces_on_one_path_entry_beats_enoent_on_the_rest(way: str, tmp_path: Path) -> None:
    # Popen's rule over PATH: the first error that is not "not here" wins,
    # and names the candidate it came from.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tether-cmd").write_text("#!/bin/sh\n")
    path = os.pathsep.join(str(tmp_path / d) for d in ("missing", "a", "b", "c"))
    env = {**os.environ, "PATH": path}
    with pytest.raises(PermissionError) as err:
        spawn.spawn(["tether-cmd"], env, stdio=(-1, -1, -1), cgroup=None)
    assert err.value.filename == str(tmp_path / "b" / "tether-cmd")
    (tmp_path / "c" / "tether-cmd").mkdir(parents=True)  # EACCES too, later: the first wins
    with pytest.raises(PermissionError) as err:
        spawn.spawn(["tether-cmd"], env, stdio=(-1, -1, -1), cgroup=None)
    assert err.value.filename == str(tmp_path / "b" / "tether-cmd")


def test_set_up_failure_names_the_command(way: str) -> None:
    # A failure after the cwd (here setrlimit: a soft limit above the hard
    # one) is reported with the command's name and the call's errno.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard fd limit to exceed")
    with pytest.raises(OSError) as err:
        _run(["true"], None, nofile=hard + 1)
    assert (err.value.errno, err.value.filename) == (errno.EINVAL, "true")


def test_session_umask_nofile_groups_and_cwd(way: str, tmp_path: Path) -> None:
    script = 'read -r a b c d e f rest </proc/self/stat; echo "$a $f"; umask; ulimit -n; pwd'
    out = _run(["sh", "-c", script], None, umask=0o027, nofile=77, cwd=str(tmp_path))
    ident, umask, nofile, cwd = out.decode().splitlines()
    pid, sid = ident.split()
    assert pid == sid  # setsid: a session leader
    assert (umask, nofile, cwd) == ("0027", "77", str(tmp_path))
    out = _run(["sh", "-c", script], None, start_new_session=False)
    ident, umask, nofile, cwd = out.decode().splitlines()
    assert int(ident.split()[1]) == os.getsid(0)  # ours
    mask = os.umask(0)
    os.umask(mask)
    assert int(umask, 8) == mask and cwd == os.getcwd()


@needs_root
def test_extra_groups(way: str) -> None:
    out = _run(["cat", "/proc/self/status"], None, extra_groups=[4242, 4343])
    assert _status(out, b"Groups").split() == [b"4242", b"4343"]
    out = _run(["cat", "/proc/self/status"], None, extra_groups=[])
    assert _status(out, b"Groups") == b""


#: Runs with fds 1 and 2 on two pipes: the job's stdout is our 2 and its
#: stderr our 1 (each source sits on the other's target slot).
_SWAP = r"""
import os, sys
from tether._platform.linux import spawn
spawn._use_native = sys.argv[1] == "native"
a_r, a_w = os.pipe()
b_r, b_w = os.pipe()
os.dup2(a_w, 1)
os.dup2(b_w, 2)
os.close(a_w)
os.close(b_w)
pid, pidfd = spawn.spawn(["sh", "-c", "echo out; echo err >&2"], os.environ,
                         stdio=(-1, 2, 1), cgroup=None)
os.waitpid(pid, 0)
os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
os.dup2(1, 2)
result = os.read(a_r, 100).decode(), os.read(b_r, 100).decode()
with open(sys.argv[2], "w") as f:
    f.write(repr(result))
"""


def test_stdio_sources_on_each_others_slots(way: str, tmp_path: Path) -> None:
    result = tmp_path / "result"
    subprocess.run([sys.executable, "-c", _SWAP, way, str(result)], check=True, timeout=60)
    assert result.read_text() == repr(("err\n", "out\n"))  # our 1 got its stderr


#: A signal reaches the child between clone3 and exec: it must act as on any
#: new process (SIGUSR1 kills), not run the caller's handler in the child.
#: ctypes: sent from inside the child's set-up, where os.setsid is called;
#: native: sent by the child to itself right after its handler reset (were
#: the caller's C handler left, it would run in the child on the caller's
#: memory and the caller's Python handler would run later, in the caller).
_WINDOW = r"""
import os, signal, sys
from tether._platform.linux import spawn
def handler(signum, frame):
    raise RuntimeError("the caller's handler ran")
signal.signal(signal.SIGUSR1, handler)
if sys.argv[1] == "native":
    spawn._raise_in_child = signal.SIGUSR1
else:
    spawn._use_native = False
    real_setsid = os.setsid
    def setsid():
        os.kill(os.getpid(), signal.SIGUSR1)
        return real_setsid()
    os.setsid = setsid
pid, pidfd = spawn.spawn(["true"], os.environ, stdio=(-1, -1, -1), cgroup=None)
os.close(pidfd)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_signal_before_exec_gets_its_default_action(way: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _WINDOW, way], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == -signal.SIGUSR1, out.stderr


def test_threaded_process_takes_the_native_way_only(way: str) -> None:
    # A raw fork copies locks other threads hold: the ctypes way is refused
    # with threads around. The native child runs no Python, copies nothing:
    # it is used, as posix_spawn would be.
    release = threading.Event()
    t = threading.Thread(target=release.wait)
    t.start()
    try:
        if way == "ctypes":
            assert not spawn.usable()
            with pytest.raises(spawn.Unavailable):
                spawn.spawn(["true"], os.environ, stdio=(-1, -1, -1), cgroup=None)
        else:
            assert spawn.usable()
            assert _run(["echo", "threaded"], None) == b"threaded\n"
    finally:
        release.set()
        t.join()


#: Threads that allocate and take the GIL and locks the whole time, while
#: the main thread spawns: the native child must never hang or crash on
#: memory they share with it.
@needs_native
@needs_cgroup
def test_native_spawns_beside_busy_threads(cgroup: str) -> None:
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            _ = [bytes(64) for _ in range(100)]

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(50):
            assert _run(["echo", str(i)], cgroup if i % 2 else None) == f"{i}\n".encode()
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_no_zombie_and_no_fd_left(way: str, tmp_path: Path) -> None:
    # Good and failing execs alike: each child reaped (by us or by
    # wait_exec), and our fd table as it was.
    before = sorted(os.listdir("/proc/self/fd"))
    for i in range(40):
        child = spawn.start(
            ["true" if i % 2 else str(tmp_path / "gone")], os.environ, stdio=(-1, -1, -1),
            cgroup=None,
        )  # fmt: skip
        try:
            child.wait_exec()
        except FileNotFoundError:
            assert i % 2 == 0
        else:
            assert i % 2 == 1
            os.waitpid(child.pid, 0)
        finally:
            os.close(child.pidfd)
        with pytest.raises(ChildProcessError):
            os.waitpid(child.pid, os.WNOHANG)
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_invalid_arguments_are_refused_before_the_clone() -> None:
    # Checked by start() before it chooses a way: one run covers both.
    with pytest.raises(ValueError, match="null"):
        spawn.spawn(["echo", "a\0b"], os.environ, stdio=(-1, -1, -1), cgroup=None)
    with pytest.raises(ValueError, match="environment variable"):
        spawn.spawn(["true"], {"A=B": "c"}, stdio=(-1, -1, -1), cgroup=None)


@needs_native
def test_a_stale_native_module_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # The build stamps the module with its source's CRC; a checkout whose
    # source has changed since, or another ABI, gets the ctypes way.
    module = spawn._native_module()
    source = Path(spawn.__file__).with_name("_vspawn.c")
    if source.exists():
        assert zlib.crc32(source.read_bytes()) == module.SOURCE_CRC
    try:
        for name, value in (("SOURCE_CRC", module.SOURCE_CRC ^ 1), ("ABI", module.ABI + 1)):
            spawn._native_module.cache_clear()
            with monkeypatch.context() as m:
                m.setattr(module, name, value)
                if name == "SOURCE_CRC" and not source.exists():
                    continue  # an installed wheel: no source to compare
                assert not spawn.native()
    finally:
        spawn._native_module.cache_clear()
    assert spawn.native()


@needs_cgroup
# No in-process clone3 row: pytest is past _CLONE_MAX_RESIDENT, so that row
# would take the shim too; the spy tests below run it in a small interpreter.
@pytest.mark.parametrize("how", ["keeper", "keeper-shim", "in-process-shim"])
def test_job_leader_starts_in_its_cgroup(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how.endswith("shim"):
        # The fallback: /bin/sh writes cgroup.procs before exec'ing the command.
        monkeypatch.setattr(tether.job, "_CLONE_INTO_CGROUP", False)
    options = {"watchdog": False} if how.startswith("in-process") else {}
    with tether.start(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, **options) as job:  # type: ignore[arg-type]
        out, _ = job.communicate(timeout=30)
        assert job.cgroup_path is not None and job.cgroup_path.endswith(_cgroup_of(out))
        assert job.returncode == 0


#: Records in ``calls`` every argv that reaches clone3 (this process's own).
_SPY_PRELUDE = """
import json, os, subprocess, tether, tether.job
from tether._platform.linux import spawn
calls, real = [], spawn.spawn
def spy(argv, *args, **kwargs):
    calls.append(list(argv))
    return real(argv, *args, **kwargs)
spawn.spawn = spy
"""

#: In a fresh (single-threaded) interpreter, as `tether run` is: which argv
#: reached clone3, and where the leader ran.
_SPY = (
    _SPY_PRELUDE
    + r"""
done = tether.run(["cat", "/proc/self/cgroup"], watchdog=False, capture_output=True)
print(json.dumps([calls, done.stdout.decode(), done.report.complete]))
"""
)


def _spied(setup: str, ballast_mb: int) -> tuple[list[list[str]], str, bool]:
    """_SPY run in a fresh interpreter after ``setup``, holding ``ballast_mb`` MB."""
    ballast = (
        f"ballast = bytearray({ballast_mb} << 20)\nballast[::4096] = b'x' * len(ballast[::4096])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", _SPY_PRELUDE + setup + ballast + _SPY[len(_SPY_PRELUDE) :]],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    calls, cgroup, complete = json.loads(out.stdout)
    return calls, cgroup, complete


@needs_cgroup
@needs_ctypes
@pytest.mark.parametrize("ballast_mb", [0, 64])
def test_in_process_job_uses_clone3_unless_the_caller_is_large(ballast_mb: int) -> None:
    # A fork's cost grows with the caller (page tables), the shim's does not:
    # a large caller keeps Popen's vfork and the shim, a small one clones.
    # (The ctypes way: the native one copies no page tables.)
    calls, cgroup, complete = _spied("spawn._use_native = False\n", ballast_mb)
    # The command itself (no /bin/sh shim) reached clone3, or nothing did.
    assert calls == ([] if ballast_mb else [["cat", "/proc/self/cgroup"]])
    assert _cgroup_of(cgroup).rsplit("/", 1)[-1].startswith("tether-") and complete


@needs_cgroup
@needs_native
def test_in_process_job_uses_the_native_clone_however_large_the_caller() -> None:
    # The native clone is a vfork: a large caller costs it no page tables.
    calls, cgroup, complete = _spied("", 64)
    assert calls == [["cat", "/proc/self/cgroup"]]
    assert _cgroup_of(cgroup).rsplit("/", 1)[-1].startswith("tether-") and complete


@needs_cgroup
@needs_clone3
def test_exec_failure_after_the_start_is_undone(tmp_path: Path) -> None:
    # Executable, so the caller's checks pass; the kernel's execve then fails
    # (ENOENT for the interpreter) after the leader was created and recorded:
    # raised as Popen would, with no record, cgroup or keeper left (conftest).
    script = tmp_path / "bad-interpreter"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    with pytest.raises(tether.CommandNotFoundError):
        tether.run([str(script)])  # the job keeper's clone3 child
    assert tether.run(["true"]).returncode == 0  # the keeper still serves


@needs_cgroup
def test_command_errors_through_the_keeper(tmp_path: Path) -> None:
    with pytest.raises(tether.CommandNotFoundError):
        tether.run([str(tmp_path / "gone")])
    with pytest.raises(FileNotFoundError):
        tether.run(["true"], cwd=tmp_path / "missing")
    assert (
        tether.run(["pwd"], cwd=tmp_path, capture_output=True).stdout.strip()
        == str(tmp_path).encode()
    )


def test_a_spare_job_keeper_holds_no_pipe_of_an_earlier_job() -> None:
    # The keeper forks the next job's keeper right after handing a request on:
    # were that job's fds still open in the keeper then, the spare would hold
    # its pipes and the caller would never see EOF.
    for _ in range(3):
        with tether.start(["true"], stdout=subprocess.PIPE) as job:
            assert job.wait(timeout=30) == 0
            assert job.stdout is not None
            readable, _, _ = select.select([job.stdout], [], [], 30)
            assert readable and job.stdout.read() == b""


#: Run as the unprivileged user inside a cgroup delegated to it: one job per
#: way of starting it; where each one's leader ran, which argv clone3 got.
_DELEGATED = (
    _SPY_PRELUDE
    + r"""
out = {}
ways = [("keeper", {}, False), ("in-process", {"watchdog": False}, False),
        ("keeper-shim", {}, True), ("in-process-shim", {"watchdog": False}, True)]
for name, options, shim in ways:
    if shim:
        tether.job._CLONE_INTO_CGROUP = False
    else:
        tether.job._CLONE_INTO_CGROUP = True
    with tether.start(["cat", "/proc/self/cgroup"], stdout=subprocess.PIPE, **options) as job:
        text, _ = job.communicate(timeout=30)
        out[name] = [job.cgroup_path, text.decode(), job.returncode]
    out[name].append(job.report.complete)
out["calls"] = calls
print(json.dumps(out))
"""
)


@needs_cgroup
@needs_clone3
def test_unprivileged_user_in_a_delegated_cgroup(suite_cgroup: str | None) -> None:
    # clone3 into a cgroup needs what a cgroup.procs write needs: write access
    # to the target's and the common ancestor's cgroup.procs. A delegated
    # subtree gives exactly that to a user; jobs land in it either way.
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
        # Root's shell moves itself in, then becomes the user: the user's
        # process starts inside the delegated cgroup.
        enter = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
        argv = ["sh", "-c", enter, "sh", deleg, *as_user(user, [*py, "-c", _DELEGATED])]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
    finally:
        # The user's keeper (in the delegated cgroup too) leaves once its
        # caller has exited and its job keepers are done.
        events = os.path.join(deleg, "cgroup.events")
        wait_for(lambda: b"populated 0" in Path(events).read_bytes(), what="the keeper to exit")
        for sub in os.listdir(deleg):
            if os.path.isdir(os.path.join(deleg, sub)):
                os.rmdir(os.path.join(deleg, sub))  # fails (and fails the test) if busy
        os.rmdir(deleg)
    for name in ("keeper", "in-process", "keeper-shim", "in-process-shim"):
        path, text, rc, complete = out[name]
        assert path is not None and path.startswith(deleg + "/"), (name, path)
        assert path.endswith(_cgroup_of(text)) and rc == 0 and complete, (name, text)
    assert out["calls"] == [["cat", "/proc/self/cgroup"]]  # in-process, not the shim rows


class _Refusing:
    """A native module whose clone3 fails with ``errno_num``."""

    def __init__(self, errno_num: int) -> None:
        self.errno_num = errno_num
        self.calls = 0

    def spawn(self, *args: object) -> tuple[int, int]:
        self.calls += 1
        raise OSError(self.errno_num, os.strerror(self.errno_num))


@needs_ctypes
@pytest.mark.parametrize("errno_num", [errno.ENOSYS, errno.EINVAL, errno.EACCES])
def test_a_kernel_refusing_the_native_flags_falls_back(
    errno_num: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No clone3 or no CLONE_INTO_CGROUP (ENOSYS, EINVAL): the ctypes way,
    # in a single-threaded process; with threads, Unavailable (the shim).
    # Any other error (EACCES on the cgroup) the ctypes way would share.
    fake = _Refusing(errno_num)
    monkeypatch.setattr(spawn, "_native_module", lambda: fake)
    before = sorted(os.listdir("/proc/self/fd"))
    if errno_num == errno.EACCES:
        with pytest.raises(spawn.Unavailable, match="clone3"):
            _run(["echo", "x"], None)
    else:
        assert _run(["echo", "x"], None) == b"x\n"
        release = threading.Event()
        t = threading.Thread(target=release.wait)
        t.start()
        try:
            with pytest.raises(spawn.Unavailable, match="clone3"):
                _run(["echo", "x"], None)
        finally:
            release.set()
            t.join()
    assert fake.calls == (1 if errno_num == errno.EACCES else 2)
    assert sorted(os.listdir("/proc/self/fd")) == before  # no pipe end left open


#: With our fds 0-2 closed, the error pipe would get one of them and the
#: child's dup2 onto its stdio would replace it: an exec failure must still
#: be reported (and a success still seen).
_CLOSED_STDIO = r"""
import os, sys
from tether._platform.linux import spawn
spawn._use_native = sys.argv[1] == "native"
result = open(sys.argv[2], "w")
r, w = os.pipe()
os.set_inheritable(result.fileno(), False)
for fd in (0, 1, 2):
    os.close(fd)
out = []
for argv in (["tether-no-such-command-here"], ["true"]):
    try:
        pid, pidfd = spawn.spawn(argv, os.environ, stdio=(w, w, w), cgroup=None)
    except FileNotFoundError:
        out.append("missing")
    else:
        out.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
os.close(w)
out.append(os.read(r, 100).decode())
result.write(repr(out))
"""


def test_an_exec_failure_is_reported_with_our_stdio_closed(way: str, tmp_path: Path) -> None:
    result = tmp_path / "result"
    subprocess.run([sys.executable, "-c", _CLOSED_STDIO, way, str(result)], check=True, timeout=60)
    assert result.read_text() == repr(["missing", 0, ""])  # nothing written to the job's stdio


_SUBREAPER = r"""
import sys
from tether._platform.linux import prctl, spawn
spawn._use_native = sys.argv[1] == "native"
assert not prctl.is_child_subreaper()
prctl.set_child_subreaper(True)
assert prctl.is_child_subreaper()
prctl.set_child_subreaper(False)
assert not prctl.is_child_subreaper()
print("ctypes" in sys.modules)
"""


@pytest.mark.parametrize("way", WAYS)
def test_subreaper_is_set_and_read_both_ways_and_natively_without_ctypes(way: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SUBREAPER, way], capture_output=True, text=True, check=True,
        timeout=60,
    )  # fmt: skip
    assert out.stdout.strip() == ("False" if way == "native" else "True"), out.stderr


def test_start_time_read_from_the_clock_is_the_kernels() -> None:
    """procfs.starttime_between: a child made between two CLOCK_BOOTTIME
    readings of one tick has that tick as its /proc start time (the job
    keeper reports the leader's identity so, without a /proc lookup)."""
    from tether._platform.linux import procfs

    agreed = ambiguous = 0
    for _ in range(300):
        before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        child = subprocess.Popen(["sleep", "5"])
        after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        try:
            derived = procfs.starttime_between(before, after)
            stat = procfs.read_stat(child.pid)
            assert stat
            real = int(stat[stat.rindex(b")") + 2 :].split()[19])
        finally:
            child.kill()
            child.wait()
        if derived is None:
            ambiguous += 1
            continue
        assert derived == real, (before, after, derived, real)
        agreed += 1
    assert agreed > ambiguous, "the window spanned a tick boundary nearly every time"
    # A boundary between the readings is never guessed across.
    tick = 1_000_000_000 // procfs.CLOCK_TICKS
    assert procfs.starttime_between(5 * tick - 1, 5 * tick) is None
    assert procfs.starttime_between(5 * tick, 6 * tick - 1) == 5


_BORN = """
import sys
from tether._platform.linux import procfs
from tether.job import Job
from tether.spec import JobSpec

held = 0
for _ in range(30):
    with Job(JobSpec(argv=["sleep", "5"]), dedicated_supervisor=True) as job:
        stat = procfs.read_stat(job.pid)
        real = int(stat.rpartition(b") ")[2].split()[19])
        assert job._leader.starttime == real, (job._leader.starttime, real)
        born = job._popen.born
        if born is not None:
            held += 1
            assert born == (real, job._leader._pidfd), (born, real)
        job.cancel()
        assert job._leader.has_exited()
print(held)
"""


@needs_cgroup
@needs_clone3
def test_a_direct_leader_is_held_by_its_clones_pidfd_with_the_clocks_start_time() -> None:
    """tether run's leader (born in its cgroup by clone3): its handle is the
    pidfd the clone returned and its start time the clock's tick, the one
    /proc shows, when both readings fall in one tick."""
    out = subprocess.run(
        [sys.executable, "-c", _BORN], capture_output=True, text=True, check=True, timeout=120
    )
    assert int(out.stdout) > 0, out.stderr
