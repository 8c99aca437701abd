"""Policies, signal names and durations: parsing, rendering, round trips."""

from __future__ import annotations

import re
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import PolicyError, UsageError
from tether.policy import (
    _UNIT_SECONDS,
    DEFAULT_FINAL_WAIT,
    MAX_DURATION,
    KillScript,
    Policy,
    Step,
    format_duration,
    parse_duration,
    parse_signal,
    signal_name,
)

TERM, KILL, INT, HUP = signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP

# -- signals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sig"),
    [
        ("TERM", TERM),
        ("SIGTERM", TERM),
        ("sigterm", TERM),
        ("term", TERM),
        ("Term", TERM),
        (" TERM ", TERM),
        ("15", TERM),
        ("9", KILL),
        ("KILL", KILL),
        ("int", INT),
        ("2", INT),
        ("USR1", signal.SIGUSR1),
        ("RTMIN", signal.SIGRTMIN),
    ],
)
def test_parse_signal(text: str, sig: signal.Signals) -> None:
    parsed = parse_signal(text)
    assert (parsed, parsed.name) == (sig, sig.name)


@pytest.mark.parametrize(
    "text", ["", " ", "0", "99", "65", "-15", "NOPE", "SIGNOPE", "SIG", "TERM!", "15s", "SIG_DFL"]
)
def test_parse_signal_rejects(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_signal(text)


def test_policy_error_is_a_usage_error_and_a_value_error() -> None:
    with pytest.raises(UsageError):
        parse_signal("nope")
    with pytest.raises(ValueError):
        parse_duration("nope")


@pytest.mark.parametrize("sig", list(signal.Signals))
def test_every_signal_name_parses_back(sig: signal.Signals) -> None:
    for text in (signal_name(sig), str(int(sig))):
        parsed = parse_signal(text)
        assert (parsed, parsed.name) == (sig, sig.name)


def test_signal_name() -> None:
    assert signal_name(15) == "TERM"
    assert signal_name(signal.SIGKILL) == "KILL"
    assert signal_name(0) == "0"
    assert signal_name(99) == "99"


# -- durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("1min 30s", 90.0),
        ("1min30s", 90.0),
        ("1m30s", 90.0),
        ("10", 10.0),
        ("0", 0.0),
        ("0s", 0.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("10 s", 10.0),
        (" 10s ", 10.0),
        ("10S", 10.0),
        ("2MIN", 120.0),
        ("2 minutes", 120.0),
        ("1sec", 1.0),
        ("1 second", 1.0),
        ("3 seconds", 3.0),
        ("500msec", 0.5),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1hr", 3600.0),
        ("1h 1m 1s", 3661.0),
        ("2000us", 0.002),
        ("2000µs", 0.002),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "x",
        "s",
        "10x",
        "-1s",
        "-1",
        "1min 30",
        "30 1min",
        "10s 5",
        "1e3s",
        "inf",
        "nan",
        "1,5s",
        "10 x",
        "1h-1s",
        "9" * 400 + "s",  # finite text, infinite float
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_duration(text)


def test_parse_duration_can_require_a_unit() -> None:
    with pytest.raises(PolicyError, match="unit is required"):
        parse_duration("10", bare_number_unit=None)
    assert parse_duration("10s", bare_number_unit=None) == 10.0
    assert parse_duration("10", bare_number_unit="ms") == pytest.approx(0.01)
    assert parse_duration("10", bare_number_unit="m") == 600.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (1.5, "1500ms"),
        (10, "10s"),
        (90, "90s"),
        (120, "2m"),
        (3600, "1h"),
        (5400, "90m"),
        (86400, "24h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# -- policies ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("TERM,10s,KILL", ((TERM, 10.0), (KILL, DEFAULT_FINAL_WAIT))),
        ("INT,2s,TERM,10s,KILL", ((INT, 2.0), (TERM, 10.0), (KILL, DEFAULT_FINAL_WAIT))),
        ("TERM,10s,KILL,3s", ((TERM, 10.0), (KILL, 3.0))),  # trailing duration: final wait
        ("KILL", ((KILL, DEFAULT_FINAL_WAIT),)),
        ("TERM", ((TERM, DEFAULT_FINAL_WAIT),)),
        ("INT,TERM,10s,KILL", ((INT, 0.0), (TERM, 10.0), (KILL, DEFAULT_FINAL_WAIT))),
        ("HUP,INT,TERM", ((HUP, 0.0), (INT, 0.0), (TERM, DEFAULT_FINAL_WAIT))),
        (" sigterm , 250ms , SIGKILL ", ((TERM, 0.25), (KILL, DEFAULT_FINAL_WAIT))),
        ("TERM,1min 30s,KILL", ((TERM, 90.0), (KILL, DEFAULT_FINAL_WAIT))),
        ("TERM,.5s,KILL", ((TERM, 0.5), (KILL, DEFAULT_FINAL_WAIT))),
        ("TERM,0s,KILL", ((TERM, 0.0), (KILL, DEFAULT_FINAL_WAIT))),
    ],
)
def test_policy_parse(text: str, steps: tuple[tuple[signal.Signals, float], ...]) -> None:
    p = Policy.parse(text)
    assert p.steps == tuple(Step(s, g) for s, g in steps)
    assert p.leader_signal is None
    assert p.tree_delay == 0.0
    assert p.kill_script is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        ",",
        "10s,KILL",  # leading duration
        "10s",
        "TERM,10s,5s,KILL",  # two durations in a row
        "TERM,10s,5s",
        "TERM,,KILL",  # empty token
        "TERM,",
        ",TERM",
        "TERM, ,KILL",
        "TERM,10x,KILL",
        "TERM,-1s,KILL",
        "NOPE,10s,KILL",
        "TERM,10s,0",
        "TERM;10s;KILL",
    ],
)
def test_policy_parse_rejects(text: str) -> None:
    with pytest.raises(PolicyError):
        Policy.parse(text)


def test_policy_parse_options() -> None:
    script = KillScript(("stop.sh",), "replace", 3.0)
    p = Policy.parse("TERM,10s,KILL", leader_signal=INT, tree_delay=2.0, kill_script=script)
    assert (p.leader_signal, p.tree_delay, p.kill_script) == (INT, 2.0, script)
    with pytest.raises(PolicyError):
        Policy.parse("TERM", tree_delay=-1.0)


def test_policy_needs_a_step() -> None:
    with pytest.raises(PolicyError):
        Policy(())


def test_default_policy() -> None:
    assert Policy.default() == Policy.parse("TERM,10s,KILL")
    assert Policy.default().steps == (Step(TERM, 10.0), Step(KILL, DEFAULT_FINAL_WAIT))


def test_from_timeout_flags() -> None:
    assert Policy.from_timeout_flags() == Policy.parse("TERM,10s,KILL")
    assert Policy.from_timeout_flags(INT, 3.0).steps == (
        Step(INT, 3.0),
        Step(KILL, DEFAULT_FINAL_WAIT),
    )
    assert Policy.from_timeout_flags(HUP).steps == (Step(HUP, 10.0), Step(KILL, DEFAULT_FINAL_WAIT))
    assert Policy.from_timeout_flags(kill_after=0.5).steps[0] == Step(TERM, 0.5)
    # -s KILL: nothing to escalate to.
    assert Policy.from_timeout_flags(KILL, 3.0).steps == (Step(KILL, DEFAULT_FINAL_WAIT),)
    # Always ends with KILL.
    for sig in (INT, HUP, TERM, signal.SIGUSR1, KILL):
        last = Policy.from_timeout_flags(sig).steps[-1].signal
        assert (last, last.name) == (KILL, "SIGKILL")


def test_skipping_to_last() -> None:
    script = KillScript(("x",))
    p = Policy.parse("INT,2s,TERM,10s,KILL,3s", leader_signal=HUP, tree_delay=5, kill_script=script)
    last = p.skipping_to_last()
    assert last.steps == (Step(KILL, 3.0),)
    assert last.leader_signal is None
    assert last.tree_delay == 0.0
    assert last.kill_script == script
    assert p.steps[0] == Step(INT, 2.0)  # the original is unchanged
    assert last.skipping_to_last() == last


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("TERM,10s,KILL", "TERM,10s,KILL,5s"),
        ("INT,2s,TERM,10s,KILL", "INT,2s,TERM,10s,KILL,5s"),
        ("sigint,TERM,250ms,KILL,1min 30s", "INT,0s,TERM,250ms,KILL,90s"),
        ("TERM,120s,KILL,1h", "TERM,2m,KILL,1h"),
    ],
)
def test_str_round_trip(text: str, rendered: str) -> None:
    p = Policy.parse(text)
    assert str(p) == rendered
    assert Policy.parse(str(p)) == p
    assert str(Step(TERM, 10.0)) == "TERM,10s"


_signals = st.sampled_from(list(signal.Signals))


def _policies(graces: st.SearchStrategy[float]) -> st.SearchStrategy[Policy]:
    steps = st.builds(Step, _signals, graces)
    return st.lists(steps, min_size=1, max_size=6).map(lambda s: Policy(tuple(s)))


@settings(max_examples=300)
@given(_policies(st.integers(0, int(MAX_DURATION)).map(float)))
def test_str_round_trip_property_whole_seconds(p: Policy) -> None:
    assert Policy.parse(str(p)) == p


# A failing Hypothesis test imports libcst to suggest a patch; libcst warns.
@pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
@settings(max_examples=500, derandomize=True)
@given(_policies(st.integers(0, int(MAX_DURATION * 1000)).map(lambda ms: ms / 1000)))
def test_str_round_trip_property_ms_precision(p: Policy) -> None:
    assert Policy.parse(str(p)) == p


def test_ms_duration_is_exact() -> None:
    assert parse_duration("9ms") == 0.009
    assert parse_duration("9ms") == parse_duration("0.009s")


def test_format_duration_keeps_milliseconds_of_long_durations() -> None:
    assert parse_duration(format_duration(33092.906)) == 33092.906


def test_format_duration_output_always_parses() -> None:
    parse_duration(format_duration(2063358.46))


def test_durations_past_what_poll_can_wait_are_refused() -> None:
    # --timeout 25d crashed after the job had started (poll's int overflow).
    assert parse_duration("24d") == MAX_DURATION
    with pytest.raises(PolicyError, match="at most 24d"):
        parse_duration("25d")


@pytest.mark.parametrize(
    ("text", "hint"),
    [("TERM,10,KILL", "write 10s for a grace, or the signal's name (e.g. USR1)"),
     ("15,10s,9", "write 15s for a grace, or the signal's name (e.g. TERM)"),
     ("TERM,10s,99", "write 99s for a grace")],
)  # fmt: skip
def test_a_bare_number_in_a_policy_is_an_error_with_a_hint(text: str, hint: str) -> None:
    # Read as a signal, "TERM,10,KILL" ran TERM, USR1, KILL with no grace at all.
    with pytest.raises(PolicyError, match=re.escape(hint)):
        Policy.parse(text)


@pytest.mark.parametrize(
    ("text", "warned"),
    [("TERM,10s,KILL", []),
     ("KILL,10s,TERM", ["KILL in step 1 ends every member, so TERM after it reaches nobody",
                        "ends with TERM: a member that ignores it survives"]),
     ("INT,2s,TERM", ["ends with TERM: a member that ignores it survives"])],
)  # fmt: skip
def test_odd_orders_are_warned_about(text: str, warned: list[str]) -> None:
    warnings = Policy.parse(text).warnings
    assert len(warnings) == len(warned)
    for got, want in zip(warnings, warned, strict=True):
        assert want in got


# The regex parse_duration had (re is ~5 ms of a start, issue 15): the hand
# scanner must read every text as it did, except where it raised KeyError
# (a unit matched only by re's Unicode case folding, e.g. GREEK MU, KELVIN SIGN).
def _regex_parse_duration(text: str) -> float:
    import math
    import re

    units = "|".join(sorted((re.escape(u) for u in _UNIT_SECONDS), key=len, reverse=True))
    part_re = re.compile(rf"\s*(\d+(?:\.\d*)?|\.\d+)\s*({units})?\s*", re.IGNORECASE)
    s = text.strip()
    if not s:
        raise PolicyError("empty duration")
    pos, total, parts = 0, 0.0, 0
    while pos < len(s):
        m = part_re.match(s, pos)
        if m is None or m.end() == pos:
            raise PolicyError("bad")
        number, unit = m.group(1), m.group(2)
        if unit is None:
            if re.match(r"[^\d\s.]+", s[m.end() :]) is not None:
                raise PolicyError("unknown unit")
            if parts or m.end() != len(s):
                raise PolicyError("a unit is required")
            unit = "s"
        size = _UNIT_SECONDS[unit.lower() if unit != "µs" else unit]
        total += float(number) / round(1 / size) if size < 1 else float(number) * size
        parts += 1
        pos = m.end()
    if not math.isfinite(total) or total > 24 * 86400.0:
        raise PolicyError("too large")
    return total


# Micro sign, Greek small and capital mu, long s, Kelvin sign, dotted and
# dotless i (re folds each into an ASCII or micro unit), an Arabic-Indic one.
_DURATION_ALPHABET = (
    "0123456789.  \t\n"
    + "usecmsndhrwkiy"
    + "USECMSNDHRW"
    + ("\u00b5\u03bc\u039c\u017f\u212a\u0130\u0131\u0661")
)


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(_DURATION_ALPHABET, max_size=4),
            st.sampled_from(sorted(_UNIT_SECONDS)),
            st.from_regex(r"\d{1,3}(\.\d{0,2})?", fullmatch=True),
        ),
        max_size=6,
    ).map("".join)
)
def test_the_duration_scanner_reads_as_the_regex_did(text: str) -> None:
    try:
        expected: float | str = _regex_parse_duration(text)
    except PolicyError:
        expected = "error"
    except KeyError:
        expected = "KeyError"
    try:
        got: float | str = parse_duration(text)
    except PolicyError:
        got = "error"
    if expected == "KeyError":
        # A micro sign in any of its three forms is read as µ; anything else
        # re folded into a unit is now an error, where it was a traceback.
        assert got == "error" or any(mu in text for mu in "\u03bc\u039c"), (text, got)
    else:
        assert got == expected, text
