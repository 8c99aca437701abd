"""What a termination did: every member, how it ended, survivors, trackers, timings.

Rendered as text for people and as JSON (stable keys, see ``to_dict``) for
machines; a remote agent's report crosses the wire as that JSON and is read
back with ``Report.from_dict``. Times in a report are seconds since the
termination started, except ``started_at`` and members' ``start_time``, which
are Unix times.
"""

from __future__ import annotations

import math

from tether import sanitize
from tether._records import dataclass, field
from tether.errors import TetherError
from tether.tracking.base import TrackerStatus

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar

#: The ``"schema"`` of a report's JSON; bumped only for a change that is not
#: additive (docs/schemas/report.schema.json).
SCHEMA_VERSION = 1

OUTCOMES = ("killed", "exited", "survived", "denied")
FROZE = ("cgroup", "sigstop")


class MalformedReportError(TetherError, ValueError):
    """A report's JSON (e.g. from a remote agent) is not one ``Report.to_dict`` writes."""


def oneline(text: str, width: int) -> str:
    """A command line fit for one row: control characters escaped visibly."""
    return sanitize.oneline(text, width)


def _cut(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in "..." when cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _printable(text: str) -> str:
    # Text from a remote host or /proc may hold escape sequences, newlines or
    # lone surrogates: none of them reaches a terminal (tether.sanitize).
    return sanitize.visible(text)


@dataclass(frozen=True)
class MemberRecord:
    """One process that belonged to the job.

    Attributes:
        outcome: ``"killed"`` (exited after tether signalled it),
            ``"exited"`` (exited before any signal reached it),
            ``"survived"`` (still alive when the policy ran out),
            ``"denied"`` (tether was not allowed to signal it).
        ended_by: the last signal delivered before it exited, e.g. ``"TERM"``.
        ended_at: when its exit was seen, seconds after the termination began.
    """

    pid: int
    start_time: float
    cmdline: str
    found_by: tuple[str, ...]
    outcome: str
    ended_by: str | None
    ended_at: float | None
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Survivor:
    """A member still alive after the last step, with why it may be stuck."""

    pid: int
    start_time: float
    cmdline: str
    state: str
    wchan: str | None
    reason: str


@dataclass(frozen=True)
class StepRecord:
    """One policy step as it ran."""

    signal: str
    started_at: float
    grace: float
    signalled: int
    left_after: int
    duration: float
    froze: str | None = None  # "cgroup", "sigstop" or None


@dataclass(frozen=True)
class Report:
    """The outcome of terminating one job (or one tree).

    ``complete`` is True only when the kernel confirmed the tree empty
    (cgroup ``populated 0``, or every member's pidfd exited and no new member
    appeared); ``caveats`` says which escapes could not be ruled out.
    """

    job_id: str
    reason: str
    policy: str
    started_at: float
    duration: float
    complete: bool
    members: tuple[MemberRecord, ...]
    survivors: tuple[Survivor, ...]
    trackers: tuple[TrackerStatus, ...]
    steps: tuple[StepRecord, ...] = ()
    caveats: tuple[str, ...] = field(default=())
    kill_script: str | None = None
    #: What proved the tree empty (None when it was not), e.g. "the kernel
    #: (cgroup populated 0)" or "a process-table rescan (no pidfds)".
    confirmed_by: str | None = None

    @property
    def verdict(self) -> str:
        """``tree confirmed empty by ...`` naming what proved it, or ``NOT confirmed empty``."""
        if not self.complete:
            return "NOT confirmed empty"
        return f"tree confirmed empty by {_printable(self.confirmed_by or 'the kernel')}"

    @property
    def killed(self) -> tuple[MemberRecord, ...]:
        return tuple(m for m in self.members if m.outcome == "killed")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict. Keys are stable; new keys may be added."""
        return {
            "schema": SCHEMA_VERSION,
            "job_id": self.job_id,
            "reason": self.reason,
            "policy": self.policy,
            "started_at": self.started_at,
            "duration": round(self.duration, 6),
            "complete": self.complete,
            "members": [
                {
                    "pid": m.pid,
                    "start_time": m.start_time,
                    "cmdline": m.cmdline,
                    "found_by": list(m.found_by),
                    "outcome": m.outcome,
                    "ended_by": m.ended_by,
                    "ended_at": None if m.ended_at is None else round(m.ended_at, 6),
                    "signals": list(m.signals),
                }
                for m in self.members
            ],
            "survivors": [
                {
                    "pid": s.pid,
                    "start_time": s.start_time,
                    "cmdline": s.cmdline,
                    "state": s.state,
                    "wchan": s.wchan,
                    "reason": s.reason,
                }
                for s in self.survivors
            ],
            "trackers": [
                {"name": t.name, "used": t.used, "reason": t.reason} for t in self.trackers
            ],
            "steps": [
                {
                    "signal": s.signal,
                    "started_at": round(s.started_at, 6),
                    "grace": s.grace,
                    "signalled": s.signalled,
                    "left_after": s.left_after,
                    "duration": round(s.duration, 6),
                    "froze": s.froze,
                }
                for s in self.steps
            ],
            "caveats": list(self.caveats),
            "kill_script": self.kill_script,
            "confirmed_by": self.confirmed_by,
        }

    @classmethod
    def from_dict(cls, data: object) -> Report:
        """The inverse of :meth:`to_dict`, for JSON from anywhere (a remote agent).

        Every field is type- and range-checked (``docs/schemas/report.schema.json``);
        unknown keys are ignored (changes within a schema version are
        additive), and ``signals``, ``steps``, ``froze``, ``caveats`` and
        ``kill_script``, which older agents did not send, default to empty.
        Short fields (names, signals, states) are at most 256 characters; the
        size of the whole is bounded by whoever read the bytes (a remote frame
        is at most 64 MiB).

        Raises:
            MalformedReportError: anything else, with where and what.
        """
        r = _Fields(data, "report")
        schema = r.data.get("schema")
        if type(schema) is not int or schema != SCHEMA_VERSION:
            raise MalformedReportError(
                f"report: unknown schema {_show(schema)} "
                f"(this tether reads schema {SCHEMA_VERSION})"
            )
        return cls(
            job_id=r.token("job_id"),
            reason=r.text("reason"),
            policy=r.text("policy"),
            started_at=r.number("started_at"),
            duration=r.number("duration", minimum=0.0),
            complete=r.flag("complete"),
            members=r.each("members", _member),
            survivors=r.each("survivors", _survivor),
            trackers=r.each("trackers", _tracker),
            steps=r.each("steps", _step, default=()),
            caveats=r.texts("caveats", default=()),
            kill_script=r.text_or_none("kill_script", default=None),
            confirmed_by=r.text_or_none("confirmed_by", default=None),
        )

    def to_json(self, indent: int | None = 2) -> str:
        import json  # --json only: a plain run imports no json

        return json.dumps(self.to_dict(), indent=indent)

    def render_text(self) -> str:
        """A plain-text report for people (no colour; the CLI may add some)."""
        p = _printable
        lines = [
            f"tether: job {p(self.job_id)} terminated ({p(self.reason)}) "
            f"with policy {p(self.policy)}",
            f"  {len(self.members)} member(s), {len(self.killed)} killed, "
            f"{len(self.survivors)} survivor(s), {self.duration:.3f}s, " + self.verdict,
        ]
        if self.members:
            # Columns as wide as their widest cell (pipes and logs have no
            # width to fill), FOUND BY cut with "..." past 32: a row never
            # shifts the next column.
            head = ("PID", "OUTCOME", "BY", "AT", "FOUND BY")
            cells = [
                (
                    str(m.pid),
                    p(m.outcome)[:16],
                    p(m.ended_by or "-")[:16],
                    "-" if m.ended_at is None else f"{m.ended_at:.3f}s",
                    _cut(p(",".join(m.found_by)), 32),
                    oneline(m.cmdline, 80),
                )
                for m in sorted(self.members, key=lambda m: (m.start_time, m.pid))
            ]
            w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
            lines.append(
                f"  {head[0]:>{w[0]}}  {head[1]:<{w[1]}} {head[2]:<{w[2]}} {head[3]:>{w[3]}}  "
                f"{head[4]:<{w[4]}} COMMAND"
            )
            lines.extend(
                f"  {c[0]:>{w[0]}}  {c[1]:<{w[1]}} {c[2]:<{w[2]}} {c[3]:>{w[3]}}  "
                f"{c[4]:<{w[4]}} {c[5]}"
                for c in cells
            )
        for s in self.survivors:
            lines.append(
                f"  SURVIVOR pid {s.pid} state {p(s.state)} wchan {p(s.wchan or '-')}: "
                f"{p(s.reason)} ({oneline(s.cmdline, 60)})"
            )
        for step in self.steps:
            lines.append(
                f"  step {p(step.signal):<5} at {step.started_at:.3f}s: "
                f"signalled {step.signalled}, {step.left_after} left after {step.duration:.3f}s"
                + (f" (froze by {p(step.froze)})" if step.froze else "")
            )
        if self.kill_script:
            lines.append(f"  kill script: {p(self.kill_script)}")
        lines.append("  trackers: " + "; ".join(p(str(t)) for t in self.trackers))
        lines.extend(f"  caveat: {p(c)}" for c in self.caveats)
        return "\n".join(lines)


# -- reading a report back (from_dict) -----------------------------------------

_MAX_TOKEN = 256
_MAX_INT = (1 << 63) - 1
if TYPE_CHECKING:
    _T = TypeVar("_T")
_MISSING: Any = object()


def _show(value: object) -> str:
    """A bounded repr of a hostile value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Typed reads from one JSON object; errors name where (``members[3].pid``)."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise MalformedReportError(f"{where}: expected an object, got {_show(data)}")
        self.data: Mapping[str, object] = data
        self.where = where

    def _get(self, key: str, default: object) -> object:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise MalformedReportError(f"{self.where}: missing {key!r}")
        return default

    def _bad(self, key: str, expected: str, value: object) -> MalformedReportError:
        return MalformedReportError(f"{self.where}.{key}: expected {expected}, got {_show(value)}")

    def text(self, key: str, default: object = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._bad(key, "a string", value)
        return value

    def text_or_none(self, key: str, default: object = _MISSING) -> str | None:
        value = self._get(key, default)
        return None if value is None else self.text(key)

    def token(self, key: str, default: object = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or len(value) > _MAX_TOKEN:
            raise self._bad(key, f"a string of at most {_MAX_TOKEN} characters", value)
        return value

    def token_or_none(self, key: str, default: object = _MISSING) -> str | None:
        value = self._get(key, default)
        return None if value is None else self.token(key)

    def choice(self, key: str, choices: tuple[str, ...], default: object = _MISSING) -> str:
        value = self._get(key, default)
        if value not in choices:
            raise self._bad(key, "one of " + ", ".join(choices), value)
        assert isinstance(value, str)
        return value

    def choice_or_none(
        self, key: str, choices: tuple[str, ...], default: object = _MISSING
    ) -> str | None:
        value = self._get(key, default)
        return None if value is None else self.choice(key, choices)

    def flag(self, key: str) -> bool:
        value = self._get(key, _MISSING)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false", value)
        return value

    def integer(self, key: str, minimum: int) -> int:
        value = self._get(key, _MISSING)
        # bool is an int: never accept one where a number is meant.
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not minimum <= value <= _MAX_INT
        ):
            raise self._bad(key, f"an integer >= {minimum}", value)
        return value

    def number(self, key: str, minimum: float | None = None) -> float:
        value = self._get(key, _MISSING)
        number = _finite(value)
        if number is None or (minimum is not None and number < minimum):
            at_least = "" if minimum is None else f" >= {minimum:g}"
            raise self._bad(key, f"a finite number{at_least}", value)
        return number

    def number_or_none(self, key: str) -> float | None:
        return None if self._get(key, _MISSING) is None else self.number(key)

    def texts(
        self, key: str, *, default: object = _MISSING, token: bool = False
    ) -> tuple[str, ...]:
        value = self._get(key, default)
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and (not token or len(v) <= _MAX_TOKEN) for v in value
        ):
            raise self._bad(key, "a list of strings", value)
        return tuple(value)

    def each(
        self, key: str, read: Callable[[_Fields], _T], *, default: object = _MISSING
    ) -> tuple[_T, ...]:
        value = self._get(key, default)
        if not isinstance(value, (list, tuple)):
            raise self._bad(key, "a list", value)
        return tuple(read(_Fields(v, f"{self.where}.{key}[{i}]")) for i, v in enumerate(value))


def _finite(value: object) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def _member(f: _Fields) -> MemberRecord:
    return MemberRecord(
        pid=f.integer("pid", minimum=1),
        start_time=f.number("start_time"),
        cmdline=f.text("cmdline"),
        found_by=f.texts("found_by", token=True),
        outcome=f.choice("outcome", OUTCOMES),
        ended_by=f.token_or_none("ended_by"),
        ended_at=f.number_or_none("ended_at"),
        signals=f.texts("signals", default=(), token=True),
    )


def _survivor(f: _Fields) -> Survivor:
    return Survivor(
        pid=f.integer("pid", minimum=1),
        start_time=f.number("start_time"),
        cmdline=f.text("cmdline"),
        state=f.token("state"),
        wchan=f.token_or_none("wchan"),
        reason=f.text("reason"),
    )


def _tracker(f: _Fields) -> TrackerStatus:
    return TrackerStatus(f.token("name"), f.flag("used"), f.text("reason"))


def _step(f: _Fields) -> StepRecord:
    return StepRecord(
        signal=f.token("signal"),
        started_at=f.number("started_at"),
        grace=f.number("grace", minimum=0.0),
        signalled=f.integer("signalled", minimum=0),
        left_after=f.integer("left_after", minimum=0),
        duration=f.number("duration", minimum=0.0),
        froze=f.choice_or_none("froze", FROZE, default=None),
    )
