"""A report's member record (terminate._record), held to the plain rule it
was written for speed from: any signals, any exit, any trackers."""

from __future__ import annotations

import signal

from hypothesis import given, strategies

from tether.policy import signal_name
from tether.report import MemberRecord
from tether.terminate import Member, _record


def reference(m: Member, t0: float) -> MemberRecord:
    """The rule, plainly: killed if the first signal came no later than the
    exit; ended by the last signal sent no later than the exit."""
    names = tuple(signal_name(s) for s, _ in m.signals)
    if m.exited_at is None:
        outcome = "denied" if m.denied else "survived"
        return MemberRecord(m.pid, m.start_time, m.cmdline, tuple(sorted(m.found_by)), outcome,
                            None, None, names)  # fmt: skip
    exited = m.exited_at
    before = [name for (_s, at), name in zip(m.signals, names, strict=True) if at <= exited]
    outcome = "killed" if m.signals and m.signals[0][1] <= exited else "exited"
    return MemberRecord(
        m.pid,
        m.start_time,
        m.cmdline,
        tuple(sorted(m.found_by)),
        outcome,
        before[-1] if before else None,
        max(0.0, exited - t0),
        names,
    )


SIGNALS = strategies.sampled_from([signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP])
TIMES = strategies.sampled_from([0.0, 1.0, 2.0, 3.0, 4.5])


@given(
    strategies.lists(strategies.tuples(SIGNALS, TIMES), max_size=4).map(
        lambda xs: sorted(xs, key=lambda x: x[1])
    ),
    strategies.none() | TIMES,
    strategies.sets(strategies.sampled_from(["cgroup", "walk", "session", "cookie"]), min_size=1),
    strategies.booleans(),
    TIMES,
)
def test_a_record_follows_the_rule(
    signals: list[tuple[int, float]],
    exited: float | None,
    found_by: set[str],
    denied: bool,
    t0: float,
) -> None:
    m = Member(pid=7, starttime=70, start_time=1.5, cmdline="x y", found_by=found_by)
    m.signals.extend(signals)
    m.exited_at = exited
    m.denied = denied
    assert _record(m, t0) == reference(m, t0)
