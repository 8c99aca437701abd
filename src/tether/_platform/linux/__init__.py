"""The Linux backend: the process table from /proc, handles on pidfds.

Every row is read through one ``/proc/PID`` directory fd (:mod:`.procfs`), so
its fields describe a single process even if its pid is reused meanwhile. A
handle is a pidfd opened while such a dirfd proved the start time: a signal
through it can only reach that process, and once it is reaped the pidfd gets
ESRCH even if the pid is reused.

The kernel seams live in submodules: :mod:`.procfs` (/proc through dirfds),
:mod:`.cgroupfs` (cgroup v2 by file I/O), :mod:`.prctl` (ctypes: subreaper).
Code that uses cgroups or the subreaper imports those directly, behind the
capability flags :mod:`tether._platform` exports; nothing else in tether
reads /proc.
"""

from __future__ import annotations

import errno
import os
import select
import signal
from collections.abc import Collection

from tether._platform._common import Delivery, ProcessInfo
from tether._platform.linux import procfs

NAME = "linux"
HAS_CGROUPS = True
HAS_SUBREAPER = True
HAS_ENVIRON = True
HAS_PIDFD = True

_BOOT_ID = f"{procfs.PROC}/sys/kernel/random/boot_id"


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


def read_process(pid: int, fields: Collection[str]) -> ProcessInfo | None:
    try:
        with procfs.ProcDir(pid) as d:
            return _read_info(d, fields)
    except (procfs.ProcessGone, ProcessLookupError, PermissionError):
        return None


def snapshot(fields: Collection[str]) -> dict[int, ProcessInfo]:
    table: dict[int, ProcessInfo] = {}
    for pid in procfs.pids():
        info = read_process(pid, fields)
        if info is not None:
            table[pid] = info
    return table


def read_environ(pid: int, starttime: int) -> bytes | None:
    try:
        with procfs.ProcDir(pid) as d:
            if d.stat().starttime != starttime:
                return None
            return d.read("environ")
    except (procfs.ProcessGone, OSError):
        return None


def is_pid_namespace_init(pid: int, starttime: int) -> bool:
    """Is this process the init (pid 1) of a PID namespace nested in ours?

    Its ``NSpid:`` line lists its pid in each namespace, outermost first; the
    last is 1 for an init. False for a process that is gone or unreadable.
    """
    try:
        with procfs.ProcDir(pid) as d:
            if d.stat().starttime != starttime:
                return False
            status = d.read("status")
    except (procfs.ProcessGone, OSError):
        return False
    for line in status.splitlines():
        if line.startswith(b"NSpid:"):
            levels = line.split()[1:]
            return len(levels) > 1 and levels[-1] == b"1"
    return False


def own_starttime() -> int:
    return procfs.own_starttime()


_BOOT_TIME: list[float] = []


def starttime_to_epoch(starttime: int) -> float:
    if not _BOOT_TIME:
        _BOOT_TIME.append(procfs.boot_time())
    return _BOOT_TIME[0] + starttime / procfs.CLOCK_TICKS


def boot_id() -> str:
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


# -- handles: pidfds -----------------------------------------------------------


def open_process(pid: int, starttime: int | None) -> tuple[int, int] | None:
    """(start time, pidfd) for pid if it (still) has the given start time.

    The pidfd is opened while a /proc/PID dirfd is held: if the dirfd still
    reads the same start time afterwards, the pid had not been reused when the
    pidfd was made.
    """
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
            return (st, pidfd)
    except (procfs.ProcessGone, PermissionError):
        return None


def send_signal(pid: int, starttime: int, fd: int, sig: int) -> Delivery:
    if fd < 0:
        return Delivery.GONE
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return Delivery.GONE
    except PermissionError:
        return Delivery.DENIED
    return Delivery.DELIVERED


def has_exited(pid: int, starttime: int, fd: int) -> bool:
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if poller.poll(0):
        return True
    # A /proc dirfd fallback is not pollable: ask the kernel through it.
    try:
        signal.pidfd_send_signal(fd, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
