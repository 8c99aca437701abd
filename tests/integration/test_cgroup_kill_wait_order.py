"""The wait after a cgroup KILL sleeps on one pidfd, the last listed, then
polls the rest once (``Membership._wait_killed``): every member it is given
is still waited for, whichever exits first."""

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
from tether.terminate import Member

pytestmark = pytest.mark.skipif(not cgroup_writable(), reason="needs cgroup v2 write access")


@pytest.fixture
def cgroup() -> Iterator[JobCgroup]:
    parent = cgroupfs.probe().parent
    assert parent is not None
    cg = JobCgroup.create(parent, f"tether-test-kill-wait-order-{os.getpid()}")
    try:
        yield cg
    finally:
        with contextlib.suppress(OSError):
            cg.kill()
        wait_for(lambda: not cg.populated(), 10.0, "the test cgroup to empty")
        cg.remove()


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


def _sleep(procs: list[subprocess.Popen[bytes]], cg: JobCgroup | None = None) -> int:
    """A `sleep` (moved into ``cg`` before its exec, as tether's shim does)."""
    if cg is None:
        p = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    else:
        p = subprocess.Popen(
            ["/bin/sh", "-c", 'echo 0 >"$0" && exec sleep 600', cg.procs_file],
            stdin=subprocess.DEVNULL,
        )
    procs.append(p)
    wait_for_exec(p.pid, "sleep")
    return p.pid


def _adopt(m: Membership, pid: int) -> Member:
    rows = capture([pid])
    assert rows is not None and len(rows) == 1
    (member,) = m._adopt_captured(_Captured(rows, [], []))
    return member


def _exited(m: Membership, member: Member) -> bool:
    poller = select.poll()
    poller.register(m._handles[member].fileno, select.POLLIN)
    return bool(poller.poll(0))


def test_a_member_that_outlives_the_last_listed_one_is_still_waited_for(
    cgroup: JobCgroup, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The last listed member (the one the wait sleeps on) exits first; the
    other one, outside the cgroup so that "populated 0" cannot stand in for
    it, exits a second later: the wait returns only after it has."""
    m = Membership([], [], not_before=0, leader=None, cgroup=cgroup)
    try:
        first = _adopt(m, _sleep(procs))
        last = _adopt(m, _sleep(procs, cgroup))
        cgroup.kill()
        late = threading.Timer(1.0, os.kill, (first.pid, signal.SIGKILL))  # our child: its pid
        late.start()
        try:
            assert m._wait_killed([first, last], 30.0)
            assert _exited(m, first), "the wait returned before the other member exited"
        finally:
            late.join()
    finally:
        m.close()
