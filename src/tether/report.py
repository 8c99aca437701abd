"""What a termination did: every member, how it ended, survivors, trackers, timings.

Rendered as text for people and as JSON (stable keys, see ``to_dict``) for
machines. Times in a report are seconds since the termination started, except
``started_at`` and members' ``start_time``, which are Unix times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tether.tracking.base import TrackerStatus

JSON_SCHEMA_VERSION = 1


def oneline(text: str, width: int) -> str:
    """A command line fit for one row: control characters shown as spaces."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(flat.split())[:width]


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

    @property
    def killed(self) -> tuple[MemberRecord, ...]:
        return tuple(m for m in self.members if m.outcome == "killed")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict. Keys are stable; new keys may be added."""
        return {
            "schema": JSON_SCHEMA_VERSION,
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
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def render_text(self) -> str:
        """A plain-text report for people (no colour; the CLI may add some)."""
        lines = [
            f"tether: job {self.job_id} terminated ({self.reason}) with policy {self.policy}",
            f"  {len(self.members)} member(s), {len(self.killed)} killed, "
            f"{len(self.survivors)} survivor(s), {self.duration:.3f}s, "
            + ("tree confirmed empty by the kernel" if self.complete else "NOT confirmed empty"),
        ]
        if self.members:
            lines.append(
                f"  {'PID':>7}  {'OUTCOME':<8} {'BY':<5} {'AT':>8}  {'FOUND BY':<24} COMMAND"
            )
            for m in sorted(self.members, key=lambda m: (m.start_time, m.pid)):
                at = "-" if m.ended_at is None else f"{m.ended_at:.3f}s"
                lines.append(
                    f"  {m.pid:>7}  {m.outcome:<8} {m.ended_by or '-':<5} {at:>8}  "
                    f"{','.join(m.found_by):<24} {oneline(m.cmdline, 80)}"
                )
        for s in self.survivors:
            lines.append(
                f"  SURVIVOR pid {s.pid} state {s.state} wchan {s.wchan or '-'}: {s.reason}"
                f" ({oneline(s.cmdline, 60)})"
            )
        for step in self.steps:
            lines.append(
                f"  step {step.signal:<5} at {step.started_at:.3f}s: signalled {step.signalled}, "
                f"{step.left_after} left after {step.duration:.3f}s"
                + (f" (froze by {step.froze})" if step.froze else "")
            )
        lines.append("  trackers: " + "; ".join(str(t) for t in self.trackers))
        lines.extend(f"  caveat: {c}" for c in self.caveats)
        return "\n".join(lines)
