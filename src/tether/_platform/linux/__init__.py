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
import stat

from tether import _signals
from tether._platform._common import Delivery, ProcessInfo
from tether._platform.linux import procfs, procscan

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable
    from typing import Any

NAME = "linux"
HAS_CGROUPS = True
HAS_SUBREAPER = True
HAS_ENVIRON = True
HAS_PIDFD = True

_BOOT_ID = f"{procfs.PROC}/sys/kernel/random/boot_id"

#: Set once pidfd_open was refused (no kernel support, or a seccomp filter)
#: and a /proc/PID dirfd stands in for a pidfd.
_dirfd_handles = [False]


def _read_info(
    d: procfs.ProcDir, fields: Collection[str], st: procfs.Stat | None = None
) -> ProcessInfo:
    st = d.stat() if st is None else st
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
    if not fields:
        # Stat only: one read, one open (see snapshot). Strict: None says the
        # process is gone (or hidden from us), never that this process is out
        # of descriptors (EMFILE): "not alive" decides that a supervisor
        # died (tether reap, the pruner) and which ancestors are protected.
        data = procfs.read_stat(pid, strict=True)
        try:
            return info_from_stat(data) if data else None
        except (ValueError, IndexError):
            return None
    try:
        with procfs.ProcDir(pid) as d:
            return _read_info(d, fields)
    except (procfs.ProcessGone, ProcessLookupError, PermissionError):
        return None


def snapshot(fields: Collection[str]) -> dict[int, ProcessInfo]:
    table: dict[int, ProcessInfo] = {}
    if fields:
        for pid in procfs.pids():
            info = read_process(pid, fields)
            if info is not None:
                table[pid] = info
        return table
    # Stat only: one read of /proc/PID/stat describes one process, so the
    # dirfd that pins a process across several reads is not needed — one
    # open per process instead of two (the snapshot is a termination's most
    # repeated cost, and every job's last scan reads the whole node).
    native = procscan.module()
    if native is not None:
        try:
            rows = native.scan(procfs.PROC, 0.0, procfs.CLOCK_TICKS, procfs.PF_KTHREAD)
        except OSError:
            pass  # /proc unlistable: the Python way says so
        else:
            return _table_from_scan(rows)
    for pid in procfs.pids():
        data = procfs.read_stat(pid, strict=True)
        if data:
            try:
                table[pid] = info_from_stat(data)
            except (ValueError, IndexError):
                pass
    return table


def _table_from_scan(rows: list[tuple[Any, ...]]) -> dict[int, ProcessInfo]:
    """The native reader's rows (tether._platform.linux._procscan) as the
    Python way builds them: parsed rows; raw stat lines its strict parser
    left (parsed here, as above); a process gone or hidden from us is no
    row, any other error (EMFILE) is raised, as the Python way does."""
    table: dict[int, ProcessInfo] = {}
    for row in rows:
        if len(row) == 10:
            pid, ppid, pgid, sid, starttime, state, comm, kthread = row[:8]
            if not comm.isascii():
                # Decoded with surrogateescape there, with "replace" here.
                comm = comm.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            table[pid] = ProcessInfo(pid, ppid, pgid, sid, starttime, state, comm, kthread)
        elif type(row[1]) is bytes:
            if row[1]:
                try:
                    table[row[0]] = info_from_stat(row[1])
                except (ValueError, IndexError):
                    pass
        elif row[1] not in procfs.NOT_READABLE:  # as read_stat(strict=True)
            raise OSError(row[1], os.strerror(row[1]), f"{procfs.PROC}/{row[0]}/stat")
    return table


def info_from_stat(data: bytes) -> ProcessInfo:
    pid, comm, f = procfs.split_stat(data)
    ppid = int(f[1])
    return ProcessInfo(
        pid,
        ppid,
        int(f[2]),
        int(f[3]),
        int(f[19]),
        f[0].decode(),
        comm.decode("utf-8", "replace"),
        procfs.kernel_thread(pid, ppid, int(f[6])),
    )


def subtree(
    root: int,
    fields: Collection[str] = (),
    *,
    root_starttime: int | None = None,
    root_single_threaded: bool = False,
) -> dict[int, ProcessInfo] | None:
    """``root`` and its descendants, from /proc/PID/task/TID/children: a cost in
    the tree's size, not the system's. None where the kernel lacks the file
    (CONFIG_PROC_CHILDREN), and, given ``root_starttime``, where the root is
    not that process alive (gone, a zombie, or its pid reused: a stranger's
    children are no descendants of ours). A child that forks or is
    re-parented during the read may be missed, as in a full snapshot (the
    engine's rescans catch it); an orphan is re-parented before its parent's
    pidfd says it exited. ``root_single_threaded``: the root (a job keeper)
    forks from its one thread, and orphans re-parent to a subreaper's first
    live thread: its children file is the only one (no task listing).
    """
    table: dict[int, ProcessInfo] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            continue
        info = read_process(pid, fields)
        if (
            pid == root
            and root_starttime is not None
            and (info is None or not info.is_alive_as(root_starttime))
        ):
            return None
        if info is None:
            continue
        table[pid] = info
        # A process or thread gone meanwhile has no children to list; any
        # other failure (EMFILE) is raised: a subtree that silently lacks a
        # child's branch could call a tree empty.
        try:
            tids = (
                [str(pid)]
                if pid == root and root_single_threaded
                else os.listdir(f"{procfs.PROC}/{pid}/task")
            )
        except OSError as err:
            if err.errno not in procfs.NOT_READABLE:
                raise
            continue
        for tid in tids:
            try:
                with open(f"{procfs.PROC}/{pid}/task/{tid}/children", "rb") as f:
                    todo.extend(int(c) for c in f.read(1 << 20).split())
            except FileNotFoundError:
                if os.path.exists(f"{procfs.PROC}/{pid}/task/{tid}"):
                    return None  # the thread is there, its children file is not
            except OSError as err:
                if err.errno not in procfs.NOT_READABLE:
                    raise
            except ValueError:
                continue
    return table


def read_environ(pid: int, starttime: int) -> bytes | None:
    """None if the process is gone or its environment is not ours to read
    (another user's); any other failure (EMFILE) is raised: "no cookie"
    leaves a job's process out of its tree, and the pruner's SLURM_JOB_ID
    shelter out of its job."""
    try:
        with procfs.ProcDir(pid) as d:
            if d.stat().starttime != starttime:
                return None
            return d.read("environ")
    except (procfs.ProcessGone, PermissionError, ProcessLookupError):
        return None


def is_pid_namespace_init(pid: int, starttime: int) -> bool:
    """Is this process the init (pid 1) of a PID namespace nested in ours?

    Its ``NSpid:`` line lists its pid in each namespace, outermost first; the
    last is 1 for an init. False for a process that is gone or unreadable.
    """
    if _in_own_pid_namespace(pid):
        # One readlink instead of a dirfd, a stat and a whole status file. A
        # pid reused meanwhile can only make this answer about a process that
        # is no longer the one asked about: that one is gone, and not an init.
        return False
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


_OWN_PIDNS: list[str] = []


def _in_own_pid_namespace(pid: int) -> bool:
    """True if pid's /proc/PID/ns/pid names this process's PID namespace
    (False if it differs or cannot be read: ptrace access is checked)."""
    try:
        if not _OWN_PIDNS:
            _OWN_PIDNS.append(os.readlink(f"{procfs.PROC}/self/ns/pid"))
        return os.readlink(f"{procfs.PROC}/{pid}/ns/pid") == _OWN_PIDNS[0]
    except OSError:
        return False


def capture(pids: Iterable[int]) -> list[tuple[int, int, bytes, bytes]] | None:
    """(pid, pidfd, stat, cmdline) of each pid, read raw, to be parsed later
    (:func:`parse_captured`): for processes that cannot change meanwhile, such
    as a frozen cgroup's, whose identities a caller keeps through their kill.

    Each pidfd is opened before its process's reads, and no directory fd is
    held: a caller that afterwards sees the pidfd not exited
    (:func:`exited_pidfds`) knows the reads described the process the pidfd
    holds, as a live process keeps its pid. Reads are bounded (a command line
    to 64 KiB). Gone processes are left out; None without pidfds.

    The native reader (:mod:`.procscan`) does the same in two threads with
    the GIL released: the caller's tree is frozen meanwhile, so the other
    CPU is idle, and ~26 us of Python a process was most of a cancel's CPU.
    """
    native = procscan.module()
    if native is not None:
        rows: list[tuple[int, int, bytes, bytes]] | None = native.capture(procfs.PROC, pids)
        return rows
    out: list[tuple[int, int, bytes, bytes]] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError as err:
            if err.errno == errno.ESRCH:
                continue
            for _pid, opened, _st, _cmd in out:
                os.close(opened)
            return None
        stat = procfs.read_stat(pid)
        cmdline = _read_bounded(f"{procfs.PROC}/{pid}/cmdline", 65536)
        if stat:
            out.append((pid, fd, stat, cmdline))
        else:
            os.close(fd)
    return out


def _read_bounded(path: str, limit: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, limit)
    except OSError:
        return b""
    finally:
        os.close(fd)


def parse_captured(stat: bytes, cmdline: bytes) -> ProcessInfo | None:
    """The row :func:`capture` read (None if the stat line is malformed)."""
    try:
        i = info_from_stat(stat)
    except (ValueError, IndexError):
        return None
    # Built anew rather than by replace(), which costs ten times more.
    args = (i.pid, i.ppid, i.pgid, i.sid, i.starttime, i.state, i.comm, i.kernel_thread)
    return ProcessInfo(*args, cmdline=procfs.parse_cmdline(cmdline))


#: Longest command line read for display (the kernel caps argv at a quarter
#: of the stack limit; 1 MiB is more than any shell passes).
SHOWN_CMDLINE_MAX = 1 << 20


def read_shown(pid: int, starttime: int) -> tuple[str, ...] | None:
    """The command line of process (pid, starttime), for display only (no
    pidfd, no dirfd: two opens). Read by path, then /proc/PID/stat: a pid is
    not reused while its process exists, so a stat read afterwards that still
    shows the start time proves the command line was this process's. None if
    it is gone or has exited (a zombie's command line is empty)."""
    chunks: list[bytes] = []
    try:
        fd = os.open(f"{procfs.PROC}/{pid}/cmdline", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            size = 0
            while size < SHOWN_CMDLINE_MAX:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError:
            chunks = []
        finally:
            os.close(fd)
    try:
        rest = procfs.split_stat(procfs.read_stat(pid))[2]
        if rest[0] in (b"Z", b"X") or int(rest[19]) != starttime:
            return None
    except (ValueError, IndexError):
        return None
    return procfs.parse_cmdline(b"".join(chunks))


def exited_pidfds(fds: Iterable[int]) -> set[int]:
    """Those of these pidfds whose process has exited (one poll for all)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ev in poller.poll(0)}


def own_starttime() -> int:
    return procfs.own_starttime()


_BOOT_TIME: list[float] = []


def starttime_to_epoch(starttime: int) -> float:
    if not _BOOT_TIME:
        _BOOT_TIME.append(procfs.boot_time())
    return _BOOT_TIME[0] + starttime / procfs.CLOCK_TICKS


def boot_id() -> str:
    """This boot's id; "" where the kernel has none or never lets us read it
    (a sandbox's /proc: then every record says "" alike). A failure that
    passes (EMFILE) is raised: "" against a record's real id makes it read
    as another boot's, whose supervisor counts as gone (the pruner's strays)."""
    if _boot_id:
        return _boot_id[0]  # it changes with a reboot only
    try:
        # Bytes decoded here: a text open looks the codec up (an import).
        with open(_BOOT_ID, "rb") as f:
            found = f.read(64).strip().decode("ascii")
    except (FileNotFoundError, PermissionError, UnicodeDecodeError):
        return ""
    if found:
        _boot_id.append(found)
    return found


_boot_id: list[str] = []


# -- handles: pidfds -----------------------------------------------------------


def open_process(pid: int, starttime: int | None) -> tuple[int, int] | None:
    """(start time, pidfd) for pid if it (still) has the given start time.

    The pidfd is opened while a /proc/PID dirfd is held: if the dirfd still
    reads the same start time afterwards, the pid had not been reused when the
    pidfd was made (:func:`open_process_info`).
    """
    opened = open_process_info(pid, starttime, ())
    return None if opened is None else (opened[0].starttime, opened[1])


def open_process_info(
    pid: int, starttime: int | None, fields: Collection[str]
) -> tuple[ProcessInfo, int] | None:
    """:func:`open_process` and :func:`read_process` through one dirfd: the
    row (with ``fields``) and a pidfd of the process it describes, or None.

    A read through the dirfd fails once its process is reaped, so the field
    reads that follow ``pidfd_open`` prove the pid was not reused before it.
    One directory open instead of three: a 1000-process tree is adopted in
    a third of the time.
    """
    try:
        with procfs.ProcDir(pid) as d:
            st = d.stat()
            if starttime is not None and st.starttime != starttime:
                return None
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as err:
                if err.errno == errno.ESRCH:
                    return None
                if err.errno in procfs.OUT_OF_DESCRIPTORS:
                    raise  # not a kernel without pidfds
                # No pidfd support: the dirfd itself is accepted by
                # pidfd_send_signal (Linux >= 5.1), keep a dup of it.
                pidfd = os.dup(d.fd)
                _dirfd_handles[0] = True
            try:
                info = _read_info(d, fields, st if fields else d.stat())
                if info.starttime != st.starttime:
                    raise procfs.ProcessGone(pid)
            except (procfs.ProcessGone, PermissionError, ProcessLookupError):
                os.close(pidfd)
                return None
            except BaseException:
                os.close(pidfd)  # EMFILE on a field's read: not ours to keep
                raise
            return info, pidfd
    except (procfs.ProcessGone, PermissionError, ProcessLookupError):
        return None


def send_signal(pid: int, starttime: int, fd: int, sig: int) -> Delivery:
    if fd < 0:
        return Delivery.GONE
    try:
        _signals.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return Delivery.GONE
    except PermissionError:
        return Delivery.DENIED
    return Delivery.DELIVERED


def exit_event_fd(fd: int) -> int:
    """``fd`` if it polls readable exactly when its process has exited (a
    pidfd), else -1. A /proc/PID dirfd standing in for one polls readable at
    once, as every directory does: polling it would call a live process
    exited."""
    if fd < 0 or not _dirfd_handles[0]:
        return fd
    try:
        return -1 if stat.S_ISDIR(os.fstat(fd).st_mode) else fd
    except OSError:
        return -1


def has_exited(pid: int, starttime: int, fd: int) -> bool:
    if fd < 0:
        return True
    if exit_event_fd(fd) < 0:
        return _dirfd_says_exited(fd)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _dirfd_says_exited(fd: int) -> bool:
    # A /proc dirfd is not pollable: ask the kernel through it. A zombie
    # still takes signal 0, so its state is read too (a pidfd would already
    # poll readable: a zombie counts as exited).
    try:
        _signals.pidfd_send_signal(fd, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    try:
        stat_fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
        try:
            data = os.read(stat_fd, 4096)
        finally:
            os.close(stat_fd)
    except OSError:
        return False
    end = data.rfind(b")")
    return end >= 0 and data[end + 2 : end + 3] == b"Z"
