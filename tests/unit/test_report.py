"""Reports: stable JSON keys, JSON round trip (to_dict / from_dict), and a text
rendering that stays in rows."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import TetherError
from tether.report import (
    FROZE,
    OUTCOMES,
    SCHEMA_VERSION,
    MalformedReportError,
    MemberRecord,
    Report,
    StepRecord,
    Survivor,
)
from tether.tracking.base import TrackerStatus

TOP_KEYS = {
    "schema",
    "job_id",
    "reason",
    "policy",
    "started_at",
    "duration",
    "complete",
    "members",
    "survivors",
    "trackers",
    "steps",
    "caveats",
    "kill_script",
    "confirmed_by",
}
MEMBER_KEYS = {
    "pid",
    "start_time",
    "cmdline",
    "found_by",
    "outcome",
    "ended_by",
    "ended_at",
    "signals",
}
SURVIVOR_KEYS = {"pid", "start_time", "cmdline", "state", "wchan", "reason"}
TRACKER_KEYS = {"name", "used", "reason"}
STEP_KEYS = {"signal", "started_at", "grace", "signalled", "left_after", "duration", "froze"}


_ROW = re.compile(r"^ +(\d+)  (killed|exited|survived|denied) ")


def rows(text: str) -> list[tuple[str, str]]:
    """(pid, line) of each member row of a rendered report."""
    return [(m.group(1), line) for line in text.splitlines() if (m := _ROW.match(line))]


def member(pid: int, cmdline: str = "sleep 100", **kw: object) -> MemberRecord:
    fields: dict[str, object] = {
        "pid": pid,
        "start_time": 1_700_000_000.0 + pid,
        "cmdline": cmdline,
        "found_by": ("cgroup", "walk"),
        "outcome": "killed",
        "ended_by": "TERM",
        "ended_at": 0.0123456789,
        "signals": ("TERM",),
    }
    fields.update(kw)
    return MemberRecord(**fields)  # type: ignore[arg-type]


def make_report(**kw: object) -> Report:
    fields: dict[str, object] = {
        "job_id": "j-42",
        "reason": "timeout",
        "policy": "TERM,10s,KILL,5s",
        "started_at": 1_700_000_500.25,
        "duration": 10.123456789,
        "complete": False,
        "members": (
            member(4242, "sh -c ./serve"),
            member(
                4243,
                "python3 worker.py",
                outcome="survived",
                ended_by=None,
                ended_at=None,
                signals=("TERM", "KILL"),
            ),
            member(4244, "cat", outcome="exited", ended_by=None, ended_at=None, signals=()),
        ),
        "survivors": (
            Survivor(
                pid=4243,
                start_time=1_700_004_243.0,
                cmdline="python3 worker.py",
                state="D",
                wchan="fuse_wait",
                reason="in uninterruptible sleep (D state)",
            ),
        ),
        "trackers": (
            TrackerStatus("cgroup", True, "delegated cgroup v2"),
            TrackerStatus("subreaper", False, "not a supervisor"),
        ),
        "steps": (
            StepRecord("TERM", 0.0, 10.0, 3, 1, 10.000001, "cgroup"),
            StepRecord("KILL", 10.000001, 5.0, 1, 1, 5.0, None),
        ),
        "caveats": ("a process that left the cgroup may have escaped",),
        "kill_script": "kill script stop.sh exited with status 0",
    }
    fields.update(kw)
    return Report(**fields)  # type: ignore[arg-type]


def test_to_dict_has_exactly_the_stable_keys() -> None:
    d = make_report().to_dict()
    assert set(d) == TOP_KEYS
    assert d["schema"] == SCHEMA_VERSION == 1
    assert [set(m) for m in d["members"]] == [MEMBER_KEYS] * 3
    assert [set(s) for s in d["survivors"]] == [SURVIVOR_KEYS]
    assert [set(t) for t in d["trackers"]] == [TRACKER_KEYS] * 2
    assert [set(s) for s in d["steps"]] == [STEP_KEYS] * 2


def test_to_dict_values() -> None:
    d = make_report().to_dict()
    assert d["job_id"] == "j-42"
    assert d["complete"] is False
    assert d["duration"] == 10.123457
    assert d["members"][0] == {
        "pid": 4242,
        "start_time": 1_700_004_242.0,
        "cmdline": "sh -c ./serve",
        "found_by": ["cgroup", "walk"],
        "outcome": "killed",
        "ended_by": "TERM",
        "ended_at": 0.012346,
        "signals": ["TERM"],
    }
    assert d["members"][1]["ended_at"] is None
    assert d["survivors"][0]["wchan"] == "fuse_wait"
    assert d["trackers"][1] == {"name": "subreaper", "used": False, "reason": "not a supervisor"}
    assert d["steps"][0] == {
        "signal": "TERM",
        "started_at": 0.0,
        "grace": 10.0,
        "signalled": 3,
        "left_after": 1,
        "duration": 10.000001,
        "froze": "cgroup",
    }
    assert d["steps"][1]["froze"] is None
    assert d["caveats"] == ["a process that left the cgroup may have escaped"]
    assert d["kill_script"] == "kill script stop.sh exited with status 0"


def test_empty_report_keys() -> None:
    d = make_report(members=(), survivors=(), trackers=(), steps=(), caveats=(), kill_script=None)
    assert set(d.to_dict()) == TOP_KEYS
    assert d.to_dict()["members"] == []
    assert d.to_dict()["kill_script"] is None


@pytest.mark.parametrize("indent", [None, 0, 2])
def test_to_json_round_trips(indent: int | None) -> None:
    r = make_report(
        members=(member(1000, "echo 'é ✓ \"quoted\"' \\ \x00\x1b[31m\n\t"),),
    )
    text = r.to_json(indent=indent)
    assert json.loads(text) == r.to_dict()
    if indent is None:
        assert "\n" not in text
    assert json.loads(r.to_json()) == r.to_dict()


def test_to_json_is_strict_json() -> None:
    # No NaN/Infinity sneaks in for an unfinished member.
    text = make_report().to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_render_text_shows_every_member_and_survivor() -> None:
    r = make_report()
    text = r.render_text()
    assert [pid for pid, _ in rows(text)] == [str(m.pid) for m in r.members]
    for (_, line), m in zip(rows(text), r.members, strict=True):
        assert m.outcome in line
        assert m.cmdline in line
    assert "SURVIVOR pid 4243 state D wchan fuse_wait" in text
    assert "in uninterruptible sleep" in text
    assert "j-42" in text
    assert "timeout" in text
    assert "TERM,10s,KILL,5s" in text
    assert "NOT confirmed empty" in text
    assert "3 member(s), 1 killed, 1 survivor(s)" in text
    assert "cgroup: used (delegated cgroup v2)" in text
    assert "caveat: a process that left the cgroup may have escaped" in text
    assert "froze by cgroup" in text


def test_render_text_complete() -> None:
    text = make_report(complete=True, survivors=()).render_text()
    assert "tree confirmed empty by the kernel" in text
    assert "SURVIVOR" not in text


def test_render_text_without_members_has_no_table_header() -> None:
    text = make_report(members=(), survivors=()).render_text()
    assert "PID" not in text
    assert "0 member(s)" in text


def test_render_text_sorts_members_by_start_time() -> None:
    r = make_report(
        members=(
            member(30, start_time=3.0),
            member(10, start_time=1.0),
            member(20, start_time=2.0),
        ),
        survivors=(),
    )
    pids = [pid for pid, _ in rows(r.render_text())]
    assert pids == ["10", "20", "30"]


NASTY = [
    "line1\nline2",
    "carriage\rreturn",
    "crlf\r\nhere",
    "tab\there",
    "esc \x1b[2J\x1b[31mred",
    "nul\x00byte",
    "bell\x07",
    "del\x7f",
    "nel\x85next",
    "ls\u2028ps\u2029",
    "vt\x0bff\x0cfs\x1cgs\x1drs\x1e",
    "\n\n\n",
    "",
]


@pytest.mark.parametrize("cmdline", NASTY)
def test_control_characters_in_cmdlines_do_not_break_rows(cmdline: str) -> None:
    members = (member(7001, cmdline), member(7002, "ok"))
    survivors = (
        Survivor(
            pid=7001,
            start_time=1.0,
            cmdline=cmdline,
            state="S",
            wchan=None,
            reason="still alive after the last step",
        ),
    )
    clean = make_report(members=(member(7001, "x"), member(7002, "ok")), survivors=survivors[:0])
    r = make_report(members=members, survivors=survivors)
    text = r.render_text()
    # One row per member and one per survivor, however the command line looks.
    assert len(text.splitlines()) == len(clean.render_text().splitlines()) + 1
    assert text.splitlines() == text.split("\n")
    assert "\x1b" not in text
    assert "\r" not in text
    assert "\t" not in text
    assert [pid for pid, _ in rows(text)] == ["7001", "7002"]
    assert "SURVIVOR pid 7001 state S wchan -:" in text


def test_long_cmdline_is_truncated_in_text_but_not_in_json() -> None:
    long = "x" * 500
    r = make_report(members=(member(1, long),), survivors=())
    ((_, row),) = rows(r.render_text())
    assert row.endswith("x" * 80)
    assert "x" * 81 not in row
    assert r.to_dict()["members"][0]["cmdline"] == long


def test_killed_property() -> None:
    r = make_report()
    assert [m.pid for m in r.killed] == [4242]


def test_records_are_frozen() -> None:
    r = make_report()
    with pytest.raises(AttributeError):
        r.complete = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.members[0].pid = 1  # type: ignore[misc]


# -- from_dict: the report as it crosses the wire ------------------------------


def test_from_dict_round_trips_the_sample() -> None:
    r = make_report(duration=10.123457, members=(member(4242, ended_at=0.012346),))
    assert Report.from_dict(r.to_dict()) == r
    assert Report.from_dict(json.loads(r.to_json())) == r


def test_from_dict_of_rounded_values_is_to_dict() -> None:
    # to_dict rounds times to microseconds: reading it back is exact from then on.
    d = make_report().to_dict()
    assert Report.from_dict(d).to_dict() == d


def test_from_dict_reads_what_older_agents_sent() -> None:
    d = make_report().to_dict()
    for key in ("steps", "caveats", "kill_script"):
        del d[key]
    for m in d["members"]:
        del m["signals"]
    r = Report.from_dict(d)
    assert (r.steps, r.caveats, r.kill_script) == ((), (), None)
    assert all(m.signals == () for m in r.members)


def test_from_dict_ignores_keys_it_does_not_know() -> None:
    d = make_report().to_dict()
    d["added_later"] = {"x": 1}
    d["members"][0]["added_later"] = [1]
    assert Report.from_dict(d) == Report.from_dict(make_report().to_dict())


def test_from_dict_takes_integers_for_times() -> None:
    d = make_report().to_dict()
    d["started_at"] = 1_700_000_000
    d["steps"][0]["grace"] = 10
    r = Report.from_dict(d)
    assert r.started_at == 1_700_000_000.0 and isinstance(r.started_at, float)
    assert isinstance(r.steps[0].grace, float)


def _set(path: str, value: object) -> Any:
    """A mutation of a to_dict() at a dotted path (``members.0.pid``)."""

    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        key: Any = int(last) if last.isdigit() else last
        if value is _DELETE:
            del target[key]
        else:
            target[key] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("schema", 2), "unknown schema 2"),
        (_set("schema", True), "unknown schema True"),
        (_set("schema", _DELETE), "unknown schema None"),
        (_set("job_id", _DELETE), "report: missing 'job_id'"),
        (_set("job_id", 42), "report.job_id: expected a string"),
        (_set("job_id", "x" * 257), "report.job_id: expected a string of at most 256"),
        (_set("complete", 1), "report.complete: expected true or false"),
        (_set("complete", "false"), "report.complete: expected true or false"),
        (_set("duration", -1), "report.duration: expected a finite number >= 0"),
        (_set("duration", 10**400), "report.duration: expected a finite number"),
        (_set("duration", float("nan")), "report.duration: expected a finite number"),
        (_set("started_at", float("inf")), "report.started_at: expected a finite number"),
        (_set("started_at", True), "report.started_at: expected a finite number"),
        (_set("started_at", "1"), "report.started_at: expected a finite number"),
        (_set("members", {"pid": 1}), "report.members: expected a list"),
        (_set("members.0", [1, 2]), "report.members[0]: expected an object"),
        (_set("members.0.pid", 0), "report.members[0].pid: expected an integer >= 1"),
        (_set("members.0.pid", True), "report.members[0].pid: expected an integer >= 1"),
        (_set("members.0.pid", 2.0), "report.members[0].pid: expected an integer >= 1"),
        (_set("members.0.pid", 1 << 64), "report.members[0].pid: expected an integer >= 1"),
        (_set("members.1.outcome", "vanished"), "report.members[1].outcome: expected one of"),
        (_set("members.0.found_by", "walk"), "report.members[0].found_by: expected a list"),
        (_set("members.0.found_by", ["walk", 1]), "report.members[0].found_by: expected a list"),
        (_set("members.0.signals", ["T" * 300]), "report.members[0].signals: expected a list"),
        (_set("members.0.ended_at", "soon"), "report.members[0].ended_at: expected a finite"),
        (_set("members.0.cmdline", None), "report.members[0].cmdline: expected a string"),
        (_set("survivors.0.state", None), "report.survivors[0].state: expected a string"),
        (_set("survivors.0.wchan", 7), "report.survivors[0].wchan: expected a string"),
        (_set("trackers.0.used", None), "report.trackers[0].used: expected true or false"),
        (_set("trackers.1", "cgroup"), "report.trackers[1]: expected an object"),
        (_set("steps.0.froze", "ice"), "report.steps[0].froze: expected one of cgroup"),
        (_set("steps.0.signalled", -1), "report.steps[0].signalled: expected an integer >= 0"),
        (_set("steps.1.grace", -0.5), "report.steps[1].grace: expected a finite number >= 0"),
        (_set("caveats", [None]), "report.caveats: expected a list of strings"),
        (_set("kill_script", ["x"]), "report.kill_script: expected a string"),
    ],
)
def test_from_dict_refuses_malformed_input(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    d = make_report().to_dict()
    mutate(d)
    with pytest.raises(MalformedReportError) as err:
        Report.from_dict(d)
    assert message in str(err.value)
    assert isinstance(err.value, TetherError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("data", [None, [], "report", 1, b"{}"])
def test_from_dict_of_a_non_object(data: object) -> None:
    with pytest.raises(MalformedReportError, match="report: expected an object"):
        Report.from_dict(data)


def test_malformed_report_errors_are_bounded() -> None:
    d = make_report().to_dict()
    d["job_id"] = ["x" * 1_000_000]
    with pytest.raises(MalformedReportError) as err:
        Report.from_dict(d)
    assert len(str(err.value)) < 200


# Any JSON value, nested a little: hostile input that parses as JSON.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_from_dict_never_fails_otherwise(data: st.DataObject) -> None:
    d = make_report().to_dict()
    # Replace one value anywhere in a valid report with any JSON value.
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            paths.append((node, key))
            if isinstance(value, (dict, list)):
                walk(value)

    walk(d)
    node, key = data.draw(st.sampled_from(paths))
    node[key] = data.draw(_json)
    try:
        r = Report.from_dict(copy.deepcopy(d))
    except MalformedReportError:
        return
    r.render_text()


_times = st.integers(min_value=0, max_value=10**12).map(lambda us: us / 1e6)
_names = st.text(max_size=20)
_members = st.builds(
    MemberRecord,
    pid=st.integers(min_value=1, max_value=2**31 - 1),
    start_time=st.floats(allow_nan=False, allow_infinity=False),
    cmdline=st.text(),
    found_by=st.lists(_names, max_size=3).map(tuple),
    outcome=st.sampled_from(OUTCOMES),
    ended_by=st.none() | _names,
    ended_at=st.none() | _times,
    signals=st.lists(_names, max_size=3).map(tuple),
)
_survivors = st.builds(
    Survivor,
    pid=st.integers(min_value=1, max_value=2**31 - 1),
    start_time=st.floats(allow_nan=False, allow_infinity=False),
    cmdline=st.text(),
    state=_names,
    wchan=st.none() | _names,
    reason=st.text(),
)
_steps = st.builds(
    StepRecord,
    signal=_names,
    started_at=_times,
    grace=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    signalled=st.integers(min_value=0, max_value=10**6),
    left_after=st.integers(min_value=0, max_value=10**6),
    duration=_times,
    froze=st.none() | st.sampled_from(FROZE),
)
_reports = st.builds(
    Report,
    job_id=_names,
    reason=st.text(),
    policy=st.text(),
    started_at=st.floats(allow_nan=False, allow_infinity=False),
    duration=_times,
    complete=st.booleans(),
    members=st.lists(_members, max_size=4).map(tuple),
    survivors=st.lists(_survivors, max_size=2).map(tuple),
    trackers=st.lists(st.builds(TrackerStatus, _names, st.booleans(), st.text()), max_size=3).map(
        tuple
    ),
    steps=st.lists(_steps, max_size=3).map(tuple),
    caveats=st.lists(st.text(), max_size=2).map(tuple),
    kill_script=st.none() | st.text(),
)


@settings(max_examples=200, deadline=None)
@given(_reports)
def test_from_dict_inverts_to_dict(r: Report) -> None:
    # Times are drawn in whole microseconds, as to_dict rounds them.
    assert Report.from_dict(r.to_dict()) == r
    assert Report.from_dict(json.loads(r.to_json(indent=None))) == r


def test_render_text_shows_no_control_characters_from_any_field() -> None:
    def everywhere(text: str) -> Report:
        return make_report(
            job_id=text,
            reason=text,
            policy=text,
            members=(member(1, text, found_by=(text,), ended_by=text),),
            survivors=(Survivor(1, 1.0, text, text, text, text),),
            trackers=(TrackerStatus(text, True, text),),
            steps=(StepRecord(text, 0.0, 1.0, 1, 0, 1.0, None),),
            caveats=(text,),
        )

    evil = "\x1b]0;pwned\x07\x1b[2J\nFAKE LINE\r\udc80\u2028"
    text = everywhere(evil).render_text()
    assert not any(c in text for c in "\x1b\x07\r\udc80\u2028")
    assert not any(line.startswith("FAKE") for line in text.splitlines())
    assert len(text.splitlines()) == len(everywhere("plain").render_text().splitlines())
