"""Read /proc through per-process directory fds.

A ``/proc/PID`` directory fd pins the process it was opened for: once that
process is reaped, every read through the fd fails with ESRCH even if the pid
is reused. Reading through it (and signalling through it, or a pidfd opened
while it was still valid) means what was read and what is signalled are the
same process.
"""

from __future__ import annotations

import errno
import os

from tether._records import dataclass

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

PROC = "/proc"
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_FILE = os.O_RDONLY | os.O_CLOEXEC
#: Bit in /proc/PID/stat ``flags`` marking a kernel thread (include/linux/sched.h).
PF_KTHREAD = 0x00200000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def starttime_between(before_ns: int, after_ns: int) -> int | None:
    """The start time (/proc/PID/stat field 22, clock ticks) of a process this
    one created between two ``CLOCK_BOOTTIME`` readings, when both fall in
    the same tick; None when a tick boundary lies between them.

    The kernel stamps a child's ``start_boottime`` in copy_process(), and
    /proc shows it as that boot-time instant in clock ticks, truncated (both
    shifted by the reader's time namespace, as clock_gettime is): a child made
    within one tick started in it. Read this way it costs no /proc lookup:
    the first open of a new pid's /proc entries is the costly one (~60-300 us
    here, more while the child execs).
    """
    if 1_000_000_000 % CLOCK_TICKS:
        return None
    tick = 1_000_000_000 // CLOCK_TICKS
    first = before_ns // tick
    return first if after_ns // tick == first else None


class ProcessGone(Exception):
    """The process behind a /proc directory has exited and been reaped."""


@dataclass(frozen=True, slots=True)
class Stat:
    """The fields of /proc/PID/stat that tether uses (proc(5))."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int
    flags: int
    starttime: int  # clock ticks since boot: with pid, the process's identity

    @property
    def is_kernel_thread(self) -> bool:
        return kernel_thread(self.pid, self.ppid, self.flags)


def kernel_thread(pid: int, ppid: int, flags: int) -> bool:
    """A kernel thread: PF_KTHREAD, or kthreadd (pid 2) or its child. Every
    parser of a stat line asks here (the native reader, _procscan.c, takes
    the same rule)."""
    return bool(flags & PF_KTHREAD) or pid == 2 or ppid == 2


def split_stat(data: bytes) -> tuple[int, bytes, list[bytes]]:
    """A /proc/PID/stat line as (pid, comm, the fields after comm): ``f[0]``
    the state ... ``f[19]`` the start time (proc(5) fields 3-22), ``f[20]``
    the rest. comm is anyone's bytes (spaces, parentheses, newlines): it ends
    at the *last* ") ", the pid at the first " ("; the fields are one space
    apart. Every parser of the line goes through here, and the native reader
    (_procscan.c) takes the same rule, so a line that is not the kernel's
    reads alike everywhere. ValueError or IndexError for what is no such line.
    """
    head, _, rest = data.rpartition(b") ")
    lpar = head.index(b" (")
    return int(head[:lpar]), head[lpar + 2 :], rest.split(b" ", 20)


def parse_stat(data: bytes) -> Stat:
    pid, comm, f = split_stat(data)
    return Stat(
        pid=pid,
        comm=comm.decode("utf-8", "replace"),
        state=f[0].decode(),
        ppid=int(f[1]),
        pgid=int(f[2]),
        sid=int(f[3]),
        flags=int(f[6]),
        starttime=int(f[19]),
    )


def _gone(err: OSError) -> bool:
    return err.errno in (errno.ESRCH, errno.ENOENT)


class ProcDir:
    """An open ``/proc/PID`` directory: every read names the same process."""

    __slots__ = ("fd", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.open(f"{PROC}/{pid}", _O_DIR)
        except OSError as err:
            if _gone(err):
                raise ProcessGone(pid) from err
            raise

    def read(self, name: str) -> bytes:
        """Read a whole file such as ``stat`` or ``environ``.

        Raises:
            ProcessGone: the process was reaped since the fd was opened.
            PermissionError: e.g. ``environ`` of another user's process.
        """
        try:
            fd = os.open(name, _O_FILE, dir_fd=self.fd)
        except OSError as err:
            if _gone(err):
                raise ProcessGone(self.pid) from err
            raise
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as err:
            if _gone(err):
                raise ProcessGone(self.pid) from err
            raise
        finally:
            os.close(fd)

    def stat(self) -> Stat:
        data = self.read("stat")
        if not data:
            raise ProcessGone(self.pid)
        return parse_stat(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ProcDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Errors of a /proc/PID read that say only that this process is not one to
#: read: it is gone, or hidden from this user (hidepid).
NOT_READABLE = frozenset({errno.ENOENT, errno.ESRCH, errno.EACCES, errno.EPERM})
#: This process (or the system) is out of descriptors: says nothing of the
#: file or process asked for, which must not read as gone or empty.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def read_stat(pid: int, *, strict: bool = False) -> bytes:
    """One read of /proc/PID/stat (empty if the process is gone or unreadable).

    A single read describes a single process: enough for a stat-only table row.
    ``strict``: an error other than :data:`NOT_READABLE` (EMFILE: this
    process is out of fds) is raised, not an empty read — a table that
    silently lacks a process could call a tree empty.
    """
    try:
        fd = os.open(f"{PROC}/{pid}/stat", _O_FILE)
    except OSError as err:
        if strict and err.errno not in NOT_READABLE:
            raise
        return b""
    try:
        # Generated whole on the first read (seq_file); a page holds it unless
        # comm is absurdly long, so the loop ends after one read in practice.
        data = os.read(fd, 4096)
        while len(data) % 4096 == 0 and data:
            more = os.read(fd, 4096)
            if not more:
                break
            data += more
        return data
    except OSError as err:
        if strict and err.errno not in NOT_READABLE:
            raise
        return b""
    finally:
        os.close(fd)


def pids() -> Iterator[int]:
    """Every thread-group id visible in /proc (processes, not threads)."""
    with os.scandir(PROC) as it:
        for entry in it:
            name = entry.name
            if name.isdigit():
                yield int(name)


def parse_status_uids(data: bytes) -> tuple[int, int, int, int]:
    """(ruid, euid, suid, fsuid) from /proc/PID/status.

    ``status`` is used rather than the directory's owner: a non-dumpable
    (setuid) process's /proc files turn root-owned, its Uid: line does not.
    """
    for line in data.splitlines():
        if line.startswith(b"Uid:"):
            r, e, s, f = (int(x) for x in line.split()[1:5])
            return (r, e, s, f)
    raise ValueError("no Uid: line in status")


def parse_cgroup_v2(data: bytes) -> str | None:
    """The unified-hierarchy path (the ``0::`` line) of /proc/PID/cgroup.

    Lines end where ``bytes.splitlines()`` ends them (``\\r`` too: a cgroup
    path is the user's to name). Without a ``\\r`` they end only at newlines,
    and the line is found without splitting the others (the pruner reads
    thousands of these)."""
    if b"\r" in data:
        for line in data.splitlines():
            if line.startswith(b"0::"):
                return line[3:].decode("utf-8", "surrogateescape")
        return None
    if data.startswith(b"0::"):
        start = 0
    else:
        start = data.find(b"\n0::") + 1
        if start == 0:
            return None
    end = data.find(b"\n", start)
    return data[start + 3 : end if end >= 0 else len(data)].decode("utf-8", "surrogateescape")


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """The arguments of a /proc/PID/cmdline read (empty ones dropped). Decoded
    whole, then split: NUL is never part of a UTF-8 multi-byte sequence, so
    this equals decoding each argument, at a third of the cost."""
    if not data:
        return ()
    argv = data.rstrip(b"\0").decode("utf-8", "surrogateescape").split("\0")
    return tuple([a for a in argv if a])


def joined_cmdline(data: bytes) -> str | None:
    """``" ".join(parse_cmdline(data))``, or None when it has no argument."""
    if data and data[0] and b"\0\0" not in data:
        # No empty argument (no leading or doubled NUL): each NUL but the
        # trailing ones is a separator, and NUL is never inside a UTF-8
        # sequence, so it can become the space after decoding.
        return data.rstrip(b"\0").decode("utf-8", "surrogateescape").replace("\0", " ")
    args = parse_cmdline(data)
    return " ".join(args) if args else None


def boot_time() -> float:
    """System boot time in seconds since the epoch (``btime`` of /proc/stat)."""
    with open(f"{PROC}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def own_starttime() -> int:
    with ProcDir(os.getpid()) as d:
        return d.stat().starttime
