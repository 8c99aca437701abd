"""A process table built for classifying a whole node quickly.

The pruner looks at every process on the node, so the scan is two passes:
``/proc/PID/stat`` for everyone (pid, parents, session, start time, CPU time,
kernel-thread flag), then ``/proc/PID/status`` (all four uids, supplementary
groups) only for the processes the cheap rules left undecided. Reading the two
files by path rather than through one directory fd saves two syscalls per
process; the price is that a pid reused between the reads could mix two
processes' data. That cannot reach a stranger: every stray is re-read through
a ``/proc/PID`` directory fd that proves its start time, and its uids are
checked again there, right before the pidfd that signals it is opened (see
:mod:`tether.prune.kill`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tether.linux.procfs import CLOCK_TICKS, PF_KTHREAD

PROC = "/proc"
_O_FILE = os.O_RDONLY | os.O_CLOEXEC
LOGIN_DEFS = "/etc/login.defs"
#: The uid floor when /etc/login.defs has no UID_MIN (shadow-utils' default).
DEFAULT_UID_MIN = 1000


class Unreadable(Exception):
    """A /proc entry exists but could not be read or parsed (e.g. hidepid)."""


@dataclass(slots=True)
class Proc:
    """One process as the pruner sees it. ``uids`` and ``groups`` are read on demand."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    starttime: int  # clock ticks since boot
    state: str
    comm: str
    kernel_thread: bool
    cputime: float  # utime + stime, seconds
    age: float  # seconds since it started, at scan time
    uids: tuple[int, int, int, int] | None = None  # real, effective, saved, filesystem
    groups: tuple[int, ...] | None = None  # supplementary gids

    @property
    def identity(self) -> tuple[int, int]:
        return (self.pid, self.starttime)


def _read(path: str, size: int = 4096) -> bytes:
    fd = os.open(path, _O_FILE)
    try:
        data = os.read(fd, size)
        if len(data) == size:
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def uptime() -> float:
    """Seconds since boot (the clock /proc start times count in)."""
    return float(_read(f"{PROC}/uptime").split()[0])


def parse_stat(data: bytes, now: float) -> Proc:
    """A :class:`Proc` from /proc/PID/stat; ``now`` is :func:`uptime` at scan time."""
    # comm may contain spaces and parentheses: it ends at the *last* ")".
    lpar = data.index(b"(")
    rpar = data.rindex(b")")
    rest = data[rpar + 2 :].split()
    pid = int(data[:lpar])
    ppid = int(rest[1])
    starttime = int(rest[19])
    return Proc(
        pid=pid,
        ppid=ppid,
        pgid=int(rest[2]),
        sid=int(rest[3]),
        starttime=starttime,
        state=rest[0].decode(),
        comm=data[lpar + 1 : rpar].decode("utf-8", "replace"),
        kernel_thread=bool(int(rest[6]) & PF_KTHREAD) or pid == 2 or ppid == 2,
        cputime=(int(rest[11]) + int(rest[12])) / CLOCK_TICKS,
        age=now - starttime / CLOCK_TICKS,
    )


def parse_status(data: bytes) -> tuple[tuple[int, int, int, int], tuple[int, ...]]:
    """(ruid, euid, suid, fsuid) and the supplementary gids from /proc/PID/status."""
    uids: tuple[int, int, int, int] | None = None
    groups: tuple[int, ...] = ()
    for line in data.splitlines():
        if line.startswith(b"Uid:"):
            r, e, s, f = (int(x) for x in line.split()[1:5])
            uids = (r, e, s, f)
        elif line.startswith(b"Groups:"):
            groups = tuple(int(x) for x in line.split()[1:])
            break  # Groups: follows Uid: and Gid: (proc(5))
    if uids is None:
        raise ValueError("no Uid: line")
    return uids, groups


@dataclass
class Table:
    """Every process found by one scan, and the entries that could not be read."""

    procs: dict[int, Proc]
    unreadable: dict[int, str]  # pid -> why
    now: float  # uptime at scan time

    def children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for p in self.procs.values():
            kids.setdefault(p.ppid, []).append(p.pid)
        return kids

    def load_status(self, proc: Proc) -> bool:
        """Fill in ``uids`` and ``groups``; False (and noted) if they cannot be read."""
        if proc.uids is not None:
            return True
        try:
            data = _read(f"{PROC}/{proc.pid}/status", 8192)
            proc.uids, proc.groups = parse_status(data)
        except FileNotFoundError:
            return False  # exited since the first pass
        except OSError as err:
            self.unreadable[proc.pid] = f"/proc/{proc.pid}/status: {err.strerror}"
            return False
        except ValueError as err:
            self.unreadable[proc.pid] = f"/proc/{proc.pid}/status: unexpected contents ({err})"
            return False
        return True


def scan() -> Table:
    """Pass one: /proc/PID/stat of every process (status is read later, on demand)."""
    now = uptime()
    procs: dict[int, Proc] = {}
    unreadable: dict[int, str] = {}
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        try:
            data = _read(f"{PROC}/{name}/stat")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except OSError as err:
            unreadable[int(name)] = f"/proc/{name}/stat: {err.strerror}"
            continue
        if not data:
            continue  # a reaped process can leave an empty read behind
        try:
            proc = parse_stat(data, now)
        except (ValueError, IndexError):
            unreadable[int(name)] = f"/proc/{name}/stat: unexpected contents"
            continue
        procs[proc.pid] = proc
    return Table(procs, unreadable, now)


def uid_min(path: str = LOGIN_DEFS) -> int:
    """UID_MIN from /etc/login.defs: the first uid of ordinary users (else 1000)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "UID_MIN":
                    try:
                        value = int(fields[1], 0)
                    except ValueError:
                        return DEFAULT_UID_MIN
                    return value if value > 0 else DEFAULT_UID_MIN
    except OSError:
        pass
    return DEFAULT_UID_MIN


def read_cgroup(pid: int) -> str | None:
    """The unified-hierarchy path of a process (for reports), or None."""
    try:
        data = _read(f"{PROC}/{pid}/cgroup")
    except OSError:
        return None
    for line in data.splitlines():
        if line.startswith(b"0::"):
            return line[3:].decode("utf-8", "surrogateescape")
    return None


def read_cmdline(pid: int) -> str | None:
    try:
        data = _read(f"{PROC}/{pid}/cmdline")
    except OSError:
        return None
    args = [a.decode("utf-8", "surrogateescape") for a in data.rstrip(b"\0").split(b"\0") if a]
    return " ".join(args) if args else None
