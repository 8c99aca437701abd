"""Process identity and process-table snapshots.

A process is identified by (pid, start time), never by a bare pid. On Linux a
:class:`ProcessHandle` holds a pidfd opened while a ``/proc/PID`` dirfd proved
the start time, so a signal through it can only reach that process: once it is
reaped, the pidfd gets ESRCH even if the pid is reused. Elsewhere (macOS, BSD)
psutil supplies the table and the start time is checked right before each
signal, which narrows but cannot close the reuse race.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import Enum

IS_LINUX = sys.platform.startswith("linux")

if IS_LINUX:
    from tether.linux import procfs


class Delivery(Enum):
    """What happened to a signal sent through a handle."""

    DELIVERED = "delivered"
    GONE = "gone"  # already exited: progress, not failure
    DENIED = "denied"  # EPERM: e.g. a setuid child of a non-root tether


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One row of a process table. Optional fields are None unless asked for."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    starttime: int  # clock ticks since boot (Linux) or create time in ns (psutil)
    state: str
    comm: str
    kernel_thread: bool = False
    uids: tuple[int, int, int, int] | None = None  # real, effective, saved, filesystem
    cmdline: tuple[str, ...] | None = None
    cgroup: str | None = None
    wchan: str | None = None

    @property
    def identity(self) -> tuple[int, int]:
        return (self.pid, self.starttime)

    def describe(self) -> str:
        if self.cmdline:
            return " ".join(self.cmdline)
        return f"[{self.comm}]"


#: Optional fields a snapshot can fill in.
FIELDS = frozenset({"uids", "cmdline", "cgroup", "wchan"})


def _read_info(d: procfs.ProcDir, fields: Collection[str]) -> ProcessInfo:
    st = d.stat()
    uids = cmdline = cgroup = wchan = None
    if "uids" in fields:
        uids = procfs.parse_status_uids(d.read("status"))
    if "cmdline" in fields:
        cmdline = procfs.parse_cmdline(d.read("cmdline"))
    if "cgroup" in fields:
        cgroup = procfs.parse_cgroup_v2(d.read("cgroup"))
    if "wchan" in fields:
        try:
            wchan = d.read("wchan").decode(errors="replace") or None
        except PermissionError:
            wchan = None
    return ProcessInfo(
        pid=st.pid,
        ppid=st.ppid,
        pgid=st.pgid,
        sid=st.sid,
        starttime=st.starttime,
        state=st.state,
        comm=st.comm,
        kernel_thread=st.is_kernel_thread,
        uids=uids,
        cmdline=cmdline,
        cgroup=cgroup,
        wchan=wchan,
    )


def read_process(pid: int, fields: Collection[str] = ()) -> ProcessInfo | None:
    """One process's row, or None if it does not exist (or was reaped meanwhile)."""
    if not IS_LINUX:
        from tether import _psutil_backend

        return _psutil_backend.read_process(pid, fields)
    try:
        with procfs.ProcDir(pid) as d:
            return _read_info(d, fields)
    except (procfs.ProcessGone, ProcessLookupError):
        return None
    except PermissionError:
        return None


def snapshot(fields: Collection[str] = ()) -> dict[int, ProcessInfo]:
    """Every process on the system, keyed by pid.

    Processes that exit during the scan are skipped; each row is read through
    one dirfd so its fields describe a single process even if its pid is reused.
    """
    if not IS_LINUX:
        from tether import _psutil_backend

        return _psutil_backend.snapshot(fields)
    table: dict[int, ProcessInfo] = {}
    for pid in procfs.pids():
        info = read_process(pid, fields)
        if info is not None:
            table[pid] = info
    return table


def read_environ(pid: int, starttime: int) -> bytes | None:
    """The environment of (pid, starttime), or None if unreadable or not that process."""
    if not IS_LINUX:
        return None
    try:
        with procfs.ProcDir(pid) as d:
            if d.stat().starttime != starttime:
                return None
            return d.read("environ")
    except (procfs.ProcessGone, OSError):
        return None


def children_map(table: dict[int, ProcessInfo]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for info in table.values():
        kids.setdefault(info.ppid, []).append(info.pid)
    return kids


def ancestors(pid: int, table: dict[int, ProcessInfo] | None = None) -> list[int]:
    """pid's parent, grandparent, ... up to (and including) pid 1."""
    out: list[int] = []
    seen = {pid}
    while True:
        info = table.get(pid) if table is not None else read_process(pid)
        if info is None or info.ppid <= 0 or info.ppid in seen:
            return out
        out.append(info.ppid)
        seen.add(info.ppid)
        pid = info.ppid


def starttime_to_epoch(starttime: int) -> float:
    if not IS_LINUX:
        return starttime / 1e9
    return _boot_time() + starttime / procfs.CLOCK_TICKS


_BOOT_TIME: list[float] = []


def _boot_time() -> float:
    if not _BOOT_TIME:
        _BOOT_TIME.append(procfs.boot_time())
    return _BOOT_TIME[0]


class ProcessHandle:
    """A verified reference to one process: signal it, see when it has exited.

    On Linux it owns a pidfd. Opening it proves (pid, starttime) through a
    /proc/PID dirfd held across ``pidfd_open``: if the dirfd still reads the
    same start time afterwards, the pid had not been reused when the pidfd was
    made. The handle is closed explicitly (fds are a finite resource).
    """

    __slots__ = ("_pidfd", "pid", "starttime")

    def __init__(self, pid: int, starttime: int, pidfd: int) -> None:
        self.pid = pid
        self.starttime = starttime
        self._pidfd = pidfd

    @classmethod
    def open(cls, pid: int, starttime: int | None = None) -> ProcessHandle | None:
        """A handle on pid if it (still) has the given start time, else None."""
        if pid <= 0:
            return None
        if not IS_LINUX:
            from tether import _psutil_backend

            st = _psutil_backend.starttime_of(pid)
            if st is None or (starttime is not None and st != starttime):
                return None
            return cls(pid, st, -1)
        try:
            with procfs.ProcDir(pid) as d:
                st = d.stat().starttime
                if starttime is not None and st != starttime:
                    return None
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError as err:
                    if err.errno == errno.ESRCH:
                        return None
                    # No pidfd support: the dirfd itself is accepted by
                    # pidfd_send_signal (Linux >= 5.1), keep a dup of it.
                    pidfd = os.dup(d.fd)
                try:
                    if d.stat().starttime != st:
                        raise procfs.ProcessGone(pid)
                except procfs.ProcessGone:
                    os.close(pidfd)
                    return None
                return cls(pid, st, pidfd)
        except (procfs.ProcessGone, PermissionError):
            return None

    @property
    def fileno(self) -> int:
        return self._pidfd

    def send_signal(self, sig: int) -> Delivery:
        """Signal this process and no other."""
        if self._pidfd < 0:
            if IS_LINUX:
                return Delivery.GONE
            from tether import _psutil_backend

            return _psutil_backend.send_signal(self.pid, self.starttime, sig)
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            return Delivery.GONE
        except PermissionError:
            return Delivery.DENIED
        return Delivery.DELIVERED

    def has_exited(self) -> bool:
        """True once the process has exited (a zombie counts as exited)."""
        if self._pidfd < 0:
            if IS_LINUX:
                return True
            from tether import _psutil_backend

            return _psutil_backend.has_exited(self.pid, self.starttime)
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        if poller.poll(0):
            return True
        # A /proc dirfd fallback is not pollable: ask the kernel through it.
        try:
            signal.pidfd_send_signal(self._pidfd, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def read(self, fields: Collection[str] = ()) -> ProcessInfo | None:
        """Fresh data for this process, or None if it is gone (or a new one has its pid)."""
        info = read_process(self.pid, fields)
        if info is None or info.starttime != self.starttime:
            return None
        return info

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def __repr__(self) -> str:
        return f"ProcessHandle(pid={self.pid}, starttime={self.starttime})"


def close_all(handles: Iterable[ProcessHandle]) -> None:
    for h in handles:
        h.close()
