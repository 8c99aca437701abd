"""The wait after a cgroup KILL (``Membership._wait_killed``).

The killed members' pidfds say when to look, not cgroup.events (the kernel
sends that file's notifications at most once per ~10 ms, and the freeze has
just sent one); the wait still calls the cgroup empty only when
cgroup.events says so, never because every member it was given has exited.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
from collections.abc import Iterator

import pytest

from helpers import cgroup_writable, wait_for, wait_for_exec
from tether._platform.linux import capture, cgroupfs
from tether._platform.linux.cgroupfs import JobCgroup
from tether.membership import Membership, _Captured
from tether.process import Delivery
from tether.terminate import Member

pytestmark = pytest.mark.skipif(not cgroup_writable(), reason="needs cgroup v2 write access")


@pytest.fixture
def cgroup() -> Iterator[JobCgroup]:
    parent = cgroupfs.probe().parent
    assert parent is not None
    cg = JobCgroup.create(parent, f"tether-test-kill-wait-{os.getpid()}")
    try:
        yield cg
    finally:
        with contextlib.suppress(OSError):
            cg.kill()
        wait_for(lambda: not cg.populated(), 10.0, "the test cgroup to empty")
        cg.remove()


@pytest.fixture
def membership(cgroup: JobCgroup) -> Iterator[Membership]:
    m = Membership([], [], not_before=0, leader=None, cgroup=cgroup)
    try:
        yield m
    finally:
        m.close()


def start_in(cg: JobCgroup, procs: list[subprocess.Popen[bytes]]) -> int:
    """A `sleep` moved into the cgroup before its exec (the shim tether uses)."""
    p = subprocess.Popen(
        ["/bin/sh", "-c", 'echo 0 >"$0" && exec sleep 600', cg.procs_file],
        stdin=subprocess.DEVNULL,
    )
    procs.append(p)
    wait_for_exec(p.pid, "sleep")
    assert p.pid in cg.procs()
    return p.pid


def adopt(m: Membership, pid: int) -> Member:
    """The process as a member, read as a frozen cgroup's rows are."""
    rows = capture([pid])
    assert rows is not None and len(rows) == 1
    (member,) = m._adopt_captured(_Captured(rows, [], []))
    return member


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            # Our children: reaped here, so no zombie outlives the test.
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(10)


def test_the_wait_ends_once_the_killed_members_and_the_cgroup_are_gone(
    cgroup: JobCgroup, membership: Membership, procs: list[subprocess.Popen[bytes]]
) -> None:
    members = [adopt(membership, start_in(cgroup, procs)) for _ in range(3)]
    cgroup.kill()
    assert membership._wait_killed(members, 10.0)
    assert not cgroup.populated()
    assert all(p.wait(10) == -signal.SIGKILL for p in procs)


def test_a_process_inside_that_is_no_member_keeps_the_cgroup_from_being_called_empty(
    cgroup: JobCgroup, membership: Membership, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Every member given has exited, but something the reads did not see
    (here: never adopted) is still inside: not empty, until it is gone too."""
    member = adopt(membership, start_in(cgroup, procs))
    other = start_in(cgroup, procs)
    assert membership.send(member, signal.SIGKILL) is Delivery.DELIVERED
    assert not membership._wait_killed([member], 0.3)
    assert other in cgroup.procs()
    os.kill(other, signal.SIGKILL)  # our own child, not yet reaped: the pid is its
    assert membership._wait_killed([member], 10.0)
    assert not cgroup.populated()


def test_a_member_moved_out_of_the_cgroup_is_not_one_the_kill_is_waited_for(
    cgroup: JobCgroup, membership: Membership, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A member an earlier scan saw inside, moved to another cgroup since:
    cgroup.kill does not reach it, so the kill's wait must not wait for it
    (the engine kills it as a member outside)."""
    stay = adopt(membership, start_in(cgroup, procs))
    moved = adopt(membership, start_in(cgroup, procs))
    membership._in_cgroup.update({stay.pid, moved.pid})  # as the last scan found them
    parent = cgroupfs.probe().parent
    assert parent is not None
    elsewhere = JobCgroup.create(parent, f"tether-test-kill-wait-out-{os.getpid()}")
    try:
        with open(elsewhere.procs_file, "w") as f:
            f.write(str(moved.pid))
        assert moved.pid not in cgroup.procs()
        captured = membership._capture_cgroup()
        assert [m.pid for m in captured.known] == [stay.pid]
    finally:
        os.kill(moved.pid, signal.SIGKILL)  # our own child: the pid is its
        wait_for(lambda: not elsewhere.populated(), 10.0, "the other cgroup to empty")
        elsewhere.remove()


def test_a_member_that_outlives_the_one_waited_on_is_still_waited_for(
    membership: Membership, cgroup: JobCgroup, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The wait sleeps on one pidfd, the last member it is given, then polls
    the rest. That one exits first here; the other, outside the cgroup so
    that "populated 0" cannot stand in for it, exits a second later: the wait
    returns only after it has."""
    outside = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    procs.append(outside)
    wait_for_exec(outside.pid, "sleep")
    first = adopt(membership, outside.pid)
    last = adopt(membership, start_in(cgroup, procs))
    cgroup.kill()
    late = threading.Timer(1.0, os.kill, (first.pid, signal.SIGKILL))  # our child: its pid
    late.start()
    try:
        assert membership._wait_killed([first, last], 30.0)
        poller = select.poll()
        poller.register(membership._handles[first].fileno, select.POLLIN)
        assert poller.poll(0), "the wait returned before the other member exited"
    finally:
        late.join()
