"""cgroup v2 by plain file I/O: find the mount, make a job cgroup, kill, freeze.

tether creates a job's cgroup *inside the cgroup tether itself runs in*: that
is the only subtree a process may manage under systemd's delegation rules, and
it keeps the job visible to whoever supervises tether (an outer tether too).
Only core interface files are used (cgroup.procs, cgroup.kill, cgroup.freeze,
cgroup.events), so no controller needs to be enabled and the "no internal
processes" rule never applies.
"""

from __future__ import annotations

import errno
import os
import select
import time

from tether._platform.linux import procfs
from tether._records import dataclass

_MOUNTINFO = "/proc/self/mountinfo"


def find_cgroup2_mount(mountinfo: str = _MOUNTINFO) -> str | None:
    """Mount point of the cgroup2 filesystem, or None.

    Read from mountinfo rather than assumed: on hybrid layouts the unified
    hierarchy sits at e.g. /sys/fs/cgroup/unified beside v1 controllers.
    """
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    mount_point = left.split(" ")[4]
                    return _unescape_octal(mount_point) if "\\" in mount_point else mount_point
    except (FileNotFoundError, PermissionError):
        # No such file (or never ours to read): no cgroup2 to find. A
        # failure that passes (EMFILE) is raised, not "none mounted": the
        # probe is kept for the process's life (every later job would run
        # without a cgroup, for a reason that is not true), and recovery
        # would ignore a crashed job's cgroup.
        return None
    return None


def _unescape_octal(field: str) -> str:
    """A mountinfo field as the path it names: the kernel writes space, tab,
    newline and backslash as ``\\ooo`` (octal), every other byte as itself
    (a name may hold any UTF-8, or bytes that are not UTF-8)."""
    raw = os.fsencode(field)
    out = bytearray()
    i = 0
    while i < len(raw):
        octal = raw[i + 1 : i + 4]
        if raw[i] == 0x5C and len(octal) == 3 and all(0x30 <= c <= 0x37 for c in octal):
            out.append(int(octal, 8) & 0xFF)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def own_cgroup_path(pid: int | str = "self") -> str | None:
    """This process's path in the unified hierarchy (the ``0::`` line)."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            for line in f:
                if line.startswith(b"0::"):
                    return line[3:].rstrip(b"\n").decode("utf-8", "surrogateescape")
    except OSError as err:
        if err.errno in procfs.NOT_READABLE:
            return None  # no such process, or hidden from us
        raise  # EMFILE: not "outside the unified hierarchy" (see find_cgroup2_mount)
    return None


@dataclass(frozen=True)
class CgroupProbe:
    """Whether a job cgroup can be made here, and if not, why not."""

    parent: str | None
    reason: str


def probe(mount: str | None = None) -> CgroupProbe:
    """Find the directory under which job cgroups can be created."""
    mount = mount if mount is not None else find_cgroup2_mount()
    if mount is None:
        return CgroupProbe(None, "no cgroup2 filesystem is mounted")
    rel = own_cgroup_path()
    if rel is None:
        return CgroupProbe(None, "this process is not in the unified hierarchy")
    parent = os.path.join(mount, rel.lstrip("/"))
    if not os.path.exists(os.path.join(parent, "cgroup.procs")):
        return CgroupProbe(None, f"own cgroup {rel} is not visible under {mount}")
    if not os.path.exists(os.path.join(mount, "cgroup.controllers")) or not os.path.exists(
        os.path.join(parent, "cgroup.procs")
    ):
        return CgroupProbe(None, f"{mount} is not a cgroup2 hierarchy")
    # Moving a process needs write access to cgroup.procs of the common
    # ancestor (our own cgroup) as well as a writable directory to mkdir in.
    if not (
        os.access(parent, os.W_OK) and os.access(os.path.join(parent, "cgroup.procs"), os.W_OK)
    ):
        return CgroupProbe(None, f"{parent} is not writable as uid {os.geteuid()}")
    return CgroupProbe(parent, f"job cgroups under {parent}")


def cgroup_removed(err: OSError) -> bool:
    """The cgroup (or the file) is gone: ENOENT at open, ENODEV for a file
    of a cgroup removed under an open descriptor. The one error of a cgroup
    read that means "holds nothing"."""
    return err.errno in (errno.ENOENT, errno.ENODEV)


class JobCgroup:
    """One job's cgroup: create, enter, kill, freeze, wait for empty, remove."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._events_fd = -1

    @classmethod
    def create(cls, parent: str, name: str) -> JobCgroup:
        path = os.path.join(parent, name)
        os.mkdir(path, 0o755)
        cg = cls(path)
        cg._events_fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        return cg

    def _write(self, name: str, value: str) -> None:
        fd = os.open(os.path.join(self.path, name), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    @property
    def procs_file(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def procs(self) -> list[int]:
        """Pids in this cgroup and every cgroup below it.

        A cgroup removed meanwhile (this one or one below) holds none. Any
        other failure to list one is raised (OSError): EMFILE at the fd
        limit, EACCES. An empty list must mean empty, not unread: the
        capture before cgroup.kill names what it lists, and the pruner
        would take the processes of a job it could not list for strays.
        """
        out: list[int] = []
        # kernfs counts a directory's subdirectories in its link count (2 +
        # subdirs): a job that made no sub-cgroup needs no listing of its files.
        try:
            if os.stat(self.path).st_nlink == 2:
                with open(os.path.join(self.path, "cgroup.procs"), "rb") as f:
                    return [int(x) for x in f.read().split()]
        except OSError as err:
            if not cgroup_removed(err):
                raise
            if not os.path.lexists(self.path):
                return []
            # A sub-cgroup appeared or went between the stat and the open:
            # listed below, directory by directory.

        def unless_removed(err: OSError) -> None:
            if not cgroup_removed(err):
                raise err

        for dirpath, _dirs, _files in os.walk(self.path, onerror=unless_removed):
            try:
                with open(os.path.join(dirpath, "cgroup.procs"), "rb") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError as err:
                if not cgroup_removed(err):
                    raise
        return out

    def events(self) -> dict[str, int]:
        if self._events_fd < 0:
            with open(os.path.join(self.path, "cgroup.events"), "rb") as f:
                data = f.read()
        else:
            data = os.pread(self._events_fd, 4096, 0)
        return {k.decode(): int(v) for k, v in (line.split() for line in data.splitlines())}

    def populated(self) -> bool:
        return self.events().get("populated", 0) == 1

    @property
    def events_fd(self) -> int:
        """Pollable with POLLPRI: kernfs notifies when cgroup.events changes."""
        return self._events_fd

    def kill(self) -> None:
        """SIGKILL every process in the subtree atomically (Linux >= 5.14).

        Unlike a scan-then-kill loop, cgroup.kill also catches processes forked
        while it runs, so fork storms and pid hoppers cannot outrun it.
        """
        self._write("cgroup.kill", "1")

    def has_kill(self) -> bool:
        return os.path.exists(os.path.join(self.path, "cgroup.kill"))

    def freeze(self, timeout: float = 1.0) -> bool:
        """Freeze the subtree and wait (event-driven) until the kernel says frozen."""
        self._write("cgroup.freeze", "1")
        return self._wait_event("frozen", 1, timeout)

    def thaw(self) -> None:
        try:
            self._write("cgroup.freeze", "0")
        except FileNotFoundError:
            pass

    def wait_empty(self, timeout: float) -> bool:
        return self._wait_event("populated", 0, timeout)

    def _wait_event(self, key: str, value: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._events_fd < 0:
            self._events_fd = os.open(
                os.path.join(self.path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC
            )
        poller = select.poll()
        poller.register(self._events_fd, select.POLLPRI)
        while True:
            if self.events().get(key) == value:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(left * 1000)

    def remove(self, timeout: float = 1.0) -> bool:
        """rmdir the cgroup (and empty sub-cgroups the job made), deepest first."""
        if self._events_fd >= 0:
            os.close(self._events_fd)
            self._events_fd = -1
        deadline = time.monotonic() + timeout
        try:
            os.rmdir(self.path)  # the usual case: no sub-cgroup, no walk
            return True
        except OSError:
            pass
        while True:
            try:
                for dirpath, _dirs, _files in os.walk(self.path, topdown=False):
                    os.rmdir(dirpath)
                return True
            except FileNotFoundError:
                return True
            except OSError as err:
                # EBUSY: the kernel has not finished unlinking exited tasks yet.
                if err.errno != errno.EBUSY or time.monotonic() > deadline:
                    return False
                time.sleep(0.01)

    def move(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))
