"""Acting on a plan: log every decision, kill (or not), render text and JSON."""

from __future__ import annotations

import functools
import pwd
import time
from json.encoder import encode_basestring_ascii
from math import isfinite

from tether._records import dataclass, replace
from tether.process import starttime_to_epoch
from tether.prune._json import dumps
from tether.prune.classify import Plan, Stray
from tether.prune.log import DecisionLog, fields
from tether.prune.scan import read_shown, read_shown_all
from tether.prune.text import visible

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from tether.policy import Policy
    from tether.report import Report

#: Characters of a command line kept for display, JSON and the log.
CMDLINE_CHARS = 4096

JSON_SCHEMA_VERSION = 1


@functools.lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True)
class StrayView:
    """A stray with what a person needs to recognise it, read before any signal
    (a killed process has no command line left to read) and through
    :func:`~tether.prune.text.visible` (a process names itself: no escape
    sequence, forged line or non-UTF-8 byte reaches a terminal, log or JSON).
    """

    stray: Stray
    user: str
    comm: str
    cmdline: str
    cgroup: str | None
    start_time: float  # Unix time
    outcome: str  # "would kill" (dry run), "killed", "exited", "survived", "denied", "gone"


def _view(stray: Stray, outcome: str) -> StrayView:
    return _view_of(stray, outcome, read_shown(stray.pid, stray.starttime))


def _view_of(stray: Stray, outcome: str, shown: tuple[str | None, str | None] | None) -> StrayView:
    """The view of a stray whose command line and cgroup were read (None: gone)."""
    cmdline, cgroup = shown if shown is not None else (None, None)
    comm = visible(stray.comm)
    return StrayView(
        stray=stray,
        user=visible(user_name(stray.uids[0])),
        comm=comm,
        # Every character becomes one or more: sanitising only the part that
        # is kept gives the same text (a 1 MB argv costs no more than 4 KB).
        cmdline=visible(cmdline[:CMDLINE_CHARS])[:CMDLINE_CHARS] if cmdline else f"[{comm}]",
        cgroup=visible(cgroup) if cgroup is not None else None,
        start_time=starttime_to_epoch(stray.starttime),
        outcome=outcome,
    )


@dataclass(frozen=True)
class Outcome:
    """What one prune (or epilog) run decided and did."""

    mode: str  # "dry-run" or "kill"
    plan: Plan
    strays: tuple[StrayView, ...]
    report: Report | None
    log_target: str
    log_problem: str | None

    @property
    def failed(self) -> tuple[StrayView, ...]:
        """Strays that could not be killed (survived the policy, or denied)."""
        return tuple(s for s in self.strays if s.outcome in ("survived", "denied"))

    @property
    def complete(self) -> bool:
        """Nothing that was to be killed is left (always True for a dry run)."""
        return not self.failed and (self.report is None or self.report.complete)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; keys are stable, new keys may be added."""
        return self._dict(rows=True)

    def _dict(self, *, rows: bool) -> dict[str, Any]:
        """:meth:`to_dict`; without ``rows``, "strays" is an empty list."""
        plan = self.plan
        opts = plan.options
        return {
            "schema": JSON_SCHEMA_VERSION,
            "mode": self.mode,
            "epilog": None
            if plan.ended is None
            else {
                "job_id": plan.ended.job_id,
                "uid": plan.ended.uid,
                "user": user_name(plan.ended.uid),
                "whole_user": plan.whole_user,
            },
            "options": {
                "min_uid": opts.min_uid,
                "min_age": opts.min_age,
                "older_than": opts.older_than,
                "min_cputime": opts.min_cputime,
                "orphans_only": opts.orphans_only,
                "users": sorted(opts.users),
                "exclude_users": sorted(opts.exclude_users),
                "exclude_comm": [p.pattern for p in opts.exclude_comm],
                "include_ssh": opts.include_ssh,
            },
            "scanned": plan.scanned,
            "scan_seconds": round(plan.seconds, 6),
            "sources": [{"name": s.name, "used": s.used, "detail": s.detail} for s in plan.sources],
            "jobs": [{"source": j.source, "job_id": j.job_id, "uid": j.uid} for j in plan.jobs],
            "strays": [
                {
                    "pid": v.stray.pid,
                    "start_time": v.start_time,
                    "ppid": v.stray.ppid,
                    "sid": v.stray.sid,
                    "uids": list(v.stray.uids),
                    "user": v.user,
                    "comm": v.comm,
                    "cmdline": v.cmdline,
                    "cgroup": v.cgroup,
                    "age": round(v.stray.age, 3),
                    "cputime": round(v.stray.cputime, 3),
                    "orphan": v.stray.orphan,
                    "rule": v.stray.rule,
                    "outcome": v.outcome,
                }
                for v in (self.strays if rows else ())
            ],
            "exempt": dict(plan.exempt),
            "exempt_user_processes": [
                {"pid": e.pid, "uids": list(e.uids), "comm": visible(e.comm), "reason": e.reason}
                for e in plan.exempt_users
            ],
            "unreadable": [
                {"pid": pid, "error": why} for pid, why in sorted(plan.unreadable.items())
            ],
            "log": {"target": self.log_target, "problem": self.log_problem},
            "report": self.report.to_dict() if self.report is not None else None,
        }

    def to_json(self) -> str:
        # ASCII: valid whatever the locale of the terminal or pipe reading it.
        # The text of json.dumps(indent=2, ensure_ascii=True), without its
        # pure-Python encoder (tether.prune._json), the strays' rows (most of
        # the document) by _stray_rows.
        rows = _stray_rows(self.strays) if self.strays else None
        if rows is None:
            return dumps(self.to_dict())
        text = dumps(self._dict(rows=False))
        # The document's own "strays" key: every string in it has its line
        # breaks escaped, and a nested key is indented deeper.
        head, found, tail = text.partition('\n  "strays": []')
        if not found:  # not reached: dumps always writes the key so
            return dumps(self.to_dict())
        return f'{head}\n  "strays": {rows}{tail}'

    def render_text(self, *, verbose: bool = False) -> str:
        plan = self.plan
        lines: list[str] = []
        verb = "would kill" if self.mode == "dry-run" else "killing"
        head = (
            f"tether prune ({self.mode}): {len(self.strays)} stray(s) among "
            f"{plan.scanned} processes, uid floor {plan.options.min_uid}, "
            f"min age {plan.options.min_age:g}s"
        )
        if plan.ended is not None:
            scope = (
                f"every process of {user_name(plan.ended.uid)} (no other job here)"
                if plan.whole_user
                else f"only job {plan.ended.job_id}'s processes (the user has another job here)"
            )
            head = (
                f"tether epilog ({self.mode}): job {plan.ended.job_id} of "
                f"{user_name(plan.ended.uid)} ended: {scope}; {len(self.strays)} stray(s)"
            )
        lines.append(head)
        if self.strays:
            # Grouped by rule: one "why" per group, not one per stray.
            groups: dict[str, list[StrayView]] = {}
            for v in self.strays:
                groups.setdefault(v.stray.rule, []).append(v)
            for rule, views in groups.items():
                lines.append(f"why: {rule}")
                lines.append(f"{'PID':>7} {'USER':<12} {'AGE':>8} {'CPU':>7}  OUTCOME     COMMAND")
                for v in views:
                    s = v.stray
                    outcome = verb if v.outcome == "would kill" else v.outcome
                    lines.append(
                        f"{s.pid:>7} {v.user[:12]:<12} {_age(s.age):>8} {s.cputime:>6.1f}s  "
                        f"{outcome:<11} {v.cmdline[:80]}"
                    )
        for source in plan.sources:
            lines.append(f"# {source}")
        if plan.exempt:
            lines.append(
                "# left alone: " + ", ".join(f"{n} {why}" for why, n in plan.exempt.items())
            )
        if verbose:
            for e in plan.exempt_users:
                lines.append(f"#   pid {e.pid} ({visible(e.comm)}, uid {e.uids[0]}): {e.reason}")
        if plan.unreadable:
            lines.append(
                f"# warning: {len(plan.unreadable)} /proc entries could not be read and were "
                "left alone: "
                + "; ".join(why for _pid, why in sorted(plan.unreadable.items())[:5])
                + (" ..." if len(plan.unreadable) > 5 else "")
            )
        if self.report is not None and not self.report.complete:
            for survivor in self.report.survivors:
                lines.append(f"# could not kill pid {survivor.pid}: {visible(survivor.reason)}")
        if self.log_problem:
            lines.append(f"# warning: decisions not logged: {self.log_problem}")
        return "\n".join(lines)


def _stray_rows(views: tuple[StrayView, ...]) -> str | None:
    """The "strays" list of :meth:`Outcome.to_json`: ``dumps`` of the rows of
    :meth:`Outcome.to_dict`, each row's text made by one f-string (its keys
    and types are this module's own), the text of a repeated short string
    (user, comm, rule, outcome) escaped once. None where a number is not
    finite or a value is not of its type: ``dumps`` writes those."""
    esc = encode_basestring_ascii
    memo: dict[str, str] = {}

    def short(text: str) -> str:
        done = memo.get(text)
        if done is None:
            done = memo[text] = esc(text)
        return done

    i = "\n      "
    out = []
    for v in views:
        s = v.stray
        uids = s.uids
        age = round(s.age, 3)
        cputime = round(s.cputime, 3)
        start = v.start_time
        if not (
            type(start) is float
            and type(age) is float
            and type(cputime) is float
            and isfinite(start)
            and isfinite(age)
            and isfinite(cputime)
            and type(s.pid) is int
            and type(s.ppid) is int
            and type(s.sid) is int
            and len(uids) == 4
            and all(type(u) is int for u in uids)
            and type(v.user) is str
            and type(v.comm) is str
            and type(v.cmdline) is str
            and (v.cgroup is None or type(v.cgroup) is str)
            and type(s.orphan) is bool
            and type(s.rule) is str
            and type(v.outcome) is str
        ):
            return None
        cgroup = "null" if v.cgroup is None else short(v.cgroup)
        out.append(
            f'{{{i}"pid": {s.pid},{i}"start_time": {start!r},{i}"ppid": {s.ppid},'
            f'{i}"sid": {s.sid},{i}"uids": [{i}  {uids[0]},{i}  {uids[1]},{i}  {uids[2]},'
            f'{i}  {uids[3]}{i}],{i}"user": {short(v.user)},{i}"comm": {short(v.comm)},'
            f'{i}"cmdline": {esc(v.cmdline)},{i}"cgroup": {cgroup},{i}"age": {age!r},'
            f'{i}"cputime": {cputime!r},{i}"orphan": {"true" if s.orphan else "false"},'
            f'{i}"rule": {short(s.rule)},{i}"outcome": {short(v.outcome)}\n    }}'
        )
    return "[\n    " + ",\n    ".join(out) + "\n  ]"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def execute(plan: Plan, *, kill: bool, policy: Policy, log: DecisionLog) -> Outcome:
    """Log the plan's decisions and, with ``kill``, terminate the strays.

    A dry run signals nothing: it only reads /proc and logs.
    """
    mode = "kill" if kill else "dry-run"
    what = "epilog" if plan.ended is not None else "prune"
    job = plan.ended.job_id if plan.ended is not None else "-"
    if log.enabled:  # else not even the syslog transport is imported
        log.info(
            fields(
                event="start",
                mode=mode,
                command=what,
                job=job,
                scanned=plan.scanned,
                strays=len(plan.strays),
                floor=plan.options.min_uid,
                min_age=f"{plan.options.min_age:g}s",
            )
        )
    for pid, why in sorted(plan.unreadable.items()) if log.enabled else ():
        log.warning(fields(event="unreadable", pid=pid, error=why, action="left alone"))
    # Read before any signal: a killed process's command line is gone.
    shown = read_shown_all([s.identity for s in plan.strays])
    views = tuple(_view_of(s, "would kill", v) for s, v in zip(plan.strays, shown, strict=True))
    report: Report | None = None
    if kill and plan.strays:
        from tether.prune.kill import kill_strays

        report = kill_strays(
            plan,
            policy,
            job_id=f"prune-{int(time.time())}",
            reason=f"tether {what}: stray processes",
        )
        by_identity = {(m.pid, m.start_time): m for m in report.members}
        views = tuple(
            replace(v, outcome=m.outcome if m is not None else "gone")
            for v in views
            for m in [by_identity.get((v.stray.pid, v.start_time))]
        )
    # Per-stray fields are built only when they go somewhere (--no-syslog:
    # thousands of escaped key=value lines for nothing).
    for v in views if log.enabled else ():
        s = v.stray
        action = "would-kill" if not kill else v.outcome
        log_fn = log.error if v.outcome in ("survived", "denied") else log.info
        log_fn(
            fields(
                event="stray",
                action=action,
                pid=s.pid,
                start=f"{v.start_time:.2f}",
                user=v.user,
                uid=s.uids[0],
                euid=s.uids[1],
                comm=v.comm,
                ppid=s.ppid,
                sid=s.sid,
                age=f"{s.age:.0f}s",
                cpu=f"{s.cputime:.1f}s",
                rule=s.rule,
                cmdline=v.cmdline[:200],
                job=job,
            )
        )
    failed = sum(1 for v in views if v.outcome in ("survived", "denied"))
    killed = sum(1 for v in views if v.outcome in ("killed", "exited", "gone")) if kill else 0
    if log.enabled:
        log.info(
            fields(
                event="done",
                mode=mode,
                command=what,
                job=job,
                strays=len(views),
                killed=killed,
                failed=failed,
                exempt=sum(plan.exempt.values()),
            )
        )
    return Outcome(
        mode=mode,
        plan=plan,
        strays=views,
        report=report,
        log_target=log.target,
        log_problem=log.problem or log.failure,
    )
