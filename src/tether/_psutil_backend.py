"""Process table for platforms without /proc (macOS, BSD), through psutil.

Only the session / process-group and descendant-walk trackers run here. There
are no pidfds, so the create time is checked right before each signal; psutil
documents the remaining race.
"""

from __future__ import annotations

import os
from collections.abc import Collection

import psutil

from tether.process import Delivery, ProcessInfo


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


def starttime_of(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).create_time() * 1e9)
    except (psutil.Error, OSError):
        return None


def has_exited(pid: int, starttime: int) -> bool:
    """Gone, replaced by another process, or a zombie (exited, not yet reaped)."""
    try:
        proc = psutil.Process(pid)
        return int(proc.create_time() * 1e9) != starttime or proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return True


def send_signal(pid: int, starttime: int, sig: int) -> Delivery:
    if starttime_of(pid) != starttime:
        return Delivery.GONE
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return Delivery.GONE
    except PermissionError:
        return Delivery.DENIED
    return Delivery.DELIVERED
