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

Where the optional native module is built (:mod:`tether._platform.linux.procscan`),
the first pass, the statuses the classification needs and the strays' reads
are one C call each: the same opens and reads without a Python call, path
and bytes object per file, with the GIL released and, on more than one CPU,
by two threads side by side (the reads are the kernel's work). It parses
only well-formed stat lines and hands every other one back to
:func:`parse_stat`, so the table is the same either way. ``tether prune``
begins the first pass in a thread (:func:`scan_started`) before it imports
the rest of the pruner and reads its configuration.
"""

from __future__ import annotations

import os

from tether._platform.linux import procscan
from tether._platform.linux.procfs import (
    CLOCK_TICKS,
    PF_KTHREAD,
    joined_cmdline,
    kernel_thread,
    parse_cgroup_v2,
    split_stat,
)
from tether._records import dataclass, field

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

PROC = "/proc"
_O_FILE = os.O_RDONLY | os.O_CLOEXEC
LOGIN_DEFS = "/etc/login.defs"
#: The uid floor when /etc/login.defs has no UID_MIN (shadow-utils' default).
DEFAULT_UID_MIN = 1000
#: Bytes of a stray's command line read: another user's argv may be
#: megabytes; the listing shows 4096 characters of it (at most 4 bytes each).
CMDLINE_LIMIT = 4 * 4096
#: Strays whose files one native call reads (and holds, ~70 KiB each at most:
#: the command line's bound and its last chunk), and processes whose status.
SHOWN_AT_ONCE = 256
STATUSES_AT_ONCE = 1024


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


def _read(path: str, size: int = 4096, limit: int | None = None) -> bytes:
    """The file, or its first ``limit`` bytes and up to one more chunk."""
    fd = os.open(path, _O_FILE)
    try:
        data = os.read(fd, size)
        if len(data) == size:
            chunks, total = [data], size
            while (limit is None or total < limit) and (chunk := os.read(fd, 65536)):
                chunks.append(chunk)
                total += len(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def uptime() -> float:
    """Seconds since boot (the clock /proc start times count in)."""
    return float(_read(f"{PROC}/uptime").split()[0])


def parse_stat(data: bytes, now: float) -> Proc:
    """A :class:`Proc` from /proc/PID/stat; ``now`` is :func:`uptime` at scan time."""
    pid, comm, f = split_stat(data)
    ppid = int(f[1])
    starttime = int(f[19])
    return Proc(
        pid,
        ppid,
        int(f[2]),
        int(f[3]),
        starttime,
        f[0].decode(),
        comm.decode("utf-8", "surrogateescape"),  # shown through text.visible
        kernel_thread(pid, ppid, int(f[6])),
        (int(f[11]) + int(f[12])) / CLOCK_TICKS,
        now - starttime / CLOCK_TICKS,
    )


def _line(data: bytes, key: bytes) -> bytes | None:
    """The rest of the line that starts with ``key``, or None."""
    if data.startswith(key):
        i = 0
    else:
        i = data.find(b"\n" + key)
        if i < 0:
            return None
        i += 1
    end = data.find(b"\n", i)
    return data[i + len(key) : end if end >= 0 else len(data)]


def parse_status(data: bytes) -> tuple[tuple[int, int, int, int], tuple[int, ...]]:
    """(ruid, euid, suid, fsuid) and the supplementary gids from /proc/PID/status."""
    uid_line = _line(data, b"Uid:")
    if uid_line is None:
        raise ValueError("no Uid: line")
    r, e, s, f = (int(x) for x in uid_line.split()[:4])
    groups_line = _line(data, b"Groups:")
    groups = tuple(int(x) for x in groups_line.split()) if groups_line else ()
    return (r, e, s, f), groups


@dataclass
class Table:
    """Every process found by one scan, and the entries that could not be read."""

    procs: dict[int, Proc]
    unreadable: dict[int, str]  # pid -> why
    now: float  # uptime at scan time
    _by_sid: dict[int, list[int]] | None = field(default=None, repr=False)
    _children: dict[int, list[int]] | None = field(default=None, repr=False)

    def in_sessions(self, sids: frozenset[int]) -> list[int]:
        """Pids of the processes in any of these sessions."""
        if self._by_sid is None:
            by_sid: dict[int, list[int]] = {}
            for p in self.procs.values():
                by_sid.setdefault(p.sid, []).append(p.pid)
            self._by_sid = by_sid
        return [pid for sid in sids for pid in self._by_sid.get(sid, ())]

    def children(self) -> dict[int, list[int]]:
        """ppid -> child pids (computed once)."""
        if self._children is None:
            kids: dict[int, list[int]] = {}
            for p in self.procs.values():
                kids.setdefault(p.ppid, []).append(p.pid)
            self._children = kids
        return self._children

    def load_status(self, proc: Proc) -> bool:
        """Fill in ``uids`` and ``groups``; False (and noted) if they cannot be read."""
        if proc.uids is not None:
            return True
        native = procscan.module()
        try:
            if native is not None:
                got = native.read_status(PROC, proc.pid)
                # Parsed, or the bytes its strict parser left to parse_status.
                proc.uids, proc.groups = parse_status(got) if type(got) is bytes else got
            else:
                proc.uids, proc.groups = parse_status(_read(f"{PROC}/{proc.pid}/status", 8192))
        except FileNotFoundError:
            return False  # exited since the first pass
        except OSError as err:
            self.unreadable[proc.pid] = f"/proc/{proc.pid}/status: {err.strerror}"
            return False
        except ValueError as err:
            self.unreadable[proc.pid] = f"/proc/{proc.pid}/status: unexpected contents ({err})"
            return False
        return True

    def load_statuses(self, procs: Iterable[Proc]) -> None:
        """:meth:`load_status` of many at once, where the native module reads
        them side by side; what it cannot settle (an error, a status its
        parser leaves to Python's) is left to :meth:`load_status`, which then
        reads and says it as it always does."""
        native = procscan.module()
        if native is None:
            return
        todo = [p for p in procs if p.uids is None]
        for first in range(0, len(todo), STATUSES_AT_ONCE):
            batch = todo[first : first + STATUSES_AT_ONCE]
            for proc, got in zip(
                batch, native.read_statuses(PROC, [p.pid for p in batch]), strict=True
            ):
                if type(got) is tuple:
                    proc.uids, proc.groups = got


def scan() -> Table:
    """Pass one: /proc/PID/stat of every process (status is read later, on demand)."""
    native = procscan.module()
    if native is not None:
        return _scan_native(native)
    now = uptime()
    procs: dict[int, Proc] = {}
    unreadable: dict[int, str] = {}
    proc_fd = os.open(PROC, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    op, rd, cl = os.open, os.read, os.close
    try:
        for name in os.listdir(proc_fd):
            if not name.isdigit():
                continue
            try:
                fd = op(name + "/stat", _O_FILE, dir_fd=proc_fd)
                try:
                    data = rd(fd, 4096)
                finally:
                    cl(fd)
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
    finally:
        cl(proc_fd)
    return Table(procs, unreadable, now)


def _scan_native(native: Any) -> Table:
    """:func:`scan` through the native module."""
    now = uptime()
    return _native_table(native.scan(PROC, now, CLOCK_TICKS, PF_KTHREAD), now)


def _native_table(items: list[Any], now: float) -> Table:
    """The table of the native module's rows, and what it leaves to
    :func:`parse_stat` (or an error number), in directory order."""
    procs: dict[int, Proc] = {}
    unreadable: dict[int, str] = {}
    for item in items:
        if len(item) == 10:
            procs[item[0]] = Proc(*item)
            continue
        name, what = item
        if type(what) is int:
            unreadable[name] = f"/proc/{name}/stat: {os.strerror(what)}"
            continue
        try:
            proc = parse_stat(what, now)
        except (ValueError, IndexError):
            unreadable[name] = f"/proc/{name}/stat: unexpected contents"
            continue
        procs[proc.pid] = proc
    return Table(procs, unreadable, now)


def scan_started() -> Callable[[], Table]:
    """:func:`scan`, begun now: the function that returns its table once it is done.

    With the native module the scan runs in a thread, and its reads (nearly
    all of its time, the kernel's) with the GIL released: a command that has
    modules to import and files to read before it needs the table overlaps
    them with the scan. The table is the same as :func:`scan`'s, and it is
    complete when the function returns (job lists read after it still see a
    job that started during the scan). Without the module, or where no
    thread can start (RLIMIT_NPROC), the scan runs when the table is asked for.
    """
    native = procscan.module()
    if native is None:
        return scan
    import _thread

    done = _thread.allocate_lock()
    done.acquire()
    result: list[Any] = []

    def run() -> None:
        try:
            now = uptime()
            result.append((native.scan(PROC, now, CLOCK_TICKS, PF_KTHREAD), now))
        except BaseException as err:  # handed to the caller, raised there
            result.append(err)
        finally:
            done.release()

    try:
        _thread.start_new_thread(run, ())
    except RuntimeError:  # can't start new thread
        return scan

    def finish() -> Table:
        # Blocks until the thread has its answer; then open for later calls.
        done.acquire()
        done.release()
        got = result[0]
        if isinstance(got, BaseException):
            raise got
        return _native_table(*got)

    return finish


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


def read_shown(pid: int, starttime: int) -> tuple[str | None, str | None] | None:
    """(command line, cgroup v2 path) of the process (pid, starttime), for the
    listing; None if it is gone. A missing part is None (a zombie has no
    command line).

    Read by path, then /proc/PID/stat: the process held this pid since the
    scan, and a pid is not reused while its process exists, so a stat that
    still shows its start time proves both reads were of it. Three opens, no
    directory fd (this runs once per stray).
    """
    native = procscan.module()
    try:
        if native is not None:
            cmdline, cgroup, stat = native.read_shown(PROC, pid, CMDLINE_LIMIT)
        else:
            cmdline = _read(f"{PROC}/{pid}/cmdline", limit=CMDLINE_LIMIT)
            cgroup = _read(f"{PROC}/{pid}/cgroup")
            stat = _read(f"{PROC}/{pid}/stat")
        if int(split_stat(stat)[2][19]) != starttime:
            return None
    except (OSError, ValueError, IndexError):
        return None
    return joined_cmdline(cmdline), parse_cgroup_v2(cgroup)


def read_shown_all(
    identities: Sequence[tuple[int, int]],
) -> list[tuple[str | None, str | None] | None]:
    """:func:`read_shown` of each (pid, starttime), in order; with the native
    module in one call that reads them side by side (each process's three
    files in their order, stat last, by one thread)."""
    native = procscan.module()
    if native is None:
        return [read_shown(pid, starttime) for pid, starttime in identities]
    out: list[tuple[str | None, str | None] | None] = []
    for first in range(0, len(identities), SHOWN_AT_ONCE):
        batch = identities[first : first + SHOWN_AT_ONCE]
        got = native.read_shown_many(PROC, [pid for pid, _ in batch], CMDLINE_LIMIT)
        out.extend(_shown(batch, got))
    return out


def _shown(
    identities: Sequence[tuple[int, int]], got: list[Any]
) -> list[tuple[str | None, str | None] | None]:
    """What read_shown_many read, as :func:`read_shown` gives it."""
    out: list[tuple[str | None, str | None] | None] = []
    for (_pid, starttime), files in zip(identities, got, strict=True):
        if type(files) is int:  # an errno: read_shown's OSError
            out.append(None)
            continue
        cmdline, cgroup, stat = files
        try:
            if int(split_stat(stat)[2][19]) != starttime:
                out.append(None)
                continue
        except (ValueError, IndexError):
            out.append(None)
            continue
        out.append((joined_cmdline(cmdline), parse_cgroup_v2(cgroup)))
    return out
