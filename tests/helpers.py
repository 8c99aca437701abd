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

from tether.linux import cgroupfs, procfs

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
