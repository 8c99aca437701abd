"""Reports: stable JSON keys, JSON round trip, and a text rendering that stays in rows."""

from __future__ import annotations

import json
import re

import pytest

from tether.report import JSON_SCHEMA_VERSION, MemberRecord, Report, StepRecord, Survivor
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
    assert d["schema"] == JSON_SCHEMA_VERSION == 1
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
