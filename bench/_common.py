"""Shared helpers for the benchmarks in this directory (not a benchmark itself).

Every process a benchmark starts is recorded by identity (pid + start time,
held through a pidfd opened while /proc proved the start time) so cleanup can
verify it is gone and SIGKILL exactly that process if not: nothing is ever
killed by name.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

PYTHON = sys.executable

# A launcher that forks n-1 sleeping children (a tree of n processes), then
# writes every pid of the tree to the ready file (atomically, by rename).
LAUNCHER = r"""
import os, sys, time
n, ready = int(sys.argv[1]), sys.argv[2]
pids = [os.getpid()]
for _ in range(n - 1):
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                time.sleep(3600)
        finally:
            os._exit(0)
    pids.append(pid)
with open(ready + ".tmp", "w") as f:
    f.write("\n".join(map(str, pids)))
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(3600)
"""

# Put the shell into a cgroup before exec, as tether's own shim does.
CGROUP_SHIM = 'echo 0 >"$0" || exit 125; exec "$@"'


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cgroup2_mount() -> str | None:
    """The cgroup2 mount point, from /proc/self/mounts (never assumed)."""
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return fields[1].replace("\\040", " ")
    return None


def starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[19])


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ms(x: float) -> str:
    return f"{x * 1000:9.1f}"


class Tracked:
    """Identities of processes a benchmark started; verify and clean them up."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}  # pidfd -> pid

    def add(self, pids: Sequence[int]) -> None:
        for pid in pids:
            before = starttime(pid)
            if before is None:
                continue
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            if starttime(pid) != before:
                os.close(fd)  # the pid was reused between the reads: not ours
                continue
            self.fds[fd] = pid

    def alive(self) -> list[int]:
        """Pids (of ours) that have not exited. A zombie counts as exited."""
        if not self.fds:
            return []
        poller = select.poll()
        for fd in self.fds:
            poller.register(fd, select.POLLIN)
        exited = {fd for fd, _ in poller.poll(0)}
        return [pid for fd, pid in self.fds.items() if fd not in exited]

    def wait_exited(self, timeout: float) -> bool:
        """Wait until every tracked process has exited (True) or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def kill_leftovers(self) -> int:
        """SIGKILL (through the pidfd) whatever is still alive; close all; count."""
        left = 0
        live = set(self.alive())
        for fd, pid in self.fds.items():
            if pid in live:
                left += 1
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        return left


class Tree:
    """A launcher + n-1 sleeping children, started by some means, ready-signalled."""

    def __init__(self, n: int, tracked: Tracked) -> None:
        self.n = n
        self.tracked = tracked
        self.dir = tempfile.mkdtemp(prefix="tether-bench-")
        self.ready = os.path.join(self.dir, "ready")
        self.argv = [PYTHON, "-c", LAUNCHER, str(n), self.ready]
        self.pids: list[int] = []

    def wait_ready(self, leader: int | None, timeout: float = 120.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.ready):
            if time.monotonic() > deadline:
                raise RuntimeError(f"tree of {self.n} not ready after {timeout}s")
            time.sleep(0.005)
        with open(self.ready) as f:
            self.pids = [int(x) for x in f.read().split()]
        if leader is not None and self.pids[0] != leader:
            raise RuntimeError(f"launcher pid {self.pids[0]} is not the leader {leader}")
        self.tracked.add(self.pids)
        return self.pids

    def remove_files(self) -> None:
        for name in (self.ready, self.ready + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


def reap(popen: subprocess.Popen[bytes] | None) -> None:
    if popen is not None:
        with contextlib.suppress(Exception):
            popen.wait(timeout=10)


def pass_miss(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def cpu_ticks(pid: int) -> int:
    """utime + stime of PID in clock ticks (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def compile_trees(src_args: Sequence[str]) -> list[tuple[str, str]]:
    """Byte-compile the tether in use and each ``--src LABEL=DIR`` tree, as
    pip install leaves a package (with PYTHONDONTWRITEBYTECODE, or an
    unwritable tree, every run would otherwise compile each module it
    imports again); the (label, dir) pairs."""
    import compileall

    import tether

    trees = [(label, src) for label, src in (x.split("=", 1) for x in src_args)]
    for tree_dir in [os.path.dirname(tether.__file__), *(src for _, src in trees)]:
        compileall.compile_dir(tree_dir, quiet=1)
    return trees
