"""The psutil backend: the process table where there is no /proc (macOS, BSD).

Only the session / process-group and descendant-walk trackers run here. There
are no pidfds, so a handle is (pid, create time) and the create time is
checked right before each signal; psutil documents the remaining race.
Start times are create times in nanoseconds since the epoch.

Nothing here reads /proc itself: on Linux (where this backend is only ever
forced, for tests) psutil reads it, from ``psutil.PROCFS_PATH``.
"""

from __future__ import annotations

import os
from collections.abc import Collection

import psutil

from tether._platform._common import Delivery, ProcessInfo

NAME = "psutil"
HAS_CGROUPS = False
HAS_SUBREAPER = False
HAS_ENVIRON = False
HAS_PIDFD = False


def _info(p: psutil.Process, fields: Collection[str]) -> ProcessInfo:
    with p.oneshot():
        # psutil gives (real, effective, saved); the filesystem uid follows the effective.
        u = p.uids() if "uids" in fields else None
        cmdline = tuple(p.cmdline()) if "cmdline" in fields else None
        return ProcessInfo(
            pid=p.pid,
            ppid=p.ppid(),
            pgid=os.getpgid(p.pid),
            sid=os.getsid(p.pid),
            starttime=int(p.create_time() * 1e9),
            state=p.status(),
            comm=p.name(),
            uids=(u.real, u.effective, u.saved, u.effective) if u is not None else None,
            cmdline=cmdline,
        )


def read_process(pid: int, fields: Collection[str]) -> ProcessInfo | None:
    try:
        return _info(psutil.Process(pid), fields)
    except (psutil.Error, OSError):
        return None


def snapshot(fields: Collection[str]) -> dict[int, ProcessInfo]:
    table: dict[int, ProcessInfo] = {}
    for p in psutil.process_iter():
        try:
            table[p.pid] = _info(p, fields)
        except (psutil.Error, OSError):
            continue
    return table


def read_environ(pid: int, starttime: int) -> bytes | None:
    return None  # HAS_ENVIRON is False: the cookie tracker does not run here


def is_pid_namespace_init(pid: int, starttime: int) -> bool:
    return False  # PID namespaces are Linux's


def _starttime_of(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).create_time() * 1e9)
    except (psutil.Error, OSError):
        return None


def own_starttime() -> int:
    st = _starttime_of(os.getpid())
    if st is None:
        raise OSError(f"psutil cannot read the start time of this process (pid {os.getpid()})")
    return st


def starttime_to_epoch(starttime: int) -> float:
    return starttime / 1e9


def boot_id() -> str:
    """Boot time, whole seconds: changes with every boot, as a boot id must."""
    try:
        return f"boot-time-{int(psutil.boot_time())}"
    except (psutil.Error, OSError):
        return ""


# -- handles: (pid, create time), checked before each use ----------------------


def open_process(pid: int, starttime: int | None) -> tuple[int, int] | None:
    st = _starttime_of(pid)
    if st is None or (starttime is not None and st != starttime):
        return None
    return (st, -1)


def send_signal(pid: int, starttime: int, fd: int, sig: int) -> Delivery:
    if _starttime_of(pid) != starttime:
        return Delivery.GONE
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return Delivery.GONE
    except PermissionError:
        return Delivery.DENIED
    return Delivery.DELIVERED


def exit_event_fd(fd: int) -> int:
    """No handle here polls: every exit is found by :func:`has_exited`."""
    return -1


def has_exited(pid: int, starttime: int, fd: int) -> bool:
    """Gone, replaced by another process, or a zombie (exited, not yet reaped)."""
    try:
        proc = psutil.Process(pid)
        return int(proc.create_time() * 1e9) != starttime or proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return True
