"""The shortcuts of the termination fast paths, each against the guard it relies on.

- cgroup ``KILL``: the frozen cgroup is read raw before ``cgroup.kill`` and
  parsed after it. A listed pid is adopted only if the cgroup still lists it
  while its pidfd is unexited (else it may be a stranger's by now), and a
  member counts as reached by the kill only if it exited or is still inside
  (one that left the cgroup before the kill is killed through its pidfd).
- ``wait_empty`` takes the last scan as its proof when that scan began with
  every member exited; the engine then reports from the members it knows:
  the end of a job whose leader exited reads the process table once.
- A stable SIGSTOP sweep makes the engine's scan a read of what the sweep
  found; the thaw ends that.
- The PID-namespace check skips /proc/PID/status when /proc/PID/ns/pid is
  this process's namespace: a nested init is still found.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, strategies

import tether
from helpers import (
    alive,
    cgroup2_mount,
    cgroup_writable,
    is_root,
    kill_identity,
    proc_stat,
    wait_for,
)
from tether._platform import linux as linux_backend
from tether._platform.linux import procfs
from tether._platform.linux.cgroupfs import JobCgroup
from tether.membership import Membership
from tether.process import snapshot as real_snapshot

NO_CGROUP = "session,cookie,walk"
needs_cgroup = pytest.mark.skipif(not cgroup_writable(), reason="needs cgroup v2 write access")

#: A leader that starts a sleeping child and writes its pid to argv[1]; on
#: SIGUSR1 it starts another and appends that pid too.
LEADER = """
import os, signal, subprocess, sys
kids = []
def spawn(*_):
    kids.append(subprocess.Popen(["sleep", "600"]))
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(" ".join(str(k.pid) for k in kids))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
signal.signal(signal.SIGUSR1, spawn)
spawn()
while True:
    signal.pause()
"""


class _Tree:
    """A LEADER job; every child it reported is killed by identity at the end."""

    def __init__(self, tmp_path: Path, trackers: str) -> None:
        self.ready = tmp_path / "ready"
        argv = [sys.executable, "-c", LEADER, str(self.ready)]
        self.job = tether.start(argv, trackers=trackers, policy="KILL")
        self.seen: set[tuple[int, int]] = set()

    def kids(self, count: int) -> list[tuple[int, int]]:
        """The children's identities, once the leader has started ``count``."""
        ready = self.ready
        wait_for(lambda: ready.exists() and len(ready.read_text().split()) >= count, what="kids")
        out = []
        for pid in map(int, ready.read_text().split()):
            st = proc_stat(pid)
            assert st is not None
            out.append((pid, st.starttime))
        self.seen.update(out)
        return out

    def more(self, count: int) -> list[tuple[int, int]]:
        """Have the leader start another child (count in all); the identities."""
        self.kids(count - 1)  # its SIGUSR1 handler is set once it started one
        os.kill(self.job.pid, signal.SIGUSR1)
        return self.kids(count)


@contextlib.contextmanager
def _tree(tmp_path: Path, trackers: str) -> Iterator[_Tree]:
    tree = _Tree(tmp_path, trackers)
    try:
        yield tree
    finally:
        tree.job.cancel("cleanup")
        for ident in tree.seen:
            kill_identity(*ident)


def _membership(job: tether.Job) -> Membership:
    m = job._membership  # the job's own Target, driven here step by step
    assert isinstance(m, Membership)
    return m


def _cgroup(job: tether.Job) -> JobCgroup:
    cg = _membership(job).cgroup
    assert cg is not None
    return cg


@needs_cgroup
@pytest.mark.skipif(not is_root(), reason="moving a process between cgroups needs root here")
def test_member_that_left_the_cgroup_before_the_kill_is_killed_through_its_pidfd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _tree(tmp_path, "auto") as tree:
        child = tree.kids(1)[0]
        cg = _cgroup(tree.job)
        real_kill = cg.kill

        def leave_then_kill() -> None:
            # After the frozen cgroup was read, before its kill: what a root
            # member can do to itself (the parent cgroup is the common
            # ancestor, so the move is allowed).
            with open(os.path.join(os.path.dirname(cg.path), "cgroup.procs"), "w") as f:
                f.write(str(child[0]))
            real_kill()

        monkeypatch.setattr(cg, "kill", leave_then_kill)
        report = tree.job.cancel("test")
    assert not alive(*child), "the member that left the cgroup survived"
    assert report.complete
    rec = {m.pid: m for m in report.members}[child[0]]
    assert rec.outcome == "killed"
    assert rec.ended_by == "KILL"


@needs_cgroup
def test_pid_the_cgroup_no_longer_lists_is_not_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cgroup.procs listed a pid that, by the time it is read, is a stranger's
    (the member was killed from outside and its pid reused): the stranger is
    neither a member nor signalled."""
    with _tree(tmp_path, "auto") as tree:
        # Started after the job: its start time alone does not rule it out.
        stranger = subprocess.Popen(["sleep", "600"])
        st = proc_stat(stranger.pid)
        assert st is not None
        kids = tree.kids(1)
        cg = _cgroup(tree.job)
        real_procs = cg.procs
        first = [True]

        def procs() -> list[int]:
            pids = real_procs()
            # The listing the frozen cgroup is read from, before the kill.
            if first[0] and sys._getframe(1).f_code.co_name == "_capture_cgroup":
                first[0] = False
                return [*pids, stranger.pid]
            return pids

        monkeypatch.setattr(cg, "procs", procs)
        report = tree.job.cancel("test")
        stranger_lived = alive(stranger.pid, st.starttime)
        stranger.kill()
        stranger.wait()
    assert stranger_lived, "a stranger was killed"
    assert stranger.pid not in {m.pid for m in report.members}
    assert report.complete
    assert {k[0] for k in kids} <= {m.pid for m in report.members}


@pytest.mark.parametrize("trackers", [pytest.param("auto", marks=needs_cgroup), NO_CGROUP])
def test_end_of_a_job_whose_leader_exited_reads_the_process_table_once(
    monkeypatch: pytest.MonkeyPatch, trackers: str
) -> None:
    reads: list[str] = []
    real_subtree = linux_backend.subtree

    def snapshot(*a: object) -> object:
        reads.append("snapshot")
        return real_snapshot(*a)  # type: ignore[arg-type]

    def subtree(*a: object, **k: object) -> object:
        reads.append("subtree")
        return real_subtree(*a, **k)  # type: ignore[arg-type]

    job = tether.start(["true"], trackers=trackers)
    try:
        # Counted from the leader's exit on: the scan that records its
        # session may already settle the tree (then the cancel reads none).
        monkeypatch.setattr("tether.membership.snapshot", snapshot)
        monkeypatch.setattr(linux_backend, "subtree", subtree)
        job.wait()
        report = job.cancel("leftovers after the leader exited")
    finally:
        job.cancel("cleanup")
    assert report.complete
    assert len(reads) == 1, reads


def test_kill_of_a_stable_sweep_needs_no_scan_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a cgroup, KILL goes to a tree stopped by a sweep whose last
    scan found nothing new: killed while stopped, nothing of it can fork, so
    its exits alone prove it empty — two table reads (the first scan, the
    sweep's), not a rescan during the grace and another to confirm."""
    with _tree(tmp_path, NO_CGROUP) as tree:
        kids = tree.more(2)
        reads: list[int] = []

        def snapshot(*a: object) -> object:
            reads.append(1)
            return real_snapshot(*a)  # type: ignore[arg-type]

        monkeypatch.setattr("tether.membership.snapshot", snapshot)
        report = tree.job.cancel("test")
    assert not any(alive(*k) for k in kids)
    assert report.complete
    assert report.steps[0].froze == "sigstop"
    assert {k[0] for k in kids} | {tree.job.pid} <= {m.pid for m in report.members}
    assert len(reads) == 2, reads


def test_wait_empty_rescans_when_a_member_exited_after_the_last_scan(tmp_path: Path) -> None:
    """The last scan is proof only if it began after every exit: a member that
    forked and then exited since may have left a child no scan has seen."""
    with _tree(tmp_path, NO_CGROUP) as tree:
        job = tree.job
        first = tree.kids(1)[0]
        m = _membership(job)
        assert {x.pid for x in m.scan()} >= {job.pid, first[0]}
        # After that scan the leader forks a second child, then every member
        # the scan found exits.
        kids = tree.more(2)
        leader = proc_stat(job.pid)
        assert leader is not None
        kill_identity(*kids[0])
        kill_identity(job.pid, leader.starttime)
        # Not job.wait(): that scans once it sees the leader exit.
        wait_for(lambda: not alive(*kids[0]) and not alive(job.pid, leader.starttime),
                 what="the exits")  # fmt: skip
        assert not m.wait_empty(0), "the second child, never scanned, was missed"
        assert kids[1][0] in {x.pid for x in m.known() if x.alive}


def test_thaw_ends_the_stable_sweep_so_a_later_fork_is_found(tmp_path: Path) -> None:
    with _tree(tmp_path, NO_CGROUP) as tree:
        first = tree.kids(1)[0]
        m = _membership(tree.job)
        m.scan()
        assert m.freeze() == "sigstop"
        assert {x.pid for x in m.scan()} >= {tree.job.pid, first[0]}
        m.thaw()
        kids = tree.more(2)
        assert kids[1][0] in {x.pid for x in m.scan()}, "a scan after the thaw was stale"


@pytest.mark.skipif(
    not is_root() or shutil.which("unshare") is None, reason="needs root and unshare"
)
def test_nested_pid_namespace_init_is_found_past_the_readlink_shortcut() -> None:
    from tether._platform import is_pid_namespace_init

    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "600"])
    init_id: tuple[int, int] | None = None
    try:

        def child() -> int | None:
            with open(f"/proc/{outer.pid}/task/{outer.pid}/children") as f:
                pids = f.read().split()
            return int(pids[0]) if pids else None

        wait_for(lambda: child() is not None, what="unshare's child")
        init = child()
        assert init is not None
        st, ost = proc_stat(init), proc_stat(outer.pid)
        assert st is not None and ost is not None
        init_id = (init, st.starttime)
        if os.readlink(f"/proc/{init}/ns/pid") == os.readlink("/proc/self/ns/pid"):
            pytest.skip("unshare did not make a PID namespace here")
        assert is_pid_namespace_init(init, st.starttime)
        assert not is_pid_namespace_init(outer.pid, ost.starttime)
        me = proc_stat(os.getpid())
        assert me is not None
        assert not is_pid_namespace_init(me.pid, me.starttime)
    finally:
        if init_id is not None:
            kill_identity(*init_id)
        outer.kill()
        outer.wait()


@given(
    strategies.binary(max_size=64) | strategies.lists(strategies.binary(max_size=8)).map(b"\0".join)
)
def test_a_command_line_parses_as_each_argument_decoded(cmdline: bytes) -> None:
    """parse_cmdline decodes the whole read, then splits; the reference decodes
    each NUL-separated argument (what a reader of proc(5) would write)."""
    each = tuple(a.decode("utf-8", "surrogateescape") for a in cmdline.split(b"\0") if a)
    assert procfs.parse_cmdline(cmdline) == each
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    info = linux_backend.parse_captured(stat, cmdline)
    assert info is not None and info.cmdline == each


@needs_cgroup
@pytest.mark.skipif(not is_root(), reason="making a sub-cgroup of the job's needs root here")
def test_a_member_in_a_sub_cgroup_the_job_made_is_found(tmp_path: Path) -> None:
    """JobCgroup.procs reads the job cgroup alone when kernfs says it has no
    subdirectory (its link count); a sub-cgroup the job made is still read."""
    mount = cgroup2_mount()
    assert mount is not None
    script = (
        'cg="$1$(sed -n "s/^0:://p" /proc/self/cgroup)"; mkdir "$cg/sub"; '
        # An orphan at once (its parent subshell exits): no walk finds it.
        '(sleep 60 & echo $! > "$cg/sub/cgroup.procs"; echo $! > "$2"); exec sleep 60'
    )
    pidfile = tmp_path / "pid"
    with tether.start(
        ["sh", "-c", script, "sh", mount, str(pidfile)], trackers="cgroup", policy="KILL"
    ) as job:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10.0, "the sleep")
        sleeper = int(pidfile.read_text())
        wait_for(lambda: "/sub" in Path(f"/proc/{sleeper}/cgroup").read_text(), 10.0, "the move")
        assert job.found_by().get(sleeper) == ("cgroup",)
        report = job.cancel("test")
    assert report.complete
    assert sleeper in {m.pid for m in report.members}
