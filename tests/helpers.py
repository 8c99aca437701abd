"""Test helpers: readiness through files (never sleeps), identities, users."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tether._platform.linux import cgroupfs, procfs

TEST_VAR = "TETHER_TEST_ID"
UNPRIVILEGED_USER = "tether-test"
SRC = str(Path(__file__).resolve().parent.parent / "src")


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) for predicate() to hold; readiness checks, not timing asserts."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def exec_finished(pid: int, comm: str) -> bool:
    """The process has exec'd a program named comm and its new command line
    is in place. The kernel renames the task (comm) before it lays out the
    new stack, so comm alone can be read mid-exec, when /proc/PID/cmdline is
    still empty. env_end (field 51 of stat) is the last address the exec
    sets, in the new mm: non-zero once argv and envp are laid out. It reads
    0 to a reader without ptrace read access; tests read their own children
    (or read as root)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    head, _, rest = raw.rpartition(b") ")
    fields = rest.split()
    name = head.partition(b" (")[2]
    # fields[0] is field 3 (state); env_end is field 51
    return name == comm.encode() and len(fields) > 48 and fields[48] != b"0"


def wait_for_exec(pid: int, comm: str, timeout: float = 10.0) -> None:
    wait_for(lambda: exec_finished(pid, comm), timeout, f"pid {pid} to exec {comm}")


def wait_for_file(path: str | Path, timeout: float = 10.0) -> str:
    p = Path(path)
    wait_for(lambda: p.exists() and p.stat().st_size > 0, timeout, f"file {p}")
    return p.read_text()


def processes_with_env(entry_prefix: bytes, not_before: int = 0) -> Iterator[procfs.Stat]:
    """Live (non-zombie) processes whose environment has an entry starting with the prefix."""
    for pid in procfs.pids():
        try:
            with procfs.ProcDir(pid) as d:
                st = d.stat()
                if st.starttime < not_before or st.state in ("Z", "X"):
                    continue
                env = d.read("environ")
        except (procfs.ProcessGone, OSError):
            continue
        if any(e.startswith(entry_prefix) for e in env.split(b"\0")):
            yield st


def alive(pid: int, starttime: int) -> bool:
    """Is (pid, starttime) still a live, non-zombie process?"""
    try:
        with procfs.ProcDir(pid) as d:
            st = d.stat()
    except (procfs.ProcessGone, OSError):
        return False
    return st.starttime == starttime and st.state not in ("Z", "X")


def tether_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether.cli", *args]


def is_root() -> bool:
    return os.geteuid() == 0


def cgroup2_mount() -> str | None:
    return cgroupfs.find_cgroup2_mount()


def ensure_unprivileged_user() -> pwd.struct_passwd:
    """Create (once) the unprivileged user the tests run tether as."""
    try:
        return pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/bin/sh", UNPRIVILEGED_USER],
        check=True,
    )
    return pwd.getpwnam(UNPRIVILEGED_USER)


def as_user(user: pwd.struct_passwd, argv: list[str]) -> list[str]:
    """argv run as ``user`` via setpriv (no PAM, no new session)."""
    return [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--init-groups",
        "--reset-env",
        "env",
        f"PYTHONPATH={SRC}",
        f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
        f"{TEST_VAR}={os.environ.get(TEST_VAR, '')}",
        *argv,
    ]


# -- process trees: identities written by the processes themselves ----------


def proc_stat(pid: int) -> procfs.Stat | None:
    """/proc/PID/stat of a live or zombie process, or None once it is reaped."""
    try:
        with procfs.ProcDir(pid) as d:
            return d.stat()
    except (procfs.ProcessGone, OSError):
        return None


def read_identity(path: str | Path) -> tuple[int, int]:
    """A mark file's "PID STARTTIME" (starttime: field 22 of /proc/PID/stat)."""
    pid, starttime = Path(path).read_text().split()
    return int(pid), int(starttime)


def read_marks(directory: str | Path) -> dict[str, tuple[int, int]]:
    """Every ``NAME.pid`` mark in directory: name -> (pid, starttime)."""
    return {p.name[: -len(".pid")]: read_identity(p) for p in Path(directory).glob("*.pid")}


def wait_for_marks(
    directory: str | Path, names: list[str] | tuple[str, ...], timeout: float = 30.0
) -> dict[str, tuple[int, int]]:
    """Wait (bounded, by file) for each ``NAME.pid`` mark; name -> (pid, starttime)."""
    deadline = time.monotonic() + timeout
    out = {}
    for name in names:
        path = Path(directory) / f"{name}.pid"
        wait_for_file(path, max(0.1, deadline - time.monotonic()))
        out[name] = read_identity(path)
    return out


def kill_identity(pid: int, starttime: int) -> bool:
    """SIGKILL (pid, starttime) through a verified handle; True if it was alive."""
    import signal as _signal

    from tether.process import ProcessHandle

    h = ProcessHandle.open(pid, starttime)
    if h is None:
        return False
    try:
        h.send_signal(_signal.SIGKILL)
    finally:
        h.close()
    return True


def cgroup_writable() -> bool:
    """Can this process create job cgroups (cgroup v2 mounted and writable)?"""
    return cgroupfs.probe().parent is not None


def nspid(pid: int) -> tuple[int, ...] | None:
    """The NSpid line of /proc/PID/status: the pid in each nested namespace."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return tuple(int(x) for x in line.split()[1:])
    except OSError:
        return None
    return None


def describe_identities(marks: dict[str, tuple[int, int]]) -> dict[str, dict[str, object]]:
    """For each (pid, starttime): alive?, and if so ppid/pgid/sid/state, whether
    its environment carries a TETHER_JOB_ID and whether it ignores SIGHUP
    (JSON-ready, so a supervisor process can report it too)."""
    out: dict[str, dict[str, object]] = {}
    for name, (pid, starttime) in marks.items():
        st = proc_stat(pid)
        live = st is not None and st.starttime == starttime and st.state not in ("Z", "X")
        info: dict[str, object] = {"pid": pid, "starttime": starttime, "alive": live}
        if live and st is not None:
            info.update(ppid=st.ppid, pgid=st.pgid, sid=st.sid, state=st.state)
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                info["cookie"] = any(e.startswith(b"TETHER_JOB_ID=") for e in env)
                with open(f"/proc/{pid}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"SigIgn:"):
                            info["sighup_ignored"] = bool(int(line.split()[1], 16) & 1)
            except OSError:
                pass
        out[name] = info
    return out


_USER_PYTHON: dict[int, list[str] | None] = {}


def user_python(user: pwd.struct_passwd) -> list[str] | None:
    """argv prefix for a Python ``user`` may run, with tether (and click) importable.

    The test interpreter may live where the user cannot reach (e.g. under a
    0700 /root); then a system python3 is used with a world-readable copy of
    click in a temp directory. None if no interpreter works for the user.
    """
    if user.pw_uid in _USER_PYTHON:
        return _USER_PYTHON[user.pw_uid]
    import tempfile

    import click

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    deps = Path(tempfile.gettempdir()) / f"tether-test-deps-py{version}"
    if not (deps / "click").is_dir():
        staging = Path(tempfile.mkdtemp(prefix="tether-test-deps-"))
        shutil.copytree(Path(click.__file__).parent, staging / "click")
        for p in [staging, *staging.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        try:
            staging.rename(deps)
        except OSError:  # made meanwhile by a parallel run
            shutil.rmtree(staging, ignore_errors=True)
    probe = "import sys, click, tether.cli; assert sys.version_info >= (3, 11)"
    candidates = [sys.executable]
    for name in (f"python{version}", "python3"):
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        if found is not None and found not in candidates:
            candidates.append(found)
    result = None
    for py in candidates:
        for path in (SRC, f"{SRC}:{deps}"):
            argv = ["env", f"PYTHONPATH={path}", py]
            done = subprocess.run(
                as_user(user, [*argv, "-c", probe]), capture_output=True, check=False, timeout=60
            )
            if done.returncode == 0:
                result = argv
                break
        if result is not None:
            break
    _USER_PYTHON[user.pw_uid] = result
    return result
