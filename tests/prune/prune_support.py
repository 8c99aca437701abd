"""Processes of the test users and cgroups made by the pruner's tests, held by identity."""

from __future__ import annotations

import contextlib
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import alive, as_user, kill_identity, user_python, wait_for

USERS = ("tether-prune-a", "tether-prune-b", "tether-prune-c")
# Modes: "orphan" double-forks into a session of its own (re-parented to init);
# "session" stays a child of the test, leading a session of its own.
# Every catchable signal it receives is appended to SIGFILE; TERM then exits.
SPAWN = r"""
import os, signal, sys, time
mode, mark, sigfile = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "orphan":
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
def on(sig, frame):
    with open(sigfile, "a") as f:
        f.write(f"{sig}\n")
    if sig == signal.SIGTERM:
        os._exit(0)
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
          signal.SIGUSR2, signal.SIGCONT, signal.SIGALRM):
    signal.signal(s, on)
with open("/proc/self/stat", "rb") as f:
    starttime = f.read().rsplit(b")", 1)[1].split()[19].decode()
with open(mark + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {starttime}")
os.rename(mark + ".tmp", mark)
while True:
    time.sleep(3600)
"""


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    # Ordinary users (uid >= UID_MIN), unlike the --system tether-test user.
    done = subprocess.run(
        [useradd, "--no-create-home", "--shell", "/bin/sh", name],
        capture_output=True,
        check=False,
    )
    if done.returncode not in (0, 9):  # 9: created meanwhile by a parallel run
        pytest.skip(f"useradd {name} failed: {done.stderr.decode(errors='replace').strip()}")
    return pwd.getpwnam(name)


@dataclass
class Spawned:
    name: str
    pid: int
    starttime: int
    sigfile: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def identity(self) -> tuple[int, int]:
        return (self.pid, self.starttime)

    @property
    def alive(self) -> bool:
        return alive(self.pid, self.starttime)

    def signals(self) -> list[int]:
        if not self.sigfile.exists():
            return []
        return [int(x) for x in self.sigfile.read_text().split()]

    def sid(self) -> int:
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[3])


@dataclass
class Procs:
    """Starts processes as the test users and cleans every one up by identity."""

    users: dict[str, pwd.struct_passwd]
    dir: Path
    spawned: list[Spawned] = field(default_factory=list)

    def start(
        self,
        user: str,
        name: str,
        *,
        mode: str = "orphan",
        env: tuple[str, ...] = (),
        setpriv: tuple[str, ...] | None = None,
    ) -> Spawned:
        """A process of ``user`` ("a", "b", "c"); ``setpriv`` replaces the uid switch."""
        u = self.users[user]
        py = user_python(u)
        assert py is not None
        mark = self.dir / f"{name}.pid"
        sigfile = self.dir / f"{name}.signals"
        inner = [*env, *py, "-c", SPAWN, mode, str(mark), str(sigfile)]
        argv = as_user(u, inner)
        if setpriv is not None:
            i = argv.index("--reset-env")
            argv = ["setpriv", *setpriv, *argv[i:]]
        popen = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
        if mode == "orphan":
            popen.wait(timeout=30)
            if popen.returncode != 0:
                raise AssertionError(f"spawning {name} failed: status {popen.returncode}")
        wait_for(mark.exists, timeout=30, what=f"{name} to start")
        pid, starttime = (int(x) for x in mark.read_text().split())
        s = Spawned(name, pid, starttime, sigfile, popen if mode != "orphan" else None)
        self.spawned.append(s)
        return s

    def cleanup(self) -> None:
        for s in self.spawned:
            kill_identity(s.pid, s.starttime)
        for s in self.spawned:
            if s.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    s.popen.wait(timeout=10)
        wait_for(lambda: not any(s.alive for s in self.spawned), timeout=10, what="test processes")


@dataclass
class Cgroups:
    """Real cgroup directories made for a test (e.g. a fake Slurm layout)."""

    root: Path
    made: list[Path] = field(default_factory=list)

    def make(self, rel: str) -> Path:
        path = self.root / rel
        for parent in [*reversed(path.relative_to(self.root).parents), Path(rel)]:
            p = self.root / parent
            if not p.exists():
                p.mkdir()
                self.made.append(p)
        return path

    def move(self, rel: str, pid: int) -> None:
        (self.make(rel) / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        for p in sorted(self.made, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                deadline = time.monotonic() + 10
                while True:
                    try:
                        p.rmdir()
                        break
                    except OSError:
                        # Killed members leave only once their parent reaped them.
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
