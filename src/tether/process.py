"""Process identity and process-table snapshots, whatever the platform.

A process is identified by (pid, start time), never by a bare pid. A
:class:`ProcessHandle` is a verified reference to one process. With the Linux
backend it holds a pidfd opened while a ``/proc/PID`` dirfd proved the start
time, so a signal through it can only reach that process: once it is reaped,
the pidfd gets ESRCH even if the pid is reused. With the psutil backend
(macOS, BSD) the start time is checked right before each signal, which
narrows but cannot close the reuse race.

This module is OS-neutral: it calls :mod:`tether._platform` (which picked
the backend once, at import) and never looks at the platform itself.
"""

from __future__ import annotations

import os

from tether import _platform
from tether._platform._common import FIELDS, Delivery, ProcessInfo

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from tether.identity import Identity

__all__ = [
    "FIELDS",
    "IS_LINUX",
    "Delivery",
    "ProcessHandle",
    "ProcessInfo",
    "ancestors",
    "children_map",
    "close_all",
    "is_alive",
    "own_starttime",
    "read_environ",
    "read_process",
    "snapshot",
    "starttime_to_epoch",
]

#: The Linux backend is active. Kept for callers written before the backend
#: grew capability flags: ask ``tether._platform.HAS_CGROUPS`` (or
#: ``HAS_SUBREAPER``, ``HAS_ENVIRON``) for what a feature needs instead.
IS_LINUX = _platform.NAME == "linux"


def read_process(pid: int, fields: Collection[str] = ()) -> ProcessInfo | None:
    """One process's row, or None if it does not exist (or was reaped meanwhile).

    A read that fails for another reason (EMFILE: out of descriptors) raises
    OSError: "no such process" decides that a supervisor died or that a pid
    is no ancestor of ours."""
    return _platform.read_process(pid, fields)


def is_alive(identity: Identity | None) -> bool:
    """Is exactly this process (pid and start time) alive and not a zombie?
    The one rule for "this recorded supervisor, watchdog or leader still
    runs": a reused pid has another start time, a zombie runs no code."""
    if identity is None:
        return False
    info = _platform.read_process(identity.pid, ())
    return (
        info is not None and info.starttime == identity.starttime and info.state not in ("Z", "X")
    )


def snapshot(fields: Collection[str] = ()) -> dict[int, ProcessInfo]:
    """Every process on the system, keyed by pid.

    Processes that exit during the scan are skipped; each row describes a
    single process even if its pid is reused meanwhile.
    """
    return _platform.snapshot(fields)


def read_environ(pid: int, starttime: int) -> bytes | None:
    """The environment of (pid, starttime), or None if unreadable or not that process.

    Always None where the backend cannot read environments
    (``not tether._platform.HAS_ENVIRON``).
    """
    return _platform.read_environ(pid, starttime)


def own_starttime() -> int:
    """This process's start time, in the backend's units."""
    return _platform.own_starttime()


def starttime_to_epoch(starttime: int) -> float:
    """A start time as seconds since the epoch."""
    return _platform.starttime_to_epoch(starttime)


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


class ProcessHandle:
    """A verified reference to one process: signal it, see when it has exited.

    With the Linux backend it owns a pidfd; with psutil it holds no fd and
    checks the start time before each use. The handle is closed explicitly
    (fds are a finite resource).
    """

    __slots__ = ("_event_fd", "_pidfd", "pid", "starttime")

    def __init__(self, pid: int, starttime: int, pidfd: int) -> None:
        self.pid = pid
        self.starttime = starttime
        self._pidfd = pidfd
        self._event_fd = _platform.exit_event_fd(pidfd)

    @classmethod
    def open(cls, pid: int, starttime: int | None = None) -> ProcessHandle | None:
        """A handle on pid if it (still) has the given start time, else None."""
        if pid <= 0:
            return None
        opened = _platform.open_process(pid, starttime)
        if opened is None:
            return None
        st, fd = opened
        return cls(pid, st, fd)

    @property
    def fileno(self) -> int:
        """A pollable fd, readable once the process has exited; -1 if there is none."""
        return self._event_fd

    def send_signal(self, sig: int) -> Delivery:
        """Signal this process and no other."""
        return _platform.send_signal(self.pid, self.starttime, self._pidfd, sig)

    def has_exited(self) -> bool:
        """True once the process has exited (a zombie counts as exited)."""
        return _platform.has_exited(self.pid, self.starttime, self._pidfd)

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
