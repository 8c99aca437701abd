"""The escalation engine against a fake process table and a fake clock.

Every time here is fake: the clock moves only when the engine waits, so the
assertions can be exact about when each signal went out.
"""

from __future__ import annotations

import itertools
import logging
import signal
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import CONT, INT, KILL, TERM, FakeClock, FakeTarget
from tether.policy import DEFAULT_FINAL_WAIT, KillScript, Policy
from tether.report import Report
from tether.terminate import RESCAN_MAX, Progress, terminate

T0 = 1000.0  # FakeClock's start
EPS = 1e-9


def run(
    target: FakeTarget,
    policy: Policy | str = "TERM,10s,KILL",
    **kw: object,
) -> Report:
    if isinstance(policy, str):
        policy = Policy.parse(policy)
    return terminate(
        target,
        policy,
        job_id="job-1",
        reason="test",
        clock=target.clock,
        wall_clock=lambda: 1234.5,
        **kw,  # type: ignore[arg-type]
    )


def record(report: Report, pid: int):  # type: ignore[no-untyped-def]
    (m,) = [m for m in report.members if m.pid == pid]
    return m


def received(proc, *, include_cont: bool = False) -> list[tuple[int, float]]:  # type: ignore[no-untyped-def]
    """(signal, time since T0) the fake process got."""
    return [(s, t - T0) for s, t in proc.received if include_cont or s != CONT]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


# -- escalation ------------------------------------------------------------


@pytest.mark.parametrize("cgroup", [True, False])
def test_default_policy_sends_term_then_kill_exactly_after_the_grace(
    clock: FakeClock, cgroup: bool
) -> None:
    target = FakeTarget(clock, cgroup=cgroup)
    stubborn = target.add(dies_on={})

    report = run(target, Policy.default())

    assert [s.signal for s in report.steps] == ["TERM", "KILL"]
    assert report.steps[0].started_at == 0.0
    assert report.steps[1].started_at == pytest.approx(10.0)
    assert report.steps[1].started_at >= 10.0 - EPS  # never early
    m = record(report, stubborn.pid)
    assert m.signals == ("TERM", "KILL")
    assert m.outcome == "killed"
    assert m.ended_by == "KILL"
    assert m.ended_at == pytest.approx(10.0)
    assert report.complete
    assert report.survivors == ()
    assert report.duration == pytest.approx(10.0)
    if cgroup:
        # cgroup.kill covered it: no per-process KILL, one kill_all in the KILL step.
        assert [s for _, s, _ in target.sends()] == [TERM]
        assert target.names().count("kill_all") == 1
    else:
        assert [(s, pytest.approx(t)) for s, t in received(stubborn)] == [(TERM, 0.0), (KILL, 10.0)]


def test_members_are_reported_ended_by_the_signal_that_ended_them(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    slow = target.add(dies_on={TERM: 2.0})
    quick = target.add(dies_on={TERM: 0.0})
    stubborn = target.add(dies_on={})

    report = run(target)

    assert (record(report, slow.pid).ended_by, record(report, slow.pid).ended_at) == ("TERM", 2.0)
    assert (record(report, quick.pid).ended_by, record(report, quick.pid).ended_at) == (
        "TERM",
        0.0,
    )
    s = record(report, stubborn.pid)
    assert s.ended_by == "KILL"
    assert s.ended_at == pytest.approx(10.0)
    assert {m.outcome for m in report.members} == {"killed"}
    # Those that died on TERM were never sent KILL.
    assert KILL not in [sig for sig, _ in slow.received + quick.received]
    assert record(report, slow.pid).signals == ("TERM",)
    assert len(report.killed) == 3


def test_tree_that_empties_during_the_grace_ends_the_termination_early(clock: FakeClock) -> None:
    target = FakeTarget(clock)
    target.add(dies_on={TERM: 3.0})
    target.add(dies_on={TERM: 1.0})

    report = run(target)

    assert [s.signal for s in report.steps] == ["TERM"]
    assert report.steps[0].left_after == 0
    assert report.duration == 3.0
    assert report.complete
    assert "kill_all" not in target.names()


def test_sigcont_precedes_every_catchable_signal_but_not_kill(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    procs = [target.add(dies_on={}) for _ in range(3)]

    run(target, "INT,1s,HUP,TERM,1s,KILL")

    sends = target.sends(include_cont=True)
    for i, (pid, sig, t) in enumerate(sends):
        following = sends[i + 1] if i + 1 < len(sends) else None
        if sig == CONT:
            assert following is not None and following[0] == pid and following[1] != KILL
            assert following[2] == t
        elif sig == KILL:
            assert i == 0 or sends[i - 1][:2] != (pid, CONT)
    for p in procs:
        assert [s for s, _ in received(p, include_cont=True)] == [
            CONT, INT, CONT, signal.SIGHUP, CONT, TERM, KILL,
        ]  # fmt: skip


def test_each_member_is_signalled_at_most_once_per_step(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    for _ in range(5):
        target.add(dies_on={})
    target.add(appears_at=T0 + 4.0, dies_on={})
    target.add(dies_on={}, forks_on=TERM, child={"dies_on": {}})

    report = run(target, "INT,3s,TERM,10s,KILL")

    counts = Counter((pid, sig) for pid, sig, _ in target.sends())
    assert counts, "nothing was sent"
    assert set(counts.values()) == {1}, counts
    # The rescans did happen (many waits), they just did not re-signal.
    assert target.names().count("wait_empty") > 20
    assert report.complete
    # The late member (t=4) and the child forked on TERM (t=3) both appeared
    # during TERM's grace: they wait for the KILL.
    assert [s.signalled for s in report.steps] == [6, 6, 8]


def test_member_appearing_during_a_grace_is_left_alone_until_the_next_step(
    clock: FakeClock,
) -> None:
    # systemd's semantics: a TERM handler's cleanup (docker compose down) runs
    # to completion instead of being TERMed ~30 ms after it starts.
    target = FakeTarget(clock)
    target.add(dies_on={})  # keeps the tree alive through the grace
    late = target.add(appears_at=T0 + 3.0, dies_on={TERM: 0.0})

    report = run(target)

    m = record(report, late.pid)
    assert (m.ended_by, m.signals) == ("KILL", ("KILL",))
    assert m.ended_at == pytest.approx(10.0)
    assert report.steps[0].signalled == 1


def test_member_appearing_during_the_last_steps_grace_gets_its_signal(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    target.add(dies_on={})
    late = target.add(appears_at=T0 + 3.0, dies_on={TERM: 0.0})

    report = run(target, "INT,1s,TERM,10s")

    assert [s for s, _ in received(late)] == [TERM]
    assert 3.0 <= received(late)[0][1] <= 3.0 + RESCAN_MAX
    assert record(report, late.pid).ended_by == "TERM"


@pytest.mark.parametrize("cgroup", [True, False])
def test_cleanup_forked_by_a_term_handler_runs_until_the_next_step(
    clock: FakeClock, cgroup: bool
) -> None:
    target = FakeTarget(clock, cgroup=cgroup)
    child = {"dies_on": {}, "cmdline": "cleanup", "exits_at": T0 + 1.0}
    parent = target.add(dies_on={TERM: 1.5}, forks_on=TERM, child=child)

    report = run(target)

    (forked,) = [p for p in target.procs if p is not parent]
    assert forked.cmdline == "cleanup"
    assert received(forked) == []  # it finished its work unsignalled
    m = record(report, forked.pid)
    assert (m.outcome, m.signals) == ("exited", ())
    assert record(report, parent.pid).ended_by == "TERM"
    assert report.complete


def test_stopped_member_acts_on_term_because_sigcont_follows(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    stopped = target.add(stopped=True, dies_on={TERM: 0.5})
    stopped_stubborn = target.add(stopped=True, dies_on={})

    report = run(target)

    m = record(report, stopped.pid)
    assert (m.ended_by, m.ended_at) == ("TERM", 0.5)
    s = record(report, stopped_stubborn.pid)
    assert s.ended_by == "KILL"
    assert report.complete


def _collapsed(target: FakeTarget) -> list[str]:
    """The call sequence without scans (or reads of known members), runs of one call shown once."""
    out: list[str] = []
    for name in target.names():
        if name not in ("scan", "known") and (not out or out[-1] != name):
            out.append(name)
    return out


@pytest.mark.parametrize("cgroup", [True, False])
def test_only_kill_is_sent_frozen(clock: FakeClock, cgroup: bool) -> None:
    target = FakeTarget(clock, cgroup=cgroup)
    for _ in range(3):
        target.add(dies_on={})

    report = run(target)

    kill = ["kill_all"] if cgroup else ["kill_all", "send"]
    assert _collapsed(target) == [
        "wait_empty",
        *("send", "wait_empty"),
        *("freeze", *kill, "thaw", "wait_empty"),
    ]
    # The catchable signal went out after the thaw, to running processes;
    # SIGKILL (and cgroup.kill) while frozen, so nothing forks past it.
    sends = [c for c in target.calls if c[0] in ("send", "kill_all")]
    term = [c for c in sends if c[0] == "send" and c[2] in (TERM, CONT)]
    kills = [c for c in sends if c[0] == "kill_all" or c[2] == KILL]
    assert term and all(c[-1] is False for c in term)
    assert kills and all(c[-1] is True for c in kills)
    # Never waits while the tree is frozen; never left frozen.
    assert not any(c[3] for c in target.calls if c[0] == "wait_empty" and c[2] > 0)
    assert not target.frozen
    assert [s.froze for s in report.steps] == [None, "cgroup" if cgroup else "sigstop"]


@pytest.mark.parametrize(
    ("cgroup", "mode", "froze"), [(False, "default", "sigstop"), (False, None, None)]
)
def test_step_records_how_the_tree_was_frozen(
    clock: FakeClock, cgroup: bool, mode: str | None, froze: str | None
) -> None:
    target = FakeTarget(clock, cgroup=cgroup, freeze_mode=mode)
    target.add(dies_on={})
    report = run(target)
    # Only the KILL step freezes: a catchable signal goes to a running tree.
    assert [s.froze for s in report.steps] == [None, froze]


def test_leader_signal_goes_to_the_leader_only_and_tree_delay_defers_the_tree(
    clock: FakeClock,
) -> None:
    target = FakeTarget(clock, cgroup=False)
    leader = target.add(is_leader=True, dies_on={})
    worker = target.add(dies_on={TERM: 0.0})
    policy = Policy.parse("TERM,10s,KILL", leader_signal=INT, tree_delay=3.0)

    report = run(target, policy)

    assert received(leader) == [(INT, 0.0), (KILL, pytest.approx(13.0))]
    assert received(worker) == [(TERM, 3.0)]
    assert record(report, leader.pid).signals == ("INT", "KILL")
    assert record(report, worker.pid).ended_by == "TERM"
    assert report.steps[0].signal == "TERM"
    assert report.steps[0].signalled == 2
    assert report.steps[1].started_at == pytest.approx(13.0)
    # The tree is not left frozen during the delay.
    assert not any(c[3] for c in target.calls if c[0] == "wait_empty" and c[2] > 0)


def test_tree_delay_ends_early_when_the_tree_empties(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False, wake_on_events=False)
    leader = target.add(is_leader=True, dies_on={INT: 1.0})
    worker = target.add(dies_on={}, exits_at=T0 + 2.0)  # the leader shuts it down
    policy = Policy.parse("TERM,10s,KILL", leader_signal=INT, tree_delay=30.0)

    report = run(target, policy)

    assert received(leader) == [(INT, 0.0)]
    assert received(worker) == []
    assert report.complete
    assert report.duration == 2.0
    assert record(report, worker.pid).outcome == "exited"


def test_tree_delay_is_not_cut_short_by_a_wake_up(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)  # wait_empty wakes at each exit
    target.add(is_leader=True, dies_on={INT: 1.0})
    worker = target.add(dies_on={TERM: 0.0})
    policy = Policy.parse("TERM,10s,KILL", leader_signal=INT, tree_delay=3.0)

    run(target, policy)

    assert received(worker) == [(TERM, 3.0)]


def test_tree_delay_is_honoured_when_wait_empty_sleeps_its_whole_timeout(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False, wake_on_events=False)
    target.add(is_leader=True, dies_on={INT: 1.0})
    worker = target.add(dies_on={TERM: 0.0})
    policy = Policy.parse("TERM,10s,KILL", leader_signal=INT, tree_delay=3.0)
    run(target, policy)
    assert received(worker) == [(TERM, 3.0)]


# -- skip to last ----------------------------------------------------------


def test_a_further_cancel_during_a_grace_moves_to_the_next_step(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    p = target.add(dies_on={})

    report = run(target, "INT,5s,TERM,10s,KILL", advances=lambda: int(clock() >= T0 + 1.0))

    assert [s.signal for s in report.steps] == ["INT", "TERM", "KILL"]
    (intr, term, kill) = received(p)
    assert intr == (INT, 0.0)
    assert term[0] == TERM and 1.0 <= term[1] <= 1.0 + RESCAN_MAX
    assert kill == (KILL, pytest.approx(term[1] + 10.0))
    assert report.complete


def test_github_actions_sequence_ends_a_term_ignorer_at_the_runners_term(
    clock: FakeClock,
) -> None:
    # The runner sends INT, TERM 7.5 s later, KILL at 10 s. tether got the INT
    # (the default policy's TERM went out); the runner's TERM moves it to KILL.
    target = FakeTarget(clock, cgroup=False)
    p = target.add(dies_on={})

    run(target, Policy.default(), advances=lambda: int(clock() >= T0 + 7.5))

    assert [s for s, _ in received(p)] == [TERM, KILL]
    assert 7.5 <= received(p)[1][1] <= 7.5 + RESCAN_MAX


def test_cancels_requested_before_the_first_step_count(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    p = target.add(dies_on={})

    report = run(target, "INT,5s,TERM,10s,KILL", advances=lambda: 1)

    assert [s for s, _ in received(p)] == [TERM, KILL]
    assert [s.signal for s in report.steps] == ["TERM", "KILL"]


def test_more_cancels_than_steps_stop_at_the_last(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    p = target.add(dies_on={})

    report = run(target, "TERM,10s,KILL", advances=lambda: 7)

    assert [s for s, _ in received(p)] == [KILL]
    assert [s.signal for s in report.steps] == ["KILL"]


def test_moving_on_keeps_the_final_wait(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    target.add(dies_on={}, kill_delay=1.0)  # a short D state after KILL

    report = run(target, "TERM,10s,KILL", advances=lambda: int(clock() >= T0 + 1.0))

    assert [s.signal for s in report.steps] == ["TERM", "KILL"]
    assert report.complete


def test_resume_continues_a_started_step_without_sending_it_again(clock: FakeClock) -> None:
    # A watchdog taking over from a supervisor SIGKILLed 4 s into TERM,10s,KILL:
    # the TERM went out then; only 6 s of its grace are left.
    target = FakeTarget(clock, cgroup=False)
    p = target.add(dies_on={})
    steps: list[tuple[int, float]] = []

    report = run(
        target, "TERM,10s,KILL", resume=(0, 4.0), on_step=lambda i, t: steps.append((i, t))
    )

    assert received(p) == [(KILL, pytest.approx(6.0))]
    assert [s.signal for s in report.steps] == ["TERM", "KILL"]
    assert [i for i, _ in steps] == [0, 1]
    assert steps[0][1] == pytest.approx(1234.5 - 4.0)


def test_policy_skipping_to_last_runs_only_the_last_step(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    p = target.add(dies_on={})
    policy = Policy.parse("INT,2s,TERM,10s,KILL", leader_signal=signal.SIGHUP, tree_delay=4.0)

    report = run(target, policy.skipping_to_last())

    assert received(p) == [(KILL, 0.0)]
    assert report.duration == 0.0


# -- survivors and bounds ----------------------------------------------------


@pytest.mark.parametrize("cgroup", [True, False])
def test_unkillable_member_is_a_survivor_and_time_is_bounded(
    clock: FakeClock, cgroup: bool
) -> None:
    target = FakeTarget(clock, cgroup=cgroup)
    stuck = target.add(unkillable=True, cmdline="fuse-daemon /mnt")
    ok = target.add(dies_on={})

    report = run(target, "INT,1s,TERM,2s,KILL,3s")

    assert not report.complete
    assert [s.pid for s in report.survivors] == [stuck.pid]
    assert report.survivors[0].state == "D"
    assert report.survivors[0].cmdline == "fuse-daemon /mnt"
    m = record(report, stuck.pid)
    assert (m.outcome, m.ended_by, m.ended_at) == ("survived", None, None)
    assert m.signals == ("INT", "TERM", "KILL")
    assert record(report, ok.pid).ended_by == "KILL"
    assert report.duration == pytest.approx(1.0 + 2.0 + 3.0)
    assert report.duration <= 6.0 + EPS
    assert [s.left_after for s in report.steps] == [2, 2, 1]
    counts = Counter((pid, sig) for pid, sig, _ in target.sends())
    assert set(counts.values()) == {1}


def test_default_final_wait_bounds_an_unkillable_tree(clock: FakeClock) -> None:
    target = FakeTarget(clock)
    target.add(unkillable=True)
    report = run(target, Policy.default())
    assert report.duration == pytest.approx(10.0 + DEFAULT_FINAL_WAIT)
    assert not report.complete


def test_denied_member_is_tried_once_and_reported(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    denied = target.add(denied=True, cmdline="setuid-helper")
    target.add(dies_on={TERM: 0.0})

    report = run(target)

    assert [(pid, sig) for pid, sig, _ in target.sends() if pid == denied.pid] == [
        (denied.pid, TERM)
    ]
    m = record(report, denied.pid)
    assert (m.outcome, m.ended_by, m.signals) == ("denied", None, ())
    assert not report.complete
    assert [s.pid for s in report.survivors] == [denied.pid]
    assert "permission" in report.survivors[0].reason


def test_member_that_exited_before_any_signal_is_reported_exited(clock: FakeClock) -> None:
    target = FakeTarget(clock)
    gone = target.add(dies_on={})
    target.add(dies_on={TERM: 0.0})
    target.scan()  # found while alive...
    target.exit(gone)  # ...then exited on its own

    report = run(target)

    m = record(report, gone.pid)
    assert (m.outcome, m.ended_by, m.signals) == ("exited", None, ())
    assert received(gone) == []


# -- kill scripts --------------------------------------------------------------


def test_kill_script_precedes_the_signals(clock: FakeClock) -> None:
    target = FakeTarget(clock)
    procs = [target.add(dies_on={TERM: 0.0}) for _ in range(2)]
    script = KillScript(("/opt/stop-it", "--now"), "precede", timeout=7.0)

    report = run(target, Policy.parse("TERM,10s,KILL", kill_script=script))

    names = target.names()
    assert names.index("kill_script") < names.index("send")
    (call,) = [c for c in target.calls if c[0] == "kill_script"]
    assert call[1:] == (("/opt/stop-it", "--now"), 7.0, tuple(p.pid for p in procs))
    assert report.kill_script == "kill script /opt/stop-it exited with status 0"
    assert [s.signal for s in report.steps] == ["TERM"]
    assert report.complete


def test_kill_script_that_empties_the_tree_leaves_nothing_to_signal(clock: FakeClock) -> None:
    target = FakeTarget(clock, script=FakeTarget.kill_everything)
    procs = [target.add(dies_on={}) for _ in range(2)]

    report = run(target, Policy.parse("TERM,10s,KILL", kill_script=KillScript(("stop",))))

    assert target.sends(include_cont=True) == []
    assert "freeze" not in target.names()
    assert report.steps == ()
    assert report.complete
    assert {record(report, p.pid).outcome for p in procs} == {"exited"}


def test_kill_script_replace_sends_no_signal_and_waits_the_final_grace(clock: FakeClock) -> None:
    target = FakeTarget(clock)
    procs = [target.add(dies_on={}) for _ in range(2)]
    policy = Policy.parse("TERM,10s,KILL,4s", kill_script=KillScript(("noop",), "replace"))

    report = run(target, policy)

    assert target.sends(include_cont=True) == []
    assert not {"freeze", "kill_all"} & set(target.names())
    assert report.steps == ()
    assert report.duration == 4.0
    assert not report.complete
    assert sorted(s.pid for s in report.survivors) == [p.pid for p in procs]
    assert {m.outcome for m in report.members} == {"survived"}


def test_a_failing_replacing_kill_script_falls_back_to_the_signals(clock: FakeClock) -> None:
    # Never weaker than asked: the job must not outlive tether because the
    # user's stop script exited 1 before doing anything.
    target = FakeTarget(clock, cgroup=False)
    p = target.add(dies_on={})
    target.script_status = 1
    policy = Policy.parse("TERM,2s,KILL", kill_script=KillScript(("stop",), "replace"))

    report = run(target, policy)

    assert [s for s, _ in received(p)] == [TERM, KILL]
    assert report.complete
    assert report.kill_script is not None
    assert "exited with status 1" in report.kill_script
    assert "the policy's signals were sent instead" in report.kill_script
    assert "the policy's signals were sent instead" in report.render_text()


def test_report_names_what_confirmed_the_tree_empty(clock: FakeClock) -> None:
    target = FakeTarget(clock)
    target.add(dies_on={TERM: 0.1})
    report = run(target)
    assert report.confirmed_by == "the fake kernel"
    assert "tree confirmed empty by the fake kernel" in report.render_text()
    stuck = FakeTarget(clock)
    stuck.add(unkillable=True)
    report = run(stuck)
    assert report.confirmed_by is None
    assert "NOT confirmed empty" in report.render_text()


def test_kill_script_replace_that_works_is_complete(clock: FakeClock) -> None:
    target = FakeTarget(clock, script=FakeTarget.kill_everything)
    target.add(dies_on={})
    policy = Policy.parse("TERM,10s,KILL", kill_script=KillScript(("stop",), "replace"))
    report = run(target, policy)
    assert target.sends(include_cont=True) == []
    assert report.complete
    assert report.kill_script is not None


def _staggered_exits(target: FakeTarget) -> None:
    for i, p in enumerate(target.procs, start=1):
        p.exits_at = target.clock() + i


def test_kill_script_replace_waits_through_wake_ups(clock: FakeClock) -> None:
    target = FakeTarget(clock, script=_staggered_exits)
    for _ in range(3):
        target.add(dies_on={})
    policy = Policy.parse("TERM,10s,KILL", kill_script=KillScript(("stop",), "replace"))

    report = run(target, policy)

    assert report.complete
    assert report.duration == 3.0


def test_kill_script_replace_honoured_when_wait_empty_sleeps_its_whole_timeout(
    clock: FakeClock,
) -> None:
    target = FakeTarget(clock, script=_staggered_exits, wake_on_events=False)
    for _ in range(3):
        target.add(dies_on={})
    policy = Policy.parse("TERM,10s,KILL", kill_script=KillScript(("stop",), "replace"))
    report = run(target, policy)
    assert report.complete


# -- empty trees and records -----------------------------------------------------


def test_empty_tree_sends_nothing(clock: FakeClock) -> None:
    target = FakeTarget(clock)

    report = run(target)

    assert target.sends(include_cont=True) == []
    assert not {"freeze", "kill_all", "thaw"} & set(target.names())
    assert report.steps == ()
    assert report.members == ()
    assert report.complete
    assert report.duration == 0.0


def test_tree_whose_members_all_exited_sends_nothing(clock: FakeClock) -> None:
    target = FakeTarget(clock)
    procs = [target.add() for _ in range(2)]
    target.scan()
    for p in procs:
        target.exit(p)

    report = run(target)

    assert target.sends(include_cont=True) == []
    assert report.complete
    assert {m.outcome for m in report.members} == {"exited"}


def test_step_records_and_report_fields(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False, caveats=("cookie can be scrubbed",))
    slow = target.add(dies_on={TERM: 2.0})
    target.add(dies_on={})

    report = run(target)

    term, kill = report.steps
    assert (term.signal, term.started_at, term.grace, term.signalled, term.left_after) == (
        "TERM", 0.0, 10.0, 2, 1,
    )  # fmt: skip
    assert term.duration == pytest.approx(10.0)
    assert term.froze is None  # catchable: sent to the running tree
    assert (kill.signal, kill.grace, kill.signalled, kill.left_after) == (
        "KILL", DEFAULT_FINAL_WAIT, 1, 0,
    )  # fmt: skip
    assert kill.started_at == pytest.approx(10.0)
    assert kill.duration == pytest.approx(0.0)
    assert report.job_id == "job-1"
    assert report.reason == "test"
    assert report.policy == "TERM,10s,KILL,5s"
    assert report.started_at == 1234.5
    assert report.trackers == target.trackers
    assert report.caveats == ("cookie can be scrubbed",)
    assert report.kill_script is None
    m = record(report, slow.pid)
    assert m.start_time == slow.member.start_time  # type: ignore[union-attr]
    assert m.cmdline == slow.cmdline
    assert m.found_by == ("session", "walk")


# -- a property over random trees ---------------------------------------------------

_behaviour = st.fixed_dictionaries(
    {
        "dies_on": st.dictionaries(
            st.sampled_from([TERM, INT, signal.SIGHUP]),
            st.integers(0, 20_000).map(lambda ms: ms / 1000),
            max_size=2,
        ),
        "stopped": st.booleans(),
        "appears_at": st.integers(0, 15_000).map(lambda ms: T0 + ms / 1000),
    }
)


@settings(max_examples=60, deadline=None)
@given(
    behaviours=st.lists(_behaviour, max_size=6),
    cgroup=st.booleans(),
    policy=st.sampled_from(["TERM,10s,KILL", "INT,2s,TERM,3s,KILL,1s", "HUP,TERM,1s,KILL"]),
)
def test_any_killable_tree_ends_complete_without_storms(
    behaviours: list[dict[str, object]], cgroup: bool, policy: str
) -> None:
    clock = FakeClock(T0)
    target = FakeTarget(clock, cgroup=cgroup)
    for b in behaviours:
        target.add(**b)
    p = Policy.parse(policy)

    report = run(target, p)

    # Members that appear after the tree was confirmed empty are not this job's.
    assert report.complete
    assert report.duration <= sum(s.grace for s in p.steps) + EPS
    counts = Counter((pid, sig) for pid, sig, _ in target.sends())
    assert not counts or set(counts.values()) == {1}
    for m in report.members:
        assert m.outcome in {"killed", "exited"}
        if m.ended_by is not None:
            assert m.ended_by == m.signals[-1]


def test_tree_delay_is_skipped_when_the_leader_had_already_exited(clock: FakeClock) -> None:
    """Leftovers after the leader ended: nobody is left to shut the workers down."""
    target = FakeTarget(clock, cgroup=False)
    leader = target.add(is_leader=True, dies_on={INT: 0.0})
    target.exit(leader)
    worker = target.add(dies_on={TERM: 0.0})
    policy = Policy.parse("TERM,10s,KILL", leader_signal=INT, tree_delay=30.0)

    report = run(target, policy)

    assert received(worker) == [(TERM, 0.0)]
    assert report.duration < 1.0


# -- progress and log events -------------------------------------------------


def test_progress_is_given_at_each_step_and_rescan_with_the_grace_left(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    target.add(dies_on={})  # ignores TERM
    target.add(dies_on={TERM: 1.0})  # takes a second to shut down
    seen: list[tuple[float, Progress]] = []

    report = run(target, "TERM,3s,KILL", on_progress=lambda p: seen.append((clock() - T0, p)))

    assert seen[0] == (0.0, Progress(1, 2, "TERM", 2, 3.0, signalled=2))
    term = [(t, p) for t, p in seen if p.signal == "TERM"]
    assert all(p.step == 1 and p.steps == 2 for _, p in term)
    for t, p in term:
        assert p.grace_left == pytest.approx(max(0.0, 3.0 - t))
        assert p.members_left == (2 if t < 1.0 else 1)
    assert any(p.members_left == 1 for _, p in term)  # the exit was seen during the grace
    times = [t for t, _ in term]
    assert times == sorted(times)
    assert all(b - a <= RESCAN_MAX + EPS for a, b in itertools.pairwise(times))
    kill = [p for _, p in seen if p.signal == "KILL"]
    assert kill[0] == Progress(2, 2, "KILL", 1, DEFAULT_FINAL_WAIT, signalled=1)
    assert report.complete


def test_progress_after_moving_on_names_the_step_reached(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    target.add(dies_on={})
    seen: list[Progress] = []

    run(target, "INT,5s,TERM,10s,KILL", advances=lambda: 2 * int(clock() >= T0 + 1.0),
        on_progress=seen.append)  # fmt: skip

    assert sorted({(p.step, p.steps, p.signal) for p in seen}) == [(1, 3, "INT"), (3, 3, "KILL")]


def test_progress_callback_changes_nothing_the_engine_does(clock: FakeClock) -> None:
    def scenario(on_progress: Callable[[Progress], None] | None) -> tuple[object, ...]:
        c = FakeClock(T0)
        target = FakeTarget(c, cgroup=False)
        target.add(dies_on={})
        target.add(dies_on={TERM: 0.7}, forks_on=TERM, child={"dies_on": {}}, fork_delay=0.3)
        report = terminate(target, Policy.parse("TERM,2s,KILL"), job_id="j", reason="r",
                           clock=c, wall_clock=lambda: 0.0, on_progress=on_progress)  # fmt: skip
        return report.to_dict(), target.calls

    seen: list[Progress] = []
    assert scenario(seen.append) == scenario(None)  # no extra scans, same signals, same times
    assert seen


def test_engine_logs_steps_signals_and_survivors(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tether")
    target = FakeTarget(clock, cgroup=False)
    stuck = target.add(unkillable=True)
    ok = target.add(dies_on={TERM: 0.0})

    run(target, "TERM,1s,KILL,1s")

    events = [(r.levelname, r.name, dict(r.tether_fields)) for r in caplog.records]  # type: ignore[attr-defined]
    assert all(name == "tether.terminate" for _, name, _ in events)
    assert all(f["job_id"] == "job-1" for _, _, f in events)
    steps = [f for level, _, f in events if level == "INFO" and "members" in f]
    assert [(f["step"], f["signal"], f["members"]) for f in steps] == [
        (1, "TERM", 2),
        (2, "KILL", 1),
    ]
    done = [f for level, _, f in events if level == "INFO" and "left" in f]
    assert [(f["signal"], f["left"]) for f in done] == [("TERM", 1), ("KILL", 1)]
    signalled = {(f["pid"], f["signal"]) for level, _, f in events if level == "DEBUG"}
    assert signalled == {(stuck.pid, "TERM"), (ok.pid, "TERM"), (stuck.pid, "KILL")}
    warnings = [f for level, _, f in events if level == "WARNING"]
    assert [(f["pid"], f["state"]) for f in warnings] == [(stuck.pid, "D")]


# -- PID namespaces ------------------------------------------------------------


def test_a_namespace_init_is_signalled_after_the_rest_has_acted(clock: FakeClock) -> None:
    # An init's exit SIGKILLs its namespace: the processes inside get TERM
    # and finish their handlers (0.5 s) before the init is signalled.
    target = FakeTarget(clock, cgroup=False)
    init = target.add(ns_init=True, dies_on={TERM: 0.0})
    inner = target.add(dies_on={TERM: 0.5})

    report = run(target, "TERM,10s,KILL")

    assert received(inner) == [(TERM, 0.0)]
    ((sig, t),) = received(init)
    assert sig == TERM and 0.5 <= t <= 0.5 + RESCAN_MAX
    assert record(report, inner.pid).ended_by == "TERM"
    assert report.complete and [s.signal for s in report.steps] == ["TERM"]


def test_a_namespace_init_waits_at_most_half_the_grace(clock: FakeClock) -> None:
    target = FakeTarget(clock, cgroup=False)
    init = target.add(ns_init=True, dies_on={TERM: 0.0})
    target.add(dies_on={})  # ignores TERM inside the namespace

    run(target, "TERM,10s,KILL")

    assert received(init)[0][0] == TERM
    assert 5.0 <= received(init)[0][1] <= 5.0 + RESCAN_MAX


# -- KILL by cgroup.kill first ---------------------------------------------------


def test_cgroup_kill_goes_first_and_members_outside_the_cgroup_still_get_kill(
    clock: FakeClock,
) -> None:
    """cgroup.kill precedes the scan of the KILL step; the scan after it finds
    a member that left the cgroup, which gets its own SIGKILL, still frozen."""
    target = FakeTarget(clock, cgroup=True)
    inside = target.add(dies_on={})
    escaped = target.add(dies_on={}, outside_cgroup=True)

    report = run(target, Policy.parse("KILL"))

    names = target.names()
    assert "scan" not in names[: names.index("kill_all")]
    assert "scan" in names[names.index("kill_all") :]
    assert received(inside) == []  # cgroup.kill reached it
    assert record(report, inside.pid).signals == ("KILL",)
    assert received(escaped) == [(KILL, 0.0)]
    kill_send = next(c for c in target.calls if c[0] == "send" and c[2] == KILL)
    assert kill_send[-1] is True  # frozen
    assert report.complete
    assert {m.pid for m in report.members} == {inside.pid, escaped.pid}
    assert {record(report, p.pid).ended_by for p in (inside, escaped)} == {"KILL"}


def test_members_cgroup_kill_covered_unscanned_are_in_the_report(clock: FakeClock) -> None:
    """With a KILL-only policy nothing is scanned before cgroup.kill: the
    members it covered are identified first and reported as killed."""
    target = FakeTarget(clock, cgroup=True)
    procs = [target.add(dies_on={}) for _ in range(3)]

    report = run(target, Policy.parse("KILL"))

    assert report.complete
    assert {m.pid for m in report.members} == {p.pid for p in procs}
    assert {m.outcome for m in report.members} == {"killed"}
    assert [s for _, s, _ in target.sends()] == []  # cgroup.kill, no per-process KILL
