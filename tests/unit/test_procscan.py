"""The pruner's native /proc scan (_procscan.c) against its Python scan.

The native way must give the same table, the same errors and the same order
as the Python one, on a fake /proc made of hostile stat lines (what a process
can put in its comm, and what the strict C parser must hand back to Python)
and on the real one. Without the module built these tests skip, and the rest
of the suite runs the Python way; TETHER_NO_NATIVE_PROCSCAN=1 runs the whole
suite the Python way with it built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tether._platform.linux import procscan
from tether.prune import scan
from tether.prune.classify import PruneOptions, plan

NATIVE = procscan.module() if procscan.use_native else procscan._load()
needs_native = pytest.mark.skipif(NATIVE is None, reason="the native _procscan is not built")

TAIL = b" 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"


def stat_line(
    pid: bytes = b"4242",
    comm: bytes = b"sleep",
    state: bytes = b"S",
    ppid: bytes = b"1",
    flags: bytes = b"4194560",
    utime: bytes = b"150",
    start: bytes = b"1000",
    tail: bytes = TAIL,
) -> bytes:
    return (
        pid + b" (" + comm + b") " + state + b" " + ppid + b" 4242 4242 0 -1 " + flags
        + b" 90 0 0 0 " + utime + b" 50 0 0 20 0 1 0 " + start + tail
    )  # fmt: skip


#: Stat lines the C parser takes, and ones it must hand to the Python parser
#: (which takes or refuses them): each guard of _procscan.c's parse().
HOSTILE = [
    stat_line(),
    stat_line(comm=b"a) b (c)"),  # comm ends at the last ") "
    stat_line(comm=b") ) )"),
    stat_line(comm=b"x\n) S 1 2 3"),  # a forged line inside comm
    # A comm that parses as a whole stat line if cut at its first ") ".
    stat_line(comm=b"x) S 7 7 7 0 -1 0 " + b"0 " * 12 + b"5 6"),
    stat_line(comm=b"\xff\xfe bad utf-8"),  # surrogateescape, both ways
    stat_line(comm=b""),
    stat_line(pid=b"+4242"),  # int() takes it, the C parser does not
    stat_line(pid=b" 4242"),
    stat_line(pid=b""),
    stat_line(pid=b"4_242"),
    stat_line(pid=b"4+2"),  # digits only: int() refuses this
    stat_line(pid=b"9" * 19),  # more digits than the C parser reads
    stat_line(state=b"\xc3\xa9"),  # not ASCII: decode() is Python's call
    stat_line(state=b"\xff"),
    stat_line(state=b""),
    stat_line(ppid=b"-1"),
    stat_line(ppid=b"2"),  # a kernel thread by its parent
    stat_line(flags=b"2097152"),  # PF_KTHREAD
    stat_line(flags=b"x"),
    # Beyond 2**53 a double is not exact: C's (double)n / ticks rounds
    # differently from Python's int / int (so these go to Python).
    stat_line(utime=b"9007199254740995"),
    stat_line(start=b"9007199254740993"),
    stat_line(start=b"9007199254740992"),
    stat_line(start=b"1000\n", tail=b""),  # starttime ends the line: int() strips it
    stat_line(start=b"1000", tail=b""),
    stat_line(tail=b" 7"),
    b"4242 (sleep) S 1 2 3\n",  # too few fields
    b"4242 (sleep)S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21\n",
    b"4242 sleep) S" + TAIL,  # no " ("
    b"no parenthesis at all",
    b")",
    b" (",
    b"\0" * 100,
]


def fake_proc(root: Path, stats: list[bytes]) -> None:
    """A /proc with these stat lines (in directories 100, 101, ...; a line's
    pid 4242 becomes its directory's), its uptime, a
    non-pid entry, a pid without a stat file (exited: skipped), an empty stat
    (reaped: skipped) and one that cannot be read (an error, reported)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "uptime").write_bytes(b"123456.78 1.00\n")
    (root / "self").mkdir()
    (root / "self" / "stat").write_bytes(stat_line())
    for i, line in enumerate(stats):
        data = str(100 + i).encode() + line[4:] if line.startswith(b"4242 (") else line
        (root / str(100 + i)).mkdir()
        (root / str(100 + i) / "stat").write_bytes(data)
    (root / "7").mkdir()  # no stat: gone
    (root / "8").mkdir()
    (root / "8" / "stat").write_bytes(b"")
    (root / "9").mkdir()
    (root / "9" / "stat").mkdir()  # EISDIR on read


def both_ways(monkeypatch: pytest.MonkeyPatch) -> tuple[scan.Table, scan.Table]:
    monkeypatch.setattr(procscan, "use_native", True)
    monkeypatch.setattr(procscan, "_cached", [NATIVE])
    native = scan.scan()
    monkeypatch.setattr(procscan, "use_native", False)
    python = scan.scan()
    return native, python


def assert_same(native: scan.Table, python: scan.Table) -> None:
    assert list(native.procs.items()) == list(python.procs.items())  # order too
    assert native.unreadable == python.unreadable
    assert native.now == python.now


@needs_native
def test_a_fake_proc_of_hostile_stat_lines_gives_the_same_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_proc(tmp_path, HOSTILE)
    monkeypatch.setattr(scan, "PROC", str(tmp_path))
    native, python = both_ways(monkeypatch)
    assert_same(native, python)
    # The cases above hit both ways (else they test nothing).
    rows = {line: native.procs.get(100 + i) for i, line in enumerate(HOSTILE)}
    assert rows[stat_line()].comm == "sleep"
    assert rows[stat_line(comm=b"a) b (c)")].comm == "a) b (c)"
    assert rows[stat_line(comm=b"\xff\xfe bad utf-8")].comm == "\udcff\udcfe bad utf-8"
    assert rows[stat_line(ppid=b"2")].kernel_thread
    assert rows[stat_line(flags=b"2097152")].kernel_thread
    assert not rows[stat_line()].kernel_thread
    assert native.unreadable[9] == "/proc/9/stat: Is a directory"
    bad = 100 + HOSTILE.index(b")")
    assert native.unreadable[bad] == f"/proc/{bad}/stat: unexpected contents"
    assert 7 not in native.unreadable and 8 not in native.unreadable


def test_the_python_way_takes_what_the_c_parser_hands_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a raw row means: the Python parser decides it (with or without C).
    fake_proc(tmp_path, HOSTILE)
    monkeypatch.setattr(scan, "PROC", str(tmp_path))
    monkeypatch.setattr(procscan, "use_native", False)
    table = scan.scan()
    assert table.procs[4242 + 0].pid == 4242  # "+4242" and " 4242" parse as 4242 too
    assert table.procs[int("9" * 19)].starttime == 1000
    assert table.procs[101].comm == "a) b (c)"


@pytest.mark.skipif(NATIVE is None, reason="the native _procscan is not built")
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stats=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.builds(
                stat_line,
                pid=st.sampled_from([b"1", b"4242", b"+1", b"", b"x", b"9" * 20]),
                comm=st.binary(max_size=20),
                state=st.binary(min_size=0, max_size=2),
                ppid=st.sampled_from([b"0", b"1", b"2", b"-2", b"07", b" 3"]),
                flags=st.sampled_from([b"0", b"2097152", b"2097153", b"1e3"]),
                start=st.sampled_from([b"0", b"1", b"1\n", b"18446744073709551615"]),
                tail=st.sampled_from([TAIL, b"", b" ", b"\n"]),
            ),
        ),
        max_size=6,
    )
)
@example(stats=[stat_line(comm=b") 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20")])
def test_any_stat_lines_give_the_same_table(
    stats: list[bytes], tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path_factory.mktemp("proc")
    fake_proc(root, stats)
    monkeypatch.setattr(scan, "PROC", str(root))
    assert_same(*both_ways(monkeypatch))


@needs_native
def test_the_real_proc_gives_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes of ours with hostile names, in both scans of the live /proc."""
    names = [b"a) b (c", b"x\n) Z 1", b"\xff) ", b"plain"]
    code = (
        "import ctypes, sys, time\n"
        "ctypes.CDLL(None).prctl(15, bytes.fromhex(sys.argv[1]), 0, 0, 0)\n"
        "print(flush=True)\ntime.sleep(60)\n"
    )
    kids = [
        subprocess.Popen([sys.executable, "-c", code, n.hex()], stdout=subprocess.PIPE)
        for n in names
    ]
    try:
        for k in kids:
            assert k.stdout is not None and k.stdout.readline() == b"\n"
        before = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        native, python = both_ways(monkeypatch)
        after = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        for k, name in zip(kids, names, strict=True):
            row = native.procs[k.pid]
            assert row.comm == name.decode("utf-8", "surrogateescape")
            other = python.procs[k.pid]
            # Both took the same process (its state and CPU time move).
            assert (row.pid, row.ppid, row.pgid, row.sid, row.starttime, row.comm) == (
                other.pid, other.ppid, other.pgid, other.sid, other.starttime, other.comm
            )  # fmt: skip
        me = native.procs[os.getpid()]
        assert me.ppid == os.getppid() and me.sid == os.getsid(0) and me.pgid == os.getpgid(0)
        assert native.procs[2].kernel_thread or 2 not in native.procs
        # Every process there before the first scan and after the second is
        # in both (others may come and go between the scans on a busy node).
        stable = before & after
        assert stable <= native.procs.keys() and stable <= python.procs.keys()
    finally:
        for k in kids:
            k.kill()
            k.wait()
            assert k.stdout is not None
            k.stdout.close()


@needs_native
def test_read_shown_native_equals_python(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print(flush=True); time.sleep(60)",
         *(["x" * 100_000] * 3), "\x1b]0;t\x07"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == b"\n"
        start = scan.scan().procs[child.pid].starttime
        shown = {}
        for way in (True, False):
            monkeypatch.setattr(procscan, "use_native", way)
            monkeypatch.setattr(procscan, "_cached", [NATIVE])
            shown[way] = (
                scan.read_shown(child.pid, start),
                scan.read_shown(child.pid, start + 1),
                scan.read_shown(2**22 + 1, 0),
            )
        assert shown[True] == shown[False]
        cmdline, cgroup = shown[True][0] or (None, None)
        assert cgroup is not None and cgroup.startswith("/")
        assert cmdline is not None and cmdline.startswith(sys.executable + " -c import time")
        assert len(cmdline) < 4 * 4096 + 65536  # bounded: not the 300 kB of argv
        assert shown[True][1:] == (None, None)
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()


@needs_native
def test_plans_are_the_same_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole decision over a fake /proc (stat and status files)."""
    lines = [stat_line(pid=str(100 + i).encode(), comm=b"w) (" + bytes([65 + i])) for i in range(6)]
    lines[3] = stat_line(pid=b"103", state=b"Z")
    lines[4] = stat_line(pid=b"104", ppid=b"103")
    fake_proc(tmp_path, lines)
    for i in range(6):
        uid = b"2000" if i != 5 else b"0"
        (tmp_path / str(100 + i) / "status").write_bytes(
            b"Name:\tw\nUid:\t" + b"\t".join([uid] * 4) + b"\nGroups:\t5 6\n"
        )
    monkeypatch.setattr(scan, "PROC", str(tmp_path))
    options = PruneOptions(min_uid=1000, min_age=0.0, include_ssh=True)
    plans = {}
    for way in (True, False):
        monkeypatch.setattr(procscan, "use_native", way)
        monkeypatch.setattr(procscan, "_cached", [NATIVE])
        p = plan(options, [], system_slice="/nonexistent", verbose=True)
        plans[way] = (p.strays, p.exempt, p.exempt_users, p.unreadable, p.scanned)
    assert plans[True] == plans[False]
    assert [s.pid for s in plans[True][0]] == [100, 101, 102, 104]


def test_a_stale_or_foreign_build_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    class Fake:
        ABI = procscan.ABI
        SOURCE_CRC = -1

    from tether._platform import linux

    monkeypatch.setitem(sys.modules, "tether._platform.linux._procscan", Fake)
    monkeypatch.setattr(linux, "_procscan", Fake, raising=False)
    assert procscan._load() is None  # built from another source
    source = Path(procscan.__file__).with_name("_procscan.c").read_bytes()
    Fake.SOURCE_CRC = zlib.crc32(source)
    assert procscan._load() is Fake
    Fake.ABI = procscan.ABI + 1
    assert procscan._load() is None
    monkeypatch.setattr(procscan, "use_native", False)
    assert procscan.module() is None


def test_the_switch_turns_the_native_way_off() -> None:
    code = (
        "from tether._platform.linux import procscan\n"
        "from tether.prune import scan\n"
        "scan.scan()\n"
        "print(procscan.use_native, procscan.module())\n"
    )
    env = dict(os.environ, TETHER_NO_NATIVE_PROCSCAN="1")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.stdout == "False None\n", done
    env["TETHER_NO_NATIVE_PROCSCAN"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.stdout.startswith("True "), done
    assert (done.stdout == "True None\n") == (NATIVE is None)


STATUSES = [
    b"Name:\tx\nUid:\t1001\t1002\t1003\t1004\nGid:\t5\t5\t5\t5\nGroups:\t27 64123 \n",
    b"Uid:\t1\t2\t3\t4\nGroups:\n",
    b"Uid:\t1\t2\t3\t4\n",  # no Groups line
    b"Uid:\t1\t2\t3\t4\tx\nGroups:\t1\n",  # a fifth word: split()[:4] ignores it
    b"Uid:\t1\t2\t3\nGroups:\t1\n",  # three uids: unexpected contents
    b"Uid:\t+1\t2\t3\t4\n",  # int() takes "+1", the C parser does not
    b"Uid:\t1\t2\t3\t99999999999\n",  # more digits than the C parser reads
    b"Uid:\t1\t2\t3\t" + b"9" * 19 + b"\n",
    b"Uid:\t1\t2\t3\t4\nGroups:\t1 x 2\n",
    b"Uid:\t1\t2\t3\t4\nGroups:\t1\r2\x0b3\x0c4 \n",  # split()'s other whitespace
    b"XUid:\t0\t0\t0\t0\nUid:\t7\t7\t7\t7\nGroups:\t1\nGroups:\t2\n",  # the first line of each
    b"Name:\tUid:\t0\t0\t0\t0\nUid:\t8\t8\t8\t8\n",
    b"Uid:\t1\xff\t2\t3\t4\n",
    b"Uid:1 2 3 4",  # no newline at the end
    b"",
]


def statuses_both_ways(
    root: Path, statuses: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> dict[bool, list[object]]:
    fake_proc(root, [stat_line(pid=str(100 + i).encode()) for i in range(len(statuses))])
    for i, data in enumerate(statuses):
        (root / str(100 + i) / "status").write_bytes(data)
    monkeypatch.setattr(scan, "PROC", str(root))
    out: dict[bool, list[object]] = {}
    for way in (True, False):
        monkeypatch.setattr(procscan, "use_native", way)
        monkeypatch.setattr(procscan, "_cached", [NATIVE])
        table = scan.scan()
        loaded = [table.load_status(table.procs[100 + i]) for i in range(len(statuses))]
        rows = [
            (table.procs[100 + i].uids, table.procs[100 + i].groups) for i in range(len(statuses))
        ]
        out[way] = [loaded, rows, table.unreadable]
    return out


@needs_native
def test_status_files_give_the_same_uids_groups_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = statuses_both_ways(tmp_path, STATUSES, monkeypatch)
    assert got[True] == got[False]
    loaded, rows, unreadable = got[True]
    assert rows[0] == ((1001, 1002, 1003, 1004), (27, 64123))
    assert rows[3] == ((1, 2, 3, 4), (1,)) and rows[9] == ((1, 2, 3, 4), (1, 2, 3, 4))
    assert rows[10] == ((7, 7, 7, 7), (1,)) and rows[11] == ((8, 8, 8, 8), ())
    assert (
        unreadable[104]
        == "/proc/104/status: unexpected contents (not enough values to unpack (expected 4, got 3))"
    )
    assert loaded[5] and rows[5][0] == (1, 2, 3, 4)


@pytest.mark.skipif(NATIVE is None, reason="the native _procscan is not built")
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    statuses=st.lists(
        st.lists(
            st.sampled_from(
                [b"Uid:", b"Groups:", b"\t", b" ", b"\n", b"1", b"0", b"+", b"x", b"\r", b"\xff"]
            ),
            max_size=24,
        ).map(b"".join),
        min_size=1,
        max_size=4,
    )
)
def test_any_status_gives_the_same_uids_groups_and_errors(
    statuses: list[bytes], tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = statuses_both_ways(tmp_path_factory.mktemp("proc"), statuses, monkeypatch)
    assert got[True] == got[False]


class FakeNative:
    """A stand-in for _procscan whose scan waits for ``release`` (or raises ``error``)."""

    def __init__(self, rows: list[tuple[object, ...]], error: BaseException | None = None) -> None:
        self.rows = rows
        self.error = error
        self.release = threading.Event()
        self.threads: list[int] = []

    def scan(self, proc: str, now: float, ticks: float, pf_kthread: int) -> list[object]:
        self.threads.append(threading.get_ident())
        assert self.release.wait(30)
        if self.error is not None:
            raise self.error
        return list(self.rows)


def use_fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeNative) -> None:
    fake_proc(tmp_path, [])
    monkeypatch.setattr(scan, "PROC", str(tmp_path))
    monkeypatch.setattr(procscan, "use_native", True)
    monkeypatch.setattr(procscan, "_cached", [fake])


ROW = (4242, 1, 4242, 4242, 1000, "S", "sleep", False, 2.0, 3.5)


def test_a_started_scan_is_complete_when_its_table_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # plan() reads the job lists after the table is returned: the table must
    # be the whole scan, however long the scan thread takes.
    fake = FakeNative([ROW])
    use_fake(monkeypatch, tmp_path, fake)
    finish = scan.scan_started()
    threading.Timer(0.3, fake.release.set).start()
    table = finish()
    assert fake.threads and fake.threads[0] != threading.get_ident()  # in a thread
    assert list(table.procs) == [4242] and table.procs[4242] == scan.Proc(*ROW)
    assert table.now == 123456.78
    assert finish().procs == table.procs  # and again, without waiting


def test_an_error_of_a_started_scan_is_raised_where_the_table_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeNative([], error=PermissionError(13, "Permission denied"))
    use_fake(monkeypatch, tmp_path, fake)
    finish = scan.scan_started()
    fake.release.set()
    with pytest.raises(PermissionError):
        finish()


def test_a_scan_that_cannot_have_a_thread_runs_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RLIMIT_NPROC reached (a user's prune on a node full of their strays).
    import _thread

    def no_thread(*_a: object) -> int:
        raise RuntimeError("can't start new thread")

    fake = FakeNative([ROW])
    fake.release.set()
    use_fake(monkeypatch, tmp_path, fake)
    monkeypatch.setattr(_thread, "start_new_thread", no_thread)
    finish = scan.scan_started()
    assert not fake.threads  # nothing began
    assert list(finish().procs) == [4242]
    assert fake.threads == [threading.get_ident()]


@needs_native
def test_a_started_scan_gives_the_table_of_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_proc(tmp_path, HOSTILE)
    monkeypatch.setattr(scan, "PROC", str(tmp_path))
    monkeypatch.setattr(procscan, "use_native", True)
    monkeypatch.setattr(procscan, "_cached", [NATIVE])
    assert_same(scan.scan_started()(), scan.scan())
    # Without the module there is nothing to start: the table is scan()'s, asked for.
    monkeypatch.setattr(procscan, "use_native", False)
    assert scan.scan_started() is scan.scan


@needs_native
def test_the_native_scan_lets_other_threads_run_while_it_reads(tmp_path: Path) -> None:
    """The reads run with the GIL released (what a started scan overlaps
    with). A stat file that is a FIFO holds the scan in its open and read
    until this test's main thread writes it: a scan holding the GIL there
    would never let the writer run (the child is killed at the timeout)."""
    fake_proc(tmp_path, [stat_line(pid=b"100")])
    fifo = tmp_path / "100" / "stat"
    fifo.unlink()
    os.mkfifo(fifo)
    code = (
        "import os, sys, threading\n"
        "from tether._platform.linux import procscan\n"
        "native = procscan._load()\n"
        "got = []\n"
        "t = threading.Thread(target=lambda: got.append(native.scan(sys.argv[1], 0.0, 100.0, 0)))\n"
        "t.start()\n"
        "fd = os.open(sys.argv[2], os.O_WRONLY)\n"
        "os.write(fd, bytes.fromhex(sys.argv[3]))\n"
        "os.close(fd)\n"
        "t.join()\n"
        "print(sorted(row[0] for row in got[0] if len(row) == 10))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(fifo), stat_line(pid=b"100").hex()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout == "[100]\n", done


@needs_native
@pytest.mark.parametrize("at_once", [1024, 5])
def test_statuses_read_at_once_are_what_each_read_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_once: int
) -> None:
    monkeypatch.setattr(scan, "STATUSES_AT_ONCE", at_once)
    fake_proc(tmp_path, [stat_line(pid=str(100 + i).encode()) for i in range(len(STATUSES))])
    for i, data in enumerate(STATUSES):
        (tmp_path / str(100 + i) / "status").write_bytes(data)
    (tmp_path / "9" / "status").mkdir()  # EISDIR on read
    # Enough pids for the reads to be shared by two threads, in this order.
    pids = [100 + i for i in range(len(STATUSES))] * 8 + [7, 9, 100]
    assert NATIVE is not None
    one_by_one: list[object] = []
    for pid in pids:
        try:
            one_by_one.append(NATIVE.read_status(str(tmp_path), pid))
        except OSError as err:
            one_by_one.append(err.errno)
    assert NATIVE.read_statuses(str(tmp_path), pids) == one_by_one
    assert one_by_one[-3:] == [2, 21, ((1001, 1002, 1003, 1004), (27, 64123))]
    # load_statuses settles what it can; load_status then reads the rest as ever.
    monkeypatch.setattr(scan, "PROC", str(tmp_path))
    for way in (True, False):
        monkeypatch.setattr(procscan, "use_native", way)
        monkeypatch.setattr(procscan, "_cached", [NATIVE])
        table = scan.scan()
        procs = [table.procs[100 + i] for i in range(len(STATUSES))]
        table.load_statuses(procs)
        assert (procs[0].uids is not None) == way  # read at once only natively
        assert procs[4].uids is None  # unexpected contents: left to load_status
        loaded = [table.load_status(p) for p in procs]
        rows = [(p.uids, p.groups) for p in procs]
        if way:
            native = (loaded, rows, dict(table.unreadable))
    assert native == (loaded, rows, table.unreadable)


@needs_native
@pytest.mark.parametrize("at_once", [256, 4])
def test_strays_shown_at_once_are_what_each_read_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_once: int
) -> None:
    monkeypatch.setattr(scan, "SHOWN_AT_ONCE", at_once)
    fake_proc(tmp_path, [stat_line(pid=str(100 + i).encode()) for i in range(30)])
    for i in range(30):
        d = tmp_path / str(100 + i)
        (d / "cmdline").write_bytes(b"x\0" * (i * 5000) + b"\x1b]0;t\x07\0")
        (d / "cgroup").write_bytes(b"0::/a\n" if i % 2 else b"1:x:/b\n0::/c\n")
    (tmp_path / "101" / "cgroup").unlink()  # gone between two reads
    (tmp_path / "102" / "stat").write_bytes(b"bad")
    (tmp_path / "9" / "cmdline").write_bytes(b"a\0")
    (tmp_path / "9" / "cgroup").write_bytes(b"0::/\n")
    identities = [(100 + i, 1000) for i in range(30)] + [(103, 999), (7, 1), (9, 1)]
    monkeypatch.setattr(scan, "PROC", str(tmp_path))
    got = {}
    for way in (True, False):
        monkeypatch.setattr(procscan, "use_native", way)
        monkeypatch.setattr(procscan, "_cached", [NATIVE])
        got[way] = scan.read_shown_all(identities)
        assert got[way] == [scan.read_shown(pid, start) for pid, start in identities]
    assert got[True] == got[False]
    assert got[True][0] == ("\x1b]0;t\x07", "/c")
    assert got[True][3] is not None and len(got[True][3][0] or "") < 4 * 4096 + 65536
    assert got[True][1] is None and got[True][2] is None and got[True][-3:] == [None] * 3


@needs_native
def test_a_strays_files_are_read_in_their_order(tmp_path: Path) -> None:
    """cmdline, cgroup, then stat: the stat read last proves the other two
    were of the process with that start time. Each file is a FIFO the test
    writes in that order: a reader that opened them in another order would
    wait for a writer that waits for it (the child is killed at the timeout)."""
    fake_proc(tmp_path, [stat_line(pid=b"100")])
    d = tmp_path / "100"
    (d / "stat").unlink()
    for name in ("cmdline", "cgroup", "stat"):
        os.mkfifo(d / name)
    code = (
        "import os, sys, threading\n"
        "from tether._platform.linux import procscan\n"
        "native = procscan._load()\n"
        "got = []\n"
        "t = threading.Thread(\n"
        "    target=lambda: got.append(native.read_shown_many(sys.argv[1], [100], 4096)))\n"
        "t.start()\n"
        "for name, data in (('cmdline', b'a\\0'), ('cgroup', b'0::/x\\n'),\n"
        "                   ('stat', bytes.fromhex(sys.argv[2]))):\n"
        "    fd = os.open(os.path.join(sys.argv[1], '100', name), os.O_WRONLY)\n"
        "    os.write(fd, data)\n"
        "    os.close(fd)\n"
        "t.join()\n"
        "print(got[0][0][:2])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), stat_line(pid=b"100").hex()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout == "(b'a\\x00', b'0::/x\\n')\n", done


def test_a_module_not_found_for_want_of_descriptors_is_looked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The import of _procscan lists its package's directory: at the fd
    limit that raises OSError (EMFILE), as a cancel at the limit showed.
    That is no answer to "is it built": nothing is cached, the next call
    loads it."""
    calls = []

    def out_of_fds() -> object:
        calls.append(1)
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(procscan, "use_native", True)
    monkeypatch.setattr(procscan, "_cached", [])
    monkeypatch.setattr(procscan, "_load", out_of_fds)
    assert procscan.module() is None
    assert procscan._cached == []
    monkeypatch.setattr(procscan, "_load", lambda: NATIVE)
    assert procscan.module() is NATIVE
    assert calls == [1]
