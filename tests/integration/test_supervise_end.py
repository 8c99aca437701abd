"""How supervise() ends a job whose leader exited by itself.

The usual end (nothing left behind) is settled in the loop's own thread; a
job that left members behind is terminated on a worker thread, so the loop
goes on serving its channel (the remote agent's connection, the output pipes)
through the policy's grace periods. The shortcut rests on
``Job.tree_proven_empty``: both are tested here.
"""

from __future__ import annotations

import os
import select
import time

import tether
from tether.job import _quiet_inbox
from tether.supervise import supervise

#: The leader exits at once and leaves a child that ignores TERM.
_LEAVES_A_STUBBORN_CHILD = ["sh", "-c", "trap '' TERM; sleep 30 & exit 0"]


def test_tree_proven_empty_only_once_nothing_is_left() -> None:
    with tether.start(["sleep", "30"]) as running:
        assert not running.tree_proven_empty(), "the leader is still running"
    with tether.start(["true"]) as clean:
        clean.wait_leader(30)
        assert clean.tree_proven_empty()
    with tether.start(_LEAVES_A_STUBBORN_CHILD, policy="KILL") as leaky:
        leaky.wait_leader(30)
        assert not leaky.tree_proven_empty(), "a leftover sleep is still running"
        report = leaky.cancel("test")
        assert report.complete and len(report.killed) == 1
        assert leaky.tree_proven_empty()


class _CountingChannel:
    """A channel whose fd is always readable: records when it was served."""

    def __init__(self, job: tether.Job) -> None:
        self.job = job
        self.r, self.w = os.pipe()
        os.write(self.w, b"x" * 4096)
        self.served_while_terminating = 0
        self.served = 0

    def wanted(self) -> dict[int, int]:
        return {self.r: select.POLLIN}

    def ready(self, fd: int, events: int) -> None:
        self.served += 1
        if self.job.returncode is not None and self.job.report is None:
            self.served_while_terminating += 1
        time.sleep(0.01)  # served at most ~100 times a second

    def cancel_request(self) -> tuple[str, int] | None:
        return None

    def linger(self, complete: bool) -> float:
        return 0

    def idle(self) -> bool:
        return True

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_leftovers_are_terminated_while_the_channel_is_served() -> None:
    # TERM is ignored: the policy's 1 s grace passes before KILL. Had the
    # termination run in the loop's thread, nothing would be served meanwhile.
    with tether.start(_LEAVES_A_STUBBORN_CHILD, policy="TERM,1s,KILL") as job:
        channel = _CountingChannel(job)
        try:
            with _quiet_inbox() as inbox:
                outcome = supervise(job, inbox=inbox, channel=channel)
        finally:
            channel.close()
    assert outcome.report is not None and outcome.report.complete
    assert outcome.reason == "leftovers after the leader exited"
    assert len(outcome.report.killed) == 1
    assert channel.served_while_terminating >= 10, channel.served_while_terminating


def test_a_clean_end_is_reported_as_one() -> None:
    with tether.start(["true"]) as job, _quiet_inbox() as inbox:
        outcome = supervise(job, inbox=inbox)
    assert outcome.returncode == 0
    assert outcome.report is not None and outcome.report.complete
    assert not outcome.report.killed and not outcome.report.survivors
    assert outcome.reason == "leftovers after the leader exited"
