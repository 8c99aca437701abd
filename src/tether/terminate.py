"""The escalation engine: one policy, applied to whatever a :class:`Target` finds.

The engine never touches the kernel itself. A target (the real one is
:class:`tether.membership.Membership`; unit tests use a fake with a fake clock)
finds members, freezes and thaws them, delivers signals through verified
handles, and says when the kernel confirms the tree is empty.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tether import logs
from tether.policy import UNCATCHABLE, Policy, Step, signal_name
from tether.process import Delivery
from tether.report import MemberRecord, Report, StepRecord, Survivor
from tether.tracking.base import TrackerStatus

#: First and longest pause between rescans for late members during a grace.
RESCAN_FIRST = 0.02
RESCAN_MAX = 0.5

_LOG = "tether.terminate"


@dataclass(frozen=True)
class Progress:
    """Where a termination stands, for a progress display (``on_progress``).

    Given at each step's start (after its signal went out) and at each rescan
    during its grace, so at most :data:`RESCAN_MAX` seconds apart.

    Attributes:
        step: the step running, from 1.
        steps: how many steps the policy has.
        signal: the step's signal, e.g. ``"TERM"``.
        members_left: members still alive.
        grace_left: seconds left of the step's grace (0 once it is spent).
    """

    step: int
    steps: int
    signal: str
    members_left: int
    grace_left: float


@dataclass(eq=False)
class Member:
    """A process the target has found, and what happened to it."""

    pid: int
    starttime: int
    start_time: float  # Unix time
    cmdline: str
    found_by: set[str]
    is_leader: bool = False
    signals: list[tuple[int, float]] = field(default_factory=list)  # (signal, clock() time)
    exited_at: float | None = None  # clock() time the exit was seen
    denied: bool = False

    @property
    def alive(self) -> bool:
        return self.exited_at is None


class Target(Protocol):
    """What the engine drives: the real process table or a fake one."""

    def scan(self) -> Sequence[Member]:
        """Refresh membership; return every member known so far (live or not)."""
        ...

    def freeze(self) -> str | None:
        """Stop the tree from forking; return how (``"cgroup"``, ``"sigstop"``) or None."""
        ...

    def thaw(self) -> None: ...

    def send(self, member: Member, sig: int) -> Delivery: ...

    def kill_all(self) -> set[Member]:
        """SIGKILL atomically where the kernel allows (cgroup.kill); the members covered."""
        ...

    def wait_empty(self, timeout: float) -> bool:
        """Wait until the kernel confirms the tree empty (True) or ``timeout`` / a wake-up."""
        ...

    def survivors(self) -> list[Survivor]: ...

    def run_kill_script(self, argv: Sequence[str], timeout: float) -> str: ...

    @property
    def trackers(self) -> tuple[TrackerStatus, ...]: ...

    @property
    def caveats(self) -> tuple[str, ...]: ...


class Clock(Protocol):
    def __call__(self) -> float: ...


def terminate(
    target: Target,
    policy: Policy,
    *,
    job_id: str,
    reason: str,
    clock: Clock = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    skip_to_last: Callable[[], bool] = lambda: False,
    on_progress: Callable[[Progress], None] | None = None,
) -> Report:
    """Apply ``policy`` to every member ``target`` finds; return the report.

    Each step: freeze (so nothing forks between the scan and the signal),
    signal every live member not yet signalled in this step, SIGCONT after a
    catchable signal (a stopped process keeps TERM pending otherwise), thaw,
    then wait up to the grace for the kernel to confirm the tree empty,
    giving members that appear meanwhile the same signal.

    ``on_progress``, if given, is called with a :class:`Progress` at each
    step's start and each rescan (it must be quick: the grace is running).
    """
    t0 = clock()
    started_wall = wall_clock()
    steps_done: list[StepRecord] = []
    script_note: str | None = None

    def now() -> float:
        return clock() - t0

    steps: list[Step] = list(policy.steps)
    run_builtin = True
    if policy.kill_script is not None:
        target.scan()
        script_note = target.run_kill_script(policy.kill_script.argv, policy.kill_script.timeout)
        if policy.kill_script.mode == "replace":
            run_builtin = False

    empty = target.wait_empty(0)
    logs.log(_LOG, logs.INFO, f"terminating job {job_id}: {reason}",
             job_id=job_id, reason=reason, policy=str(policy))  # fmt: skip
    if run_builtin and not empty:
        # A skip requested before the first step (a second Ctrl-C already) counts.
        i = len(steps) - 1 if skip_to_last() else 0
        while i < len(steps):
            step = steps[i]
            last = i == len(steps) - 1
            record, empty = _run_step(
                target,
                step,
                policy if i == 0 else None,
                now,
                (lambda: False) if last else skip_to_last,
                clock,
                _Where(job_id, i + 1, len(steps), on_progress),
            )
            steps_done.append(record)
            if empty:
                break
            if skip_to_last() and i < len(steps) - 1:
                i = len(steps) - 1
            else:
                i += 1
    elif not run_builtin and not empty:
        empty = _wait_until(target, clock, clock() + steps[-1].grace)

    members = target.scan()
    complete = target.wait_empty(0)
    survivors = tuple(target.survivors()) if not complete else ()
    for s in survivors:
        logs.log(_LOG, logs.WARNING,
                 f"job {job_id}: pid {s.pid} survived the policy (state {s.state}): {s.reason}",
                 job_id=job_id, pid=s.pid, state=s.state, wchan=s.wchan)  # fmt: skip
    return Report(
        job_id=job_id,
        reason=reason,
        policy=str(policy),
        started_at=started_wall,
        duration=now(),
        complete=complete,
        members=tuple(_record(m, t0) for m in members),
        survivors=survivors,
        trackers=target.trackers,
        steps=tuple(steps_done),
        caveats=target.caveats,
        kill_script=script_note,
    )


def _wait_until(
    target: Target, clock: Clock, deadline: float, stop: Callable[[], bool] = lambda: False
) -> bool:
    """Wait for an empty tree until ``deadline``, through wake-ups, unless ``stop()``."""
    while True:
        if target.wait_empty(max(0.0, deadline - clock())):
            return True
        if clock() >= deadline or stop():
            return False


@dataclass(frozen=True)
class _Where:
    """Which step is running, for progress and log records."""

    job_id: str
    step: int
    steps: int
    on_progress: Callable[[Progress], None] | None


#: (pid, signal, how) of members signalled while the tree was frozen.
_Notes = list[tuple[int, int, str]]


def _deliver(
    target: Target,
    members: Sequence[Member],
    sig: int,
    done: set[Member],
    clock: Clock,
    notes: _Notes | None = None,
) -> int:
    """Signal the live members not yet done; notes for the debug log if wanted."""
    sent = 0
    for m in members:
        if not m.alive or m in done or m.denied:
            continue
        done.add(m)
        result = target.send(m, sig)
        if notes is not None:
            notes.append((m.pid, sig, result.value))
        if result is Delivery.DELIVERED:
            m.signals.append((sig, clock()))
            sent += 1
            if sig not in UNCATCHABLE:
                target.send(m, signal.SIGCONT)
        elif result is Delivery.DENIED:
            m.denied = True
    return sent


def _log_signalled(job_id: str, notes: _Notes | None) -> None:
    # Written after the thaw: a log write that blocks must not keep the tree frozen.
    for pid, sig, how in notes or ():
        logs.log(_LOG, logs.DEBUG, f"pid {pid}: SIG{signal_name(sig)} {how}",
                 job_id=job_id, pid=pid, signal=signal_name(sig), delivery=how)  # fmt: skip
    if notes:
        notes.clear()


def _run_step(
    target: Target,
    step: Step,
    first: Policy | None,
    now: Callable[[], float],
    skip_to_last: Callable[[], bool],
    clock: Clock,
    where: _Where,
) -> tuple[StepRecord, bool]:
    started = now()
    sig = step.signal
    name = signal_name(sig)
    job_id = where.job_id
    done: set[Member] = set()
    sent = 0
    notes: _Notes | None = [] if logs.enabled(logs.DEBUG, _LOG) else None
    froze = target.freeze()
    try:
        members = target.scan()
        if sig == signal.SIGKILL:
            for m in target.kill_all():
                if m.alive:
                    done.add(m)
                    m.signals.append((sig, clock()))
                    sent += 1
                    if notes is not None:
                        notes.append((m.pid, sig, "cgroup.kill"))
        if first is not None and (first.leader_signal is not None or first.tree_delay > 0):
            leader_sig = first.leader_signal if first.leader_signal is not None else sig
            leaders = [m for m in members if m.is_leader]
            sent += _deliver(target, leaders, leader_sig, done, clock, notes)
            # The delay is for the leader to stop its own workers. A leader
            # that had already exited before this step (leftovers after it
            # ended) will not, so then the tree is signalled at once. One that
            # exits during the delay may have started their shutdown: wait on.
            if first.tree_delay > 0 and any(m.alive for m in leaders):
                target.thaw()
                froze_again = None
                if not _wait_until(target, clock, clock() + first.tree_delay, skip_to_last):
                    froze_again = target.freeze()
                members = target.scan()
                froze = froze or froze_again
        sent += _deliver(target, members, sig, done, clock, notes)
    finally:
        target.thaw()

    deadline = clock() + step.grace
    if where.on_progress is not None or logs.enabled(logs.INFO, _LOG):
        alive = sum(1 for m in members if m.alive)
        logs.log(_LOG, logs.INFO,
                 f"job {job_id}: step {where.step}/{where.steps} SIG{name} to {alive} member(s)",
                 job_id=job_id, step=where.step, signal=name, members=alive,
                 signalled=sent, grace=step.grace)  # fmt: skip
        if where.on_progress is not None:
            where.on_progress(Progress(where.step, where.steps, name, alive, step.grace))
    _log_signalled(job_id, notes)
    pause = RESCAN_FIRST
    empty = False
    while True:
        left = deadline - clock()
        if target.wait_empty(max(0.0, min(left, pause))):
            empty = True
            break
        if left <= 0 or skip_to_last():
            break
        # Members that appear during the grace (a TERM handler that forks
        # while dying) get this step's signal too.
        found = target.scan()
        sent += _deliver(target, found, sig, done, clock, notes)
        _log_signalled(job_id, notes)
        if where.on_progress is not None:
            alive = sum(1 for m in found if m.alive)
            grace_left = max(0.0, deadline - clock())
            where.on_progress(Progress(where.step, where.steps, name, alive, grace_left))
        pause = min(pause * 2, RESCAN_MAX)

    left_after = sum(1 for m in target.scan() if m.alive) if not empty else 0
    logs.log(_LOG, logs.INFO,
             f"job {job_id}: step SIG{name} done, {left_after} member(s) left",
             job_id=job_id, step=where.step, signal=name, signalled=sent,
             left=left_after)  # fmt: skip
    return (
        StepRecord(
            signal=name,
            started_at=started,
            grace=step.grace,
            signalled=sent,
            left_after=left_after,
            duration=now() - started,
            froze=froze,
        ),
        empty,
    )


def _record(m: Member, t0: float) -> MemberRecord:
    if m.alive:
        outcome = "denied" if m.denied else "survived"
    elif not m.signals or m.signals[0][1] > (m.exited_at or 0):
        outcome = "exited"
    else:
        outcome = "killed"
    before_exit = [s for s, t in m.signals if m.exited_at is None or t <= m.exited_at]
    return MemberRecord(
        pid=m.pid,
        start_time=m.start_time,
        cmdline=m.cmdline,
        found_by=tuple(sorted(m.found_by)),
        outcome=outcome,
        ended_by=signal_name(before_exit[-1]) if before_exit and not m.alive else None,
        ended_at=None if m.exited_at is None else max(0.0, m.exited_at - t0),
        signals=tuple(signal_name(s) for s, _ in m.signals),
    )
