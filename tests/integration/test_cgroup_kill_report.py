"""What a cgroup KILL reports, against the shortcuts that read it.

The frozen cgroup's rows are read raw before ``cgroup.kill`` and turned into
members after it by a lean parse (only the fields a member needs) instead of
a full table row per process. Each shortcut is held to the full parse here,
and each guard of the adoption (tether's own processes, processes older than
the job, kernel threads, known identities, the pruner's admit check) is
tested on rows built for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, strategies

import tether
from helpers import cgroup_writable, kill_identity, proc_stat, wait_for
from tether._platform.linux import parse_captured, procfs
from tether.membership import Membership, _Captured, _shown, _stat_row
from tether.process import ProcessInfo, starttime_to_epoch

needs_cgroup = pytest.mark.skipif(not cgroup_writable(), reason="needs cgroup v2 write access")

with open("/proc/self/stat", "rb") as _f:
    _OWN_STAT = _f.read()
#: The fields after comm of a real stat line (state first), as a template.
_REST = _OWN_STAT[_OWN_STAT.rindex(b")") + 2 :].split()


def stat_line(
    pid: int, comm: bytes = b"x", *, ppid: int = 1, flags: int = 0, starttime: int = 1000
) -> bytes:
    rest = list(_REST)
    rest[1], rest[6], rest[19] = b"%d" % ppid, b"%d" % flags, b"%d" % starttime
    return b"%d (%s) %s\n" % (pid, comm, b" ".join(rest))


# -- the lean parse is the full parse ------------------------------------


@given(
    strategies.binary(max_size=64)
    | strategies.lists(strategies.sampled_from([b"a", b"\xff", b"\xc3\xa9", b" ", b""])).map(
        b"\0".join
    ),
    strategies.text(max_size=8),
)
def test_a_command_line_shows_as_describe_of_its_arguments(cmdline: bytes, comm: str) -> None:
    info = ProcessInfo(1, 0, 1, 1, 0, "S", comm, cmdline=procfs.parse_cmdline(cmdline))
    assert _shown(cmdline, comm) == info.describe()


@pytest.mark.parametrize("cmdline", [b"a\0\0b\0", b"\0a\0", b"\0\0", b"a b\0c\0\0", b""])
def test_empty_arguments_are_dropped_as_the_full_parse_drops_them(cmdline: bytes) -> None:
    info = ProcessInfo(1, 0, 1, 1, 0, "S", "comm", cmdline=procfs.parse_cmdline(cmdline))
    assert _shown(cmdline, "comm") == info.describe()


@given(
    strategies.binary(min_size=0, max_size=16).filter(lambda c: b"\n" not in c),
    strategies.integers(0, 1 << 22),
    strategies.sampled_from([0, procfs.PF_KTHREAD, 0x40]),
    strategies.integers(0, 1 << 40),
)
def test_the_stat_fields_of_a_member_are_those_of_the_full_row(
    comm: bytes, ppid: int, flags: int, starttime: int
) -> None:
    """comm may hold ")", "(" and spaces: it ends at the last ")"."""
    line = stat_line(4242, comm, ppid=ppid, flags=flags, starttime=starttime)
    info = parse_captured(line, b"")
    assert info is not None
    want = (info.pid, info.ppid, info.starttime, info.comm, info.kernel_thread)
    assert _stat_row(line) == want


@pytest.mark.parametrize("line", [b"", b"12 (x", b"12 (x) S 1", b"x (y) " + b" ".join(_REST)])
def test_a_malformed_stat_line_is_no_row(line: bytes) -> None:
    assert _stat_row(line) is None
    assert parse_captured(line, b"") is None


# -- the guards of adoption ----------------------------------------------


def _fds(count: int) -> list[int]:
    """Distinct fds a row can own (the adoption closes those it turns down)."""
    return [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def membership() -> Iterator[Membership]:
    m = Membership([], [], not_before=500, leader=(7001, 600))
    # The rows' pids are made up: a real ancestor of this process may hold
    # one of the numbers (pids wrap), and would be turned down as tether's own.
    m._ancestors = set()
    try:
        yield m
    finally:
        m.close()


def test_adoption_turns_down_tether_older_processes_kernel_threads_and_known_ones(
    membership: Membership,
) -> None:
    membership.protect([7005])
    fds = _fds(7)
    rows = [
        (7001, fds[0], stat_line(7001, b"leader", starttime=600), b"lead\0er\0"),
        (7002, fds[1], stat_line(7002, b"kid", ppid=7001, starttime=700), b"sleep\x00600\x00"),
        (7003, fds[2], stat_line(7003, b"old", starttime=499), b"old\0"),
        (7004, fds[3], stat_line(7004, b"kthr", flags=procfs.PF_KTHREAD, starttime=900), b""),
        (7005, fds[4], stat_line(7005, b"mine", starttime=800), b"tether\0"),
        (7006, fds[5], b"7006 (broken", b"x\0"),
        (7002, fds[6], stat_line(7002, b"kid", ppid=7001, starttime=700), b"sleep\x00600\x00"),
    ]
    new = membership._adopt_captured(_Captured(rows, [], []))
    assert [(m.pid, m.starttime) for m in new] == [(7001, 600), (7002, 700)]
    leader, kid = new
    assert leader.is_leader and not kid.is_leader
    assert kid.cmdline == "sleep 600" and leader.cmdline == "lead er"
    assert kid.start_time == starttime_to_epoch(700)
    assert kid.found_by == {"cgroup"}
    assert [m.pid for m in membership.known()] == [7001, 7002]
    # The rows turned down (and the second row of a known identity) give
    # their fds back; the members keep theirs.
    assert [_is_open(fd) for fd in fds] == [True, True, False, False, False, False, False]


def test_adoption_is_oldest_first(membership: Membership) -> None:
    fds = _fds(3)
    rows = [
        (7012, fds[0], stat_line(7012, starttime=900), b"c\0"),
        (7010, fds[1], stat_line(7010, starttime=700), b"a\0"),
        (7011, fds[2], stat_line(7011, starttime=800), b"b\0"),
    ]
    new = membership._adopt_captured(_Captured(rows, [], []))
    assert [m.cmdline for m in new] == ["a", "b", "c"]


def test_adoption_asks_admit_of_each_full_row() -> None:
    """A membership with an admit check (the pruner's uid floor) judges the
    full row, as a scan would."""
    asked: list[ProcessInfo] = []

    def admit(info: ProcessInfo) -> bool:
        asked.append(info)
        return info.pid != 7021

    m = Membership([], [], not_before=0, leader=None, admit=admit)
    try:
        fds = _fds(2)
        rows = [
            (7020, fds[0], stat_line(7020, starttime=10), b"ok\0"),
            (7021, fds[1], stat_line(7021, starttime=11), b"no\0"),
        ]
        new = m._adopt_captured(_Captured(rows, [], []))
        assert [x.pid for x in new] == [7020]
        assert sorted(i.pid for i in asked) == [7020, 7021]
        assert asked[0].cmdline in (("ok",), ("no",))
        assert not _is_open(fds[1])
    finally:
        m.close()


# -- end to end ----------------------------------------------------------

_LEADER = (
    "import os, subprocess, sys\n"
    "kids = [subprocess.Popen(['sleep', f'{700 + i}']) for i in range(int(sys.argv[2]))]\n"
    "with open(sys.argv[1] + '.tmp', 'w') as f:\n"
    "    f.write(' '.join(str(k.pid) for k in kids))\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "[k.wait() for k in kids]\n"
)


def _cancel_twenty(tmp_path: Path) -> tuple[tether.Job, int, dict[int, int], tether.Report]:
    """A job of 20 sleeps under its leader, cancelled once all run: the job,
    its leader's start time, the sleeps' (pid, start time), the report.
    Nothing is left behind."""
    ready = tmp_path / "ready"
    job = tether.start(
        [sys.executable, "-c", _LEADER, str(ready), "20"],
        trackers="auto",
        policy="KILL",
        stdin=subprocess.DEVNULL,
    )
    kids: dict[int, int] = {}
    try:
        wait_for(ready.exists, what="the sleeps to start")
        for pid in map(int, ready.read_text().split()):
            st = proc_stat(pid)
            assert st is not None
            kids[pid] = st.starttime
        lead = proc_stat(job.pid)
        assert lead is not None
        return job, lead.starttime, kids, job.cancel("test")
    finally:
        job.cancel("cleanup")
        for ident in kids.items():
            kill_identity(*ident)


@needs_cgroup
def test_kill_with_cgroup_names_each_member_with_its_identity(tmp_path: Path) -> None:
    """Every member cgroup.kill covered is in the report with the start time
    /proc gave it, its command line, found by the cgroup, killed by KILL."""
    job, lead_starttime, kids, report = _cancel_twenty(tmp_path)
    assert report.complete
    assert report.steps[0].froze == "cgroup"
    by_pid = {m.pid: m for m in report.members}
    assert set(by_pid) == {job.pid, *kids}
    for i, (pid, starttime) in enumerate(kids.items()):
        rec = by_pid[pid]
        assert rec.start_time == starttime_to_epoch(starttime)
        assert rec.cmdline == f"sleep {700 + i}"
        assert "cgroup" in rec.found_by
        assert (rec.outcome, rec.ended_by, rec.signals) == ("killed", "KILL", ("KILL",))
    assert by_pid[job.pid].start_time == starttime_to_epoch(lead_starttime)
    assert report.steps[0].signalled == len(kids) + 1


def test_signal_and_exit_order_decide_the_outcome() -> None:
    """The report's outcome of a member from its signals and exit (the
    record is built for a thousand members, so it is written for speed)."""
    from tether.terminate import Member, _record

    def member(signals: list[tuple[int, float]], exited: float | None, **kw: object) -> Member:
        m = Member(pid=1, starttime=1, start_time=0.0, cmdline="x", found_by={"walk", "cgroup"})
        m.signals.extend(signals)
        m.exited_at = exited
        for k, v in kw.items():
            setattr(m, k, v)
        return m

    term, kill = signal.SIGTERM, signal.SIGKILL
    rec = _record(member([(term, 2.0), (kill, 5.0)], 6.0), 1.0)
    assert (rec.outcome, rec.ended_by, rec.ended_at, rec.signals) == (
        "killed",
        "KILL",
        5.0,
        ("TERM", "KILL"),
    )
    assert rec.found_by == ("cgroup", "walk")
    rec = _record(member([(term, 2.0), (kill, 5.0)], 3.0), 1.0)
    assert (rec.outcome, rec.ended_by) == ("killed", "TERM")
    rec = _record(member([(term, 2.0)], 1.5), 1.0)
    assert (rec.outcome, rec.ended_by, rec.ended_at) == ("exited", None, 0.5)
    rec = _record(member([], 0.5), 1.0)
    assert (rec.outcome, rec.ended_by, rec.ended_at, rec.signals) == ("exited", None, 0.0, ())
    rec = _record(member([(term, 2.0)], None), 1.0)
    assert (rec.outcome, rec.ended_by, rec.ended_at) == ("survived", None, None)
    rec = _record(member([], None, denied=True), 1.0)
    assert rec.outcome == "denied"


@needs_cgroup
def test_members_unread_for_want_of_fds_are_said_not_silently_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The capture before cgroup.kill reads each frozen member through its own
    fds. With none to spare, a read fails as a gone process's does and the
    member is not named; cgroup.kill still kills it. The report says how many
    it killed unnamed (a frozen process cannot have exited by itself)."""
    import resource

    from tether import membership
    from tether._platform.linux import procscan

    monkeypatch.setattr(procscan, "use_native", False)  # the Python reader: deterministic
    real = membership.capture

    def with_one_fd_free(pids: list[int]) -> object:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.open(os.devnull, os.O_RDONLY)  # open() takes the lowest free number
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + 1, hard))  # that one alone
        try:
            return real(pids)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    monkeypatch.setattr(membership, "capture", with_one_fd_free)
    job, _lead, kids, report = _cancel_twenty(tmp_path)
    assert report.complete  # the cgroup emptied
    for pid, starttime in kids.items():
        assert proc_stat(pid) is None or proc_stat(pid).starttime != starttime  # type: ignore[union-attr]
    in_cgroup = {job.pid, *kids}
    named = {m.pid for m in report.members} & in_cgroup
    said = [c for c in report.caveats if "could not be read before cgroup.kill" in c]
    assert len(said) == 1, report.caveats
    assert int(said[0].split()[0]) + len(named) == len(in_cgroup), (said, named)
    assert len(named) < len(in_cgroup)  # the limit did bite


def test_an_unread_member_is_named_only_by_a_member_of_a_new_start_time() -> None:
    """The caveat's count of frozen members the capture could not read: one
    is named by a member found afterwards under its pid, but not by one
    known before under that pid (an exited member whose pid was reused)."""
    m = Membership([], [], not_before=0, leader=None)
    m._ancestors = set()
    try:
        fds = _fds(2)
        old = m._adopt_captured(
            _Captured([(7040, fds[0], stat_line(7040, starttime=10), b"")], [], [])
        )
        assert [x.pid for x in old] == [7040]
        m._note_unread([7040, 7041])

        def unread() -> int:
            said = [c for c in m.caveats if "could not be read before cgroup.kill" in c]
            return int(said[0].split()[0]) if said else 0

        assert unread() == 2  # 7040's known member started before: not it
        new = m._adopt_captured(
            _Captured([(7040, fds[1], stat_line(7040, starttime=30), b"")], [], [])
        )
        assert [x.pid for x in new] == [7040]
        assert unread() == 1  # the reused pid's process, found since
    finally:
        m.close()
