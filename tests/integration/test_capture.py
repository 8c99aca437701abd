"""The native capture of a frozen cgroup's members (_procscan.c's capture)
against the Python one (tether._platform.linux.capture).

Both must give the same rows, in the pids' order, for a frozen tree of this
test's own (in a cgroup of its own, killed through that cgroup): a pid that
is gone is left out, a command line longer than 64 KiB is cut at 64 KiB,
and each pidfd is one of its process. Neither may leak an fd: not when a
pidfd_open fails part way (None), nor when the fd limit is reached.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import cgroup_writable, wait_for
from tether._platform.linux import capture, cgroupfs, procscan

NATIVE = procscan.module() if procscan.use_native else procscan._load()
needs_native = pytest.mark.skipif(
    NATIVE is None or not hasattr(NATIVE, "capture"), reason="the native _procscan is not built"
)
needs_cgroup = pytest.mark.skipif(not cgroup_writable(), reason="needs cgroup v2 write access")

#: Sleepers the leader starts: more than _procscan.c's PARALLEL_MIN (64), so
#: the native capture reads in two threads.
KIDS = 90
#: The leader's last argument: its command line is longer than the 64 KiB read.
FILLER = "x" * 100_000

_LEADER = (
    "import os, sys\n"
    "kids = [os.posix_spawn('/bin/sleep', ['sleep', '600'], os.environ)"
    " for _ in range(int(sys.argv[2]))]\n"
    "with open(sys.argv[1] + '.tmp', 'w') as f:\n"
    "    f.write(' '.join(map(str, kids)))\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "for _ in kids:\n"
    "    os.wait()\n"
)
#: Enters the cgroup ($0 its cgroup.procs), then becomes the leader.
_SHIM = 'echo 0 >"$0" || exit 125; exec "$@"'

Rows = list[tuple[int, int, bytes, bytes]]


class Tree:
    def __init__(self, cgroup: cgroupfs.JobCgroup, leader: int) -> None:
        self.cgroup = cgroup
        self.leader = leader
        self.pids = cgroup.procs()


@pytest.fixture
def frozen_tree(tmp_path: Path) -> Iterator[Tree]:
    """A leader and KIDS sleepers in a cgroup of this test's, frozen."""
    parent = cgroupfs.probe().parent
    assert parent is not None
    cg = cgroupfs.JobCgroup.create(parent, f"tether-test-capture-{uuid.uuid4().hex[:12]}")
    ready = tmp_path / "ready"
    argv = [sys.executable, "-c", _LEADER, str(ready), str(KIDS), FILLER]
    p = subprocess.Popen(["/bin/sh", "-c", _SHIM, cg.procs_file, *argv], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: ready.exists() or p.poll() is not None, what="the sleepers to start")
        assert p.poll() is None, "the leader did not start"
        assert cg.freeze(timeout=10.0), "the cgroup did not freeze"
        tree = Tree(cg, p.pid)
        assert len(tree.pids) == KIDS + 1
        yield tree
    finally:
        # Everything this test started is in its cgroup: killed through it.
        cg.kill()
        cg.wait_empty(10.0)
        p.wait(10)
        cg.remove(5.0)


def open_fds() -> set[int]:
    """This process's open fds (not the listing's own, closed again)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        fds.add(int(name))
    return fds


def pidfd_pid(fd: int) -> int:
    """The pid a pidfd holds (its fdinfo's "Pid:" line)."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"Pid:"):
                return int(line.split()[1])
    raise AssertionError(f"fd {fd} is not a pidfd")


def capture_both(
    monkeypatch: pytest.MonkeyPatch, pids: list[int]
) -> tuple[Rows | None, Rows | None]:
    """The same pids captured the native way, then the Python way."""
    monkeypatch.setattr(procscan, "use_native", True)
    monkeypatch.setattr(procscan, "_cached", [NATIVE])
    native = capture(pids)
    monkeypatch.setattr(procscan, "use_native", False)
    python = capture(pids)
    return native, python


def close_rows(*captures: Rows | None) -> None:
    for rows in captures:
        for _pid, fd, _stat, _cmdline in rows or ():
            os.close(fd)


def a_gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@needs_native
@needs_cgroup
def test_native_and_python_capture_the_same_rows(
    frozen_tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = a_gone_pid()
    pids = list(frozen_tree.pids)
    pids.insert(len(pids) // 2, gone)
    before = open_fds()
    native, python = capture_both(monkeypatch, pids)
    try:
        assert native is not None and python is not None
        # Each pidfd is new, and of its row's process.
        fds = [fd for _pid, fd, _st, _cmd in native + python]
        assert len(set(fds)) == len(fds) and not set(fds) & before
        assert all(pidfd_pid(fd) == pid for pid, fd, _st, _cmd in native + python)
        # The same rows in the pids' order, without the gone one.
        want = [p for p in pids if p != gone]
        assert [r[0] for r in native] == want
        assert [(p, st, cmd) for p, _fd, st, cmd in native] == [
            (p, st, cmd) for p, _fd, st, cmd in python
        ]
        for pid, _fd, stat, cmdline in native:
            assert stat.startswith(b"%d (" % pid)
            if pid == frozen_tree.leader:
                # Cut at 64 KiB: the whole one is longer.
                assert len(cmdline) == 65536
                assert cmdline.startswith(sys.executable.encode() + b"\0-c\0")
            else:
                assert cmdline == b"sleep\x00600\x00"
        assert open_fds() == before | set(fds)
    finally:
        close_rows(native, python)
    assert open_fds() == before


@needs_native
@needs_cgroup
def test_a_failed_pidfd_open_gives_none_and_closes_every_pidfd(
    frozen_tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pidfd_open(-5) fails with EINVAL (not ESRCH): the capture is given up
    part way, in both threads, and the pidfds opened so far are closed."""
    pids = list(frozen_tree.pids)
    for at in (0, len(pids) // 2, len(pids)):
        before = open_fds()
        native, python = capture_both(monkeypatch, [*pids[:at], -5, *pids[at:]])
        close_rows(native, python)
        assert (native, python) == (None, None)
        assert open_fds() == before


#: What a fake proc directory holds for a pid: (stat, cmdline), None for a
#: missing file, "dir" for a directory in its place (a read error), a number
#: for a stat line of that many bytes.
FAKE: list[tuple[bytes | int | str | None, bytes | str | None]] = [
    (b"%d (ok) S 1 1 1\n", b"ok\0"),
    (4096, b"page\0"),  # a whole page: one read more, which ends it
    (8192, b"pages\0"),  # read on while each read is a whole page
    (8292, b"more\0"),
    (b"", b"empty stat\0"),  # empty: skipped
    (None, b"no stat\0"),  # gone: skipped
    ("dir", b"unreadable stat\0"),  # a read error: skipped
    (b"%d (nocmd) S 1\n", None),  # no command line: empty
    (b"%d (dircmd) S 1\n", "dir"),
    (b"%d (emptycmd) S 1\n", b""),
    (b"%d (long) S 1\n", b"y" * 100_000 + b"\0"),  # cut at 64 KiB
]


def fake_proc(root: Path, pids: list[int]) -> dict[int, tuple[bytes | None, bytes]]:
    """Files for pids[i] as FAKE[i % len(FAKE)] (every tenth pid has no
    directory at all); the rows a capture must give (None: skipped)."""
    want: dict[int, tuple[bytes | None, bytes]] = {}
    for i, pid in enumerate(pids):
        stat, cmdline = FAKE[i % len(FAKE)]
        if isinstance(stat, int):
            head = b"%d (x) S " % pid
            stat = head + b"7" * (stat - len(head))
        if i % 10 == 9:
            want[pid] = (None, b"")
            continue
        d = root / str(pid)
        d.mkdir(parents=True)
        for name, data in (("stat", stat), ("cmdline", cmdline)):
            if data == "dir":
                (d / name).mkdir()
            elif isinstance(data, bytes):
                (d / name).write_bytes(data.replace(b"%d", b"%d" % pid))
        got = stat.replace(b"%d", b"%d" % pid) if isinstance(stat, bytes) else b""
        cmd = cmdline[:65536] if isinstance(cmdline, bytes) else b""
        want[pid] = (got or None, cmd)
    return want


@needs_native
@needs_cgroup
def test_native_reads_as_the_python_reader_reads(
    frozen_tree: Tree, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Real pids (their pidfds) over a proc directory of crafted files: stat
    read while each read is a whole page, an empty or unreadable stat
    skipped, a missing or unreadable command line empty, a long one cut."""
    from tether._platform.linux import procfs

    pids = frozen_tree.pids
    want = fake_proc(tmp_path / "proc", pids)
    monkeypatch.setattr(procfs, "PROC", str(tmp_path / "proc"))
    before = open_fds()
    native, python = capture_both(monkeypatch, pids)
    try:
        assert native is not None and python is not None
        expected = [(p, st, cmd) for p, (st, cmd) in want.items() if st is not None]
        assert [(p, st, cmd) for p, _fd, st, cmd in native] == expected
        assert [(p, st, cmd) for p, _fd, st, cmd in python] == expected
        assert all(pidfd_pid(fd) == pid for pid, fd, _st, _cmd in native)
    finally:
        close_rows(native, python)
    assert open_fds() == before


def free_slots(limit: int, fds: set[int]) -> int:
    """New fds a process with these open can get under RLIMIT_NOFILE ``limit``."""
    return limit - sum(1 for fd in fds if fd < limit)


def limited(free: int) -> int:
    """The soft fd limit that leaves exactly ``free`` fds to open."""
    fds = open_fds()
    return next(n for n in range(1, max(fds) + free + 2) if free_slots(n, fds) == free)


def capture_limited(
    monkeypatch: pytest.MonkeyPatch, pids: list[int], free: int
) -> tuple[Rows | None, Rows | None, set[int]]:
    """capture_both under an fd limit that leaves ``free`` fds; the open fds
    (beyond those before) once the limit is lifted and the rows closed."""
    before = open_fds()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limited(free), hard))
    try:
        native, python = capture_both(monkeypatch, pids)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    close_rows(native, python)
    return native, python, open_fds() - before


@needs_native
@needs_cgroup
@pytest.mark.parametrize("many", [False, True], ids=["one thread", "two threads"])
def test_no_fd_is_left_at_the_fd_limit(
    frozen_tree: Tree, monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    pids = frozen_tree.pids if many else frozen_tree.pids[:10]
    # No fd at all: the first pidfd_open fails (EMFILE), so both give None.
    native, python, leaked = capture_limited(monkeypatch, pids, 0)
    assert (native, python, leaked) == (None, None, set())
    if not many:
        # One fd: every pidfd_open succeeds and every stat open then fails
        # (an empty read, so skipped): both give no row, each pidfd closed.
        native, python, leaked = capture_limited(monkeypatch, pids, 1)
        assert (native, python, leaked) == ([], [], set())
    # A few: which open fails first depends on the two threads' timing; no
    # fd is left whichever it is.
    for free in (2, 3, 5, 9):
        native, python, leaked = capture_limited(monkeypatch, pids, free)
        assert leaked == set()
        for rows in (native, python):
            assert rows is None or len(rows) <= free


def test_capture_uses_the_native_module_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[str, list[int]]] = []

    class Fake:
        @staticmethod
        def capture(proc: str, pids: list[int]) -> Rows:
            asked.append((proc, list(pids)))
            return [(7, 70, b"7 (x) S", b"x\0")]

    monkeypatch.setattr(procscan, "use_native", True)
    monkeypatch.setattr(procscan, "_cached", [Fake])
    assert capture([7, 8]) == [(7, 70, b"7 (x) S", b"x\0")]
    assert asked == [("/proc", [7, 8])]
