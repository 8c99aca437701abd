"""The escalation engine: one policy, applied to whatever a :class:`Target` finds.

The engine never touches the kernel itself. A target (the real one is
:class:`tether.membership.Membership`; unit tests use a fake with a fake clock)
finds members, freezes and thaws them, delivers signals through verified
handles, and says when the kernel confirms the tree is empty.
"""

from __future__ import annotations

import time

from tether import _signals, logs
from tether._records import dataclass, field
from tether.policy import UNCATCHABLE, Policy, Step, signal_name
from tether.process import Delivery
from tether.report import MemberRecord, Report, StepRecord, Survivor
from tether.tracking.base import TrackerStatus

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Protocol
else:
    Protocol = object  # for mypy only: nothing subclasses or isinstance-checks these

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
        signalled: members the step's signal has reached so far.
    """

    step: int
    steps: int
    signal: str
    members_left: int
    grace_left: float
    signalled: int = 0


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

    def known(self) -> Sequence[Member]:
        """Every member known so far (live or not), without a rescan."""
        ...

    def freeze(self) -> str | None:
        """Stop the tree from forking; return how (``"cgroup"``, ``"sigstop"``) or None."""
        ...

    def thaw(self) -> None: ...

    def send(self, member: Member, sig: int) -> Delivery: ...

    def namespace_inits(self, members: Sequence[Member]) -> list[Member]:
        """The members that are the init of a PID namespace nested in ours."""
        ...

    def kill_all(self) -> set[Member]:
        """SIGKILL atomically where the kernel allows (cgroup.kill); the members covered."""
        ...

    def wait_empty(self, timeout: float) -> bool:
        """Wait until the kernel confirms the tree empty (True) or ``timeout`` / a wake-up."""
        ...

    def survivors(self) -> list[Survivor]: ...

    def run_kill_script(self, argv: Sequence[str], timeout: float) -> tuple[bool, str]:
        """Run the user's kill script: (it exited 0, a note for the report)."""
        ...

    @property
    def confirmation(self) -> str:
        """What proves the tree empty when :meth:`wait_empty` says so (for the report)."""
        ...

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
    advances: Callable[[], int] = lambda: 0,
    on_progress: Callable[[Progress], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    resume: tuple[int, float] | None = None,
) -> Report:
    """Apply ``policy`` to every member ``target`` finds; return the report.

    A SIGKILL step takes its members from a frozen tree and kills them frozen
    (or by cgroup.kill), so nothing forks past it. A catchable step goes to
    the members present at its start, running — with a SIGCONT first — never
    frozen or stopped: the kernel would queue the signal process-wide and
    whichever thread ran first would take it, often not the main thread where
    a Python handler has to run. Members that appear during a step's grace (a
    TERM handler's cleanup) are left to finish until the next step, as
    systemd does; the last step takes them too.

    Args:
        advances: how many times the caller has asked to move on (a further
            cancel signal); each request ends the current step's grace at once.
        on_progress: called with a :class:`Progress` at each step's start and
            each rescan (it must be quick: the grace is running).
        on_step: called with (step index, wall time) as each step starts, so a
            journal can record how far the policy got.
        resume: (step index, seconds of its grace already spent) to continue a
            policy another process started (a supervisor that died): that step's
            signal is not sent again, only the rest of its grace is waited.
    """
    t0 = clock()
    started_wall = wall_clock()
    steps_done: list[StepRecord] = []
    script_note: str | None = None

    def now() -> float:
        return clock() - t0

    steps: list[Step] = list(policy.steps)
    run_builtin = True
    if policy.kill_script is not None and resume is None:
        target.scan()
        ok, script_note = target.run_kill_script(
            policy.kill_script.argv, policy.kill_script.timeout
        )
        if policy.kill_script.mode == "replace" and ok:
            run_builtin = False
        elif policy.kill_script.mode == "replace":
            # Never weaker than asked: a replacing script that failed does not
            # leave the job running; the policy's own signals take over.
            script_note += "; it failed, so the policy's signals were sent instead"

    empty = target.wait_empty(0)
    logs.log(_LOG, logs.INFO, f"terminating job {job_id}: {reason}",
             job_id=job_id, reason=reason, policy=str(policy))  # fmt: skip
    if run_builtin and not empty:
        used = 0
        i, spent = resume if resume is not None else (0, 0.0)
        i = min(max(i, 0), len(steps) - 1)
        # Requests to move on that came before the first step count.
        wanted = advances()
        if wanted > used:
            i, used, spent = min(i + wanted - used, len(steps) - 1), wanted, 0.0

        def moved_on() -> bool:
            return advances() > used

        while True:
            step = steps[i]
            last = i == len(steps) - 1
            if on_step is not None:
                on_step(i, wall_clock() - spent)
            record, empty = _run_step(
                target,
                step,
                policy if i == 0 and spent == 0 else None,
                now,
                (lambda: False) if last else moved_on,
                clock,
                _Where(job_id, i + 1, len(steps), on_progress),
                last=last,
                resumed_after=spent if resume is not None and spent > 0 else None,
            )
            steps_done.append(record)
            spent = 0.0
            if empty or last:
                break
            wanted = advances()
            i = min(i + max(1, wanted - used), len(steps) - 1)
            used = max(used, wanted)
    elif not run_builtin and not empty:
        empty = _wait_until(target, clock, clock() + steps[-1].grace)

    if empty:
        # Just confirmed by wait_empty, through a scan that found every member
        # exited: another scan would read the same table again.
        members, complete = target.known(), True
    else:
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
        confirmed_by=target.confirmation if complete else None,
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


def _wait_gone(
    target: Target,
    clock: Clock,
    members: Sequence[Member],
    deadline: float,
    stop: Callable[[], bool],
) -> None:
    """Wait until these members have exited, ``deadline`` passes, or ``stop()``."""
    while any(m.alive for m in members) and clock() < deadline and not stop():
        if target.wait_empty(max(0.0, min(deadline - clock(), RESCAN_MAX))):
            return


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
        if m in done or not m.alive or m.denied:
            continue
        done.add(m)
        if sig not in UNCATCHABLE:
            # A stopped process (Ctrl-Z, a debugger detached) would keep the
            # signal pending, then hand it to whichever thread wakes first.
            target.send(m, _signals.SIGCONT)
        result = target.send(m, sig)
        if notes is not None:
            notes.append((m.pid, sig, result.value))
        if result is Delivery.DELIVERED:
            m.signals.append((sig, clock()))
            sent += 1
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
    moved_on: Callable[[], bool],
    clock: Clock,
    where: _Where,
    *,
    last: bool,
    resumed_after: float | None = None,
) -> tuple[StepRecord, bool]:
    started = now()
    sig = step.signal
    name = signal_name(sig)
    job_id = where.job_id
    done: set[Member] = set()
    sent = 0
    notes: _Notes | None = [] if logs.enabled(logs.DEBUG, _LOG) else None
    froze: str | None = None
    if resumed_after is not None:
        # Continuing a step a dead supervisor started: its members got the
        # signal then; only the rest of the grace is left.
        members = target.scan()
        done.update(m for m in members)
        grace = max(0.0, step.grace - resumed_after)
    elif sig in UNCATCHABLE:
        grace = step.grace
        froze = target.freeze()
        try:
            # Uncatchable: taken and delivered frozen (or by cgroup.kill), so
            # nothing forks past it. cgroup.kill goes first (the target reads
            # what it covers from the frozen cgroup): the scan for members
            # outside the cgroup then runs once the kernel has torn it down.
            covered = target.kill_all() if sig == _signals.SIGKILL else ()
            at = clock()  # one write killed them all
            for m in covered:
                if m.alive:
                    done.add(m)
                    m.signals.append((sig, at))
                    sent += 1
                    if notes is not None:
                        notes.append((m.pid, sig, "cgroup.kill"))
            members = target.scan()
            sent += _deliver(target, members, sig, done, clock, notes)
        finally:
            target.thaw()
    else:
        grace = step.grace
        # A catchable signal goes to a running tree, never a frozen one: the
        # threads of a frozen (or just thawed) process sit in the kernel's
        # signal path, and whichever returns first takes a process-wide
        # signal — a Python handler, which only the main thread runs, then
        # waits for time.sleep() to return. Nothing is gained by freezing
        # either: what forks after this scan is left to the next step, as is
        # what forks during the grace, and the last step is KILL or takes all.
        members = target.scan()
        present = [m for m in members if m.alive]
        if first is not None and (first.leader_signal is not None or first.tree_delay > 0):
            leader_sig = first.leader_signal if first.leader_signal is not None else sig
            leaders = [m for m in present if m.is_leader]
            sent += _deliver(target, leaders, leader_sig, done, clock, notes)
            # The delay is for the leader to stop its own workers. A leader
            # that had already exited before this step (leftovers after it
            # ended) will not, so then the tree is signalled at once. One
            # that exits during the delay may have started their shutdown:
            # wait on.
            if first.tree_delay > 0 and any(m.alive for m in leaders):
                _wait_until(target, clock, clock() + first.tree_delay, moved_on)
        inits = target.namespace_inits(present) if present else []
        if inits:
            # An init's exit makes the kernel SIGKILL its whole namespace: the
            # processes inside get the signal, and time to act on it, first.
            rest = [m for m in present if m not in inits]
            sent += _deliver(target, rest, sig, done, clock, notes)
            _wait_gone(target, clock, rest, clock() + step.grace / 2, moved_on)
        sent += _deliver(target, present, sig, done, clock, notes)

    deadline = clock() + grace
    if where.on_progress is not None or logs.enabled(logs.INFO, _LOG):
        alive = sum(1 for m in members if m.alive)
        logs.log(_LOG, logs.INFO,
                 f"job {job_id}: step {where.step}/{where.steps} SIG{name} to {alive} member(s)",
                 job_id=job_id, step=where.step, signal=name, members=alive,
                 signalled=sent, grace=grace)  # fmt: skip
        if where.on_progress is not None:
            where.on_progress(Progress(where.step, where.steps, name, alive, grace, sent))
    _log_signalled(job_id, notes)
    pause = RESCAN_FIRST
    empty = False
    while True:
        left = deadline - clock()
        if target.wait_empty(max(0.0, min(left, pause))):
            empty = True
            break
        if left <= 0 or moved_on():
            break
        found = target.scan()
        if last:
            # Nothing comes after the last step: members that appeared during
            # its grace get its signal too (a KILL reaches them frozen or by
            # cgroup.kill on the way, when the tree is frozen again).
            sent += _deliver(target, found, sig, done, clock, notes)
            _log_signalled(job_id, notes)
        if where.on_progress is not None:
            alive = sum(1 for m in found if m.alive)
            grace_left = max(0.0, deadline - clock())
            where.on_progress(Progress(where.step, where.steps, name, alive, grace_left, sent))
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
    exited, signals = m.exited_at, m.signals
    found_by = m.found_by
    # Most members are found by one tracker: no sort to make.
    found = tuple(found_by) if len(found_by) == 1 else tuple(sorted(found_by))
    if exited is None:
        names = tuple([_signal_name(s) for s, _ in signals])
        outcome = "denied" if m.denied else "survived"
        return MemberRecord(m.pid, m.start_time, m.cmdline, found, outcome, None, None, names)
    ended_at = max(0.0, exited - t0)
    if len(signals) == 1:
        # The common case (one KILL, or one TERM that ended it): no loop.
        ((sig, at),) = signals
        name = _signal_name(sig)
        outcome, ended_by = ("killed", name) if at <= exited else ("exited", None)
        return MemberRecord(
            m.pid, m.start_time, m.cmdline, found, outcome, ended_by, ended_at, (name,)
        )
    names = tuple([_signal_name(s) for s, _ in signals])
    outcome = "exited" if not signals or signals[0][1] > exited else "killed"
    ended_by = None
    # The last signal sent before the exit was seen.
    for i in range(len(signals) - 1, -1, -1):
        if signals[i][1] <= exited:
            ended_by = names[i]
            break
    return MemberRecord(m.pid, m.start_time, m.cmdline, found, outcome, ended_by, ended_at, names)


#: A report names a thousand members' signals: each name is looked up once.
_signal_names: dict[int, str] = {}


def _signal_name(sig: int) -> str:
    """signal_name(), remembered: a report names the same few signals 1000s of times."""
    name = _signal_names.get(sig)
    if name is None:
        name = _signal_names[sig] = signal_name(sig)
    return name
