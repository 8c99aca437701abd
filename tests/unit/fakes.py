"""A fake clock and a fake process table for the escalation engine's unit tests.

No real process is touched. Fake time moves only when the engine waits
(:meth:`FakeTarget.wait_empty`), and then only to the next event (a fake
process exits or appears) or to the end of the wait, so a 10 s grace costs
nothing and every time in a report is exact.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tether.process import Delivery
from tether.report import Survivor
from tether.terminate import Member
from tether.tracking.base import TrackerStatus

TERM = signal.SIGTERM
KILL = signal.SIGKILL
CONT = signal.SIGCONT
INT = signal.SIGINT

#: Fake processes start this long after the epoch (their Unix start_time).
EPOCH = 1_700_000_000.0


class FakeClock:
    """Monotonic fake time; only :meth:`advance` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance_to(self, t: float) -> None:
        assert t >= self.t, f"fake time went backwards: {self.t} -> {t}"
        self.t = t


@dataclass(eq=False)
class FakeProc:
    """One fake process and its behaviour.

    Attributes:
        dies_on: signal -> fake seconds between acting on it and exiting.
            ``{}`` ignores every catchable signal. SIGKILL is not listed: it
            always kills, unless ``unkillable``.
        forks_on: a signal on which the process forks ``child`` (once).
        stopped: acts on catchable signals only after a SIGCONT.
        unkillable: in D state; nothing, not even SIGKILL, ends it.
        kill_delay: fake seconds between SIGKILL and the exit (a short D state).
        denied: sending it anything fails with EPERM.
        appears_at: fake time at which the process comes into existence.
        exits_at: fake time at which it exits on its own.
    """

    pid: int
    cmdline: str
    dies_on: dict[int, float] = field(default_factory=lambda: {TERM: 0.0})
    forks_on: int | None = None
    child: dict[str, object] = field(default_factory=dict)
    fork_delay: float = 0.0
    stopped: bool = False
    unkillable: bool = False
    kill_delay: float = 0.0
    denied: bool = False
    is_leader: bool = False
    ns_init: bool = False  # the init of a PID namespace: its exit kills the namespace
    outside_cgroup: bool = False  # left the job's cgroup: cgroup.kill misses it
    appears_at: float = float("-inf")
    exits_at: float | None = None
    # state
    died_at: float | None = None
    pending: list[int] = field(default_factory=list)
    received: list[tuple[int, float]] = field(default_factory=list)
    forked: bool = False
    member: Member | None = None

    @property
    def alive(self) -> bool:
        return self.died_at is None


class FakeTarget:
    """A :class:`tether.terminate.Target` over fake processes.

    Args:
        clock: the fake clock the engine is also given.
        cgroup: ``kill_all`` kills every member at once (cgroup.kill) and
            freezing is by cgroup; otherwise ``kill_all`` covers nobody.
        freeze_mode: what :meth:`freeze` reports (None: freezing unavailable).
        wake_on_events: ``wait_empty`` returns at the next event (a wake-up, as
            the protocol allows); otherwise only when the tree empties or the
            timeout passes, like the real Membership without a wake fd.
        script: what the kill script does to the fake tree, if anything.
    """

    def __init__(
        self,
        clock: FakeClock,
        *,
        cgroup: bool = True,
        freeze_mode: str | None = "default",
        wake_on_events: bool = True,
        script: Callable[[FakeTarget], None] | None = None,
        caveats: Sequence[str] = (),
    ) -> None:
        self.clock = clock
        self.cgroup = cgroup
        self.freeze_mode = (
            ("cgroup" if cgroup else "sigstop") if freeze_mode == "default" else (freeze_mode)
        )
        self.wake_on_events = wake_on_events
        self.script = script
        self.script_status = 0
        self._caveats = tuple(caveats)
        self.procs: list[FakeProc] = []
        self.members: list[Member] = []
        self.frozen = False
        self.calls: list[tuple[object, ...]] = []
        self._next_pid = 100
        self._waits = 0

    # -- building the fake tree -------------------------------------------

    def add(self, **behaviour: object) -> FakeProc:
        pid = self._next_pid
        self._next_pid += 1
        behaviour.setdefault("cmdline", f"fake-{pid} --serve")
        proc = FakeProc(pid=pid, **behaviour)  # type: ignore[arg-type]
        self.procs.append(proc)
        return proc

    def exit(self, proc: FakeProc) -> None:
        """Make ``proc`` exit now, on its own."""
        proc.died_at = self.clock()

    def kill_everything(self) -> None:
        """What a thorough kill script does: every killable process exits now."""
        for p in self._visible():
            if p.alive and not p.unkillable:
                p.died_at = self.clock()

    # -- what tests inspect -----------------------------------------------

    def sends(self, *, include_cont: bool = False) -> list[tuple[int, int, float]]:
        """(pid, signal, fake time) of every send, in order."""
        return [
            (c[1], c[2], c[3])  # type: ignore[misc]
            for c in self.calls
            if c[0] == "send" and (include_cont or c[2] != CONT)
        ]

    def names(self) -> list[str]:
        return [str(c[0]) for c in self.calls]

    # -- internals ---------------------------------------------------------

    def _visible(self) -> list[FakeProc]:
        now = self.clock()
        return [p for p in self.procs if p.appears_at <= now]

    def _settle(self) -> None:
        """Exits that are due by now happen."""
        now = self.clock()
        for p in self._visible():
            if p.alive and p.exits_at is not None and p.exits_at <= now and not p.unkillable:
                p.died_at = p.exits_at

    def _observe(self) -> None:
        self._settle()
        for p in self.procs:
            if p.member is not None and p.died_at is not None and p.member.exited_at is None:
                p.member.exited_at = p.died_at

    def _empty(self) -> bool:
        return not any(p.alive for p in self._visible())

    def _next_event(self) -> float | None:
        now = self.clock()
        times = [p.appears_at for p in self.procs if p.appears_at > now]
        times += [
            p.exits_at
            for p in self.procs
            if p.alive and p.exits_at is not None and p.exits_at > now and not p.unkillable
        ]
        return min(times, default=None)

    def _kill(self, proc: FakeProc) -> None:
        if proc.unkillable:
            return
        due = self.clock() + proc.kill_delay
        proc.exits_at = due if proc.exits_at is None else min(proc.exits_at, due)
        self._settle()

    def _act(self, proc: FakeProc) -> None:
        """The process acts on its pending signals, if it can run."""
        if self.frozen or proc.stopped or not proc.alive:
            return
        now = self.clock()
        while proc.pending:
            sig = proc.pending.pop(0)
            if sig in proc.dies_on:
                due = now + proc.dies_on[sig]
                proc.exits_at = due if proc.exits_at is None else min(proc.exits_at, due)
            if sig == proc.forks_on and not proc.forked:
                proc.forked = True
                self.add(appears_at=now + proc.fork_delay, **proc.child)
        self._settle()

    # -- the Target protocol -----------------------------------------------

    def scan(self) -> Sequence[Member]:
        self.calls.append(("scan", self.clock()))
        self._adopt_visible()
        return list(self.members)

    def known(self) -> Sequence[Member]:
        self.calls.append(("known", self.clock()))
        return list(self.members)

    def _adopt_visible(self) -> None:
        self._observe()
        for p in self._visible():
            if p.alive and p.member is None:
                p.member = Member(
                    pid=p.pid,
                    starttime=p.pid * 10,
                    start_time=EPOCH + p.pid,
                    cmdline=p.cmdline,
                    found_by={"cgroup"} if self.cgroup else {"walk", "session"},
                    is_leader=p.is_leader,
                )
                self.members.append(p.member)

    def freeze(self) -> str | None:
        self.calls.append(("freeze", self.clock()))
        if self.freeze_mode is not None:
            self.frozen = True
        return self.freeze_mode

    def thaw(self) -> None:
        self.calls.append(("thaw", self.clock()))
        self.frozen = False
        for p in list(self.procs):
            self._act(p)

    def _proc(self, member: Member) -> FakeProc:
        for p in self.procs:
            if p.member is member:
                return p
        raise AssertionError(f"engine sent to a member the target never gave it: {member}")

    def send(self, member: Member, sig: int) -> Delivery:
        self.calls.append(("send", member.pid, sig, self.clock(), self.frozen))
        proc = self._proc(member)
        self._settle()
        if not proc.alive:
            member.exited_at = proc.died_at
            return Delivery.GONE
        if proc.denied:
            return Delivery.DENIED
        proc.received.append((sig, self.clock()))
        if sig == KILL:
            self._kill(proc)
        elif sig == CONT:
            proc.stopped = False
            self._act(proc)
        elif sig == signal.SIGSTOP:
            proc.stopped = True
        elif not proc.unkillable:
            proc.pending.append(sig)
            self._act(proc)
        return Delivery.DELIVERED

    def kill_all(self) -> set[Member]:
        self.calls.append(("kill_all", self.clock(), self.frozen))
        if not self.cgroup:
            return set()
        # As Membership: what cgroup.kill covers is read from the cgroup first.
        self._adopt_visible()
        covered: set[Member] = set()
        for p in self._visible():
            if not p.alive or p.outside_cgroup:
                continue
            self._kill(p)
            if p.member is not None:
                covered.add(p.member)
        return covered

    def wait_empty(self, timeout: float) -> bool:
        self.calls.append(("wait_empty", self.clock(), timeout, self.frozen))
        self._waits += 1
        assert self._waits < 100_000, "engine is spinning on wait_empty"
        assert timeout >= 0, f"negative wait {timeout}"
        self._observe()
        if self._empty() or timeout == 0:
            return self._empty()
        end = self.clock() + timeout
        while True:
            nxt = self._next_event()
            if nxt is None or nxt > end:
                self.clock.advance_to(end)
                self._observe()
                return self._empty()
            self.clock.advance_to(nxt)
            self._observe()
            if self.wake_on_events or self._empty():
                return self._empty()

    def survivors(self) -> list[Survivor]:
        out = []
        for p in self.procs:
            m = p.member
            if m is None or not m.alive:
                continue
            if p.denied:
                state, reason = "S", "permission denied: tether may not signal this process"
            elif p.unkillable:
                state, reason = "D", "in uninterruptible sleep (D state)"
            else:
                state, reason = "S", "still alive after the last step"
            out.append(
                Survivor(
                    pid=p.pid,
                    start_time=m.start_time,
                    cmdline=p.cmdline,
                    state=state,
                    wchan="fuse_wait" if p.unkillable else None,
                    reason=reason,
                )
            )
        return out

    def namespace_inits(self, members: Sequence[Member]) -> list[Member]:
        inits = {id(p.member) for p in self.procs if p.ns_init and p.member is not None}
        return [m for m in members if id(m) in inits]

    def run_kill_script(self, argv: Sequence[str], timeout: float) -> tuple[bool, str]:
        live = [m.pid for m in self.members if m.alive]
        self.calls.append(("kill_script", tuple(argv), timeout, tuple(live)))
        if self.script is not None:
            self.script(self)
        status = self.script_status
        return status == 0, f"kill script {argv[0]} exited with status {status}"

    @property
    def confirmation(self) -> str:
        return "the fake kernel"

    @property
    def trackers(self) -> tuple[TrackerStatus, ...]:
        if self.cgroup:
            return (TrackerStatus("cgroup", True, "fake cgroup"),)
        return (
            TrackerStatus("cgroup", False, "fake: no cgroup"),
            TrackerStatus("walk", True, "fake walk"),
        )

    @property
    def caveats(self) -> tuple[str, ...]:
        return self._caveats
