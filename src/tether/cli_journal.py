"""``tether reap`` and ``tether ps`` (no arguments): the journal of live jobs.

``tether reap`` terminates jobs whose supervisor and watchdog are both gone
(both killed, or an OOM kill took them together) with the policy recorded for
each, and clears records a reboot left behind. ``tether ps`` lists the
journal's jobs and who is looking after each.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from tether.journal import JobRecord, Journal, JournalProblem
from tether.recovery import JobState, job_state, membership_for, recover
from tether.report import oneline

EXIT_OK = 0
EXIT_LEFT_SOMETHING = 1


def _identity(identity: tuple[int, int] | None, alive: bool) -> dict[str, Any] | None:
    if identity is None:
        return None
    return {"pid": identity[0], "start_ticks": identity[1], "alive": alive}


def _job_dict(record: JobRecord, state: JobState) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "argv": list(record.argv),
        "state": state.describe(),
        "orphaned": state.orphaned,
        "supervisor": _identity(record.supervisor, state.supervisor_alive),
        "watchdog": _identity(record.watchdog, state.watchdog_alive),
        "leader_pid": record.leader[0] if record.leader else None,
        "cgroup": record.cgroup,
        "policy": record.policy_text,
        "started_at": record.started_at,
        "recorded_members": len(record.members),
        "restartable": record.restartable,
        "record_state": record.state,
    }


def _problem(p: JournalProblem) -> dict[str, str]:
    return {"path": p.path, "message": p.message}


def _warn(p: JournalProblem) -> None:
    click.echo(f"tether: journal: {p}", err=True)


def list_jobs(as_json: bool) -> int:
    """``tether ps`` without a pid: every job in the journal and its state."""
    journal = Journal.default()
    jobs: list[tuple[JobRecord, JobState]] = []
    problems: list[JournalProblem] = []
    for entry in journal.entries():
        if isinstance(entry, JournalProblem):
            problems.append(entry)
        else:
            jobs.append((entry, job_state(entry)))
    journal.close()
    if as_json:
        out = {
            "schema": 1,
            "journal": journal.directory,
            "jobs": [_job_dict(r, s) for r, s in jobs],
            "problems": [_problem(p) for p in problems],
        }
        click.echo(json.dumps(out, indent=2))
        return EXIT_LEFT_SOMETHING if problems else EXIT_OK
    for p in problems:
        _warn(p)
    if not jobs:
        click.echo(f"no jobs in the journal ({journal.directory})")
        return EXIT_LEFT_SOMETHING if problems else EXIT_OK
    if sys.stdout.isatty():
        _draw_jobs(jobs)
        return EXIT_LEFT_SOMETHING if problems else EXIT_OK
    click.echo(
        f"{'JOB':<24} {'SUPERVISOR':>10} {'LEADER':>7} {'STARTED':<19} {'STATE':<38} COMMAND"
    )
    for record, state in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at))
        what = state.describe() + (", restartable" if record.restartable else "")
        leader = str(record.leader[0]) if record.leader else "-"
        click.echo(
            f"{record.job_id:<24} {record.supervisor[0]:>10} {leader:>7} {started:<19} "
            f"{what:<38} {oneline(' '.join(record.argv), 60)}"
        )
    return EXIT_LEFT_SOMETHING if problems else EXIT_OK


def _state_colour(state: JobState) -> str | None:
    from tether import terminal as t

    if not state.same_boot:
        return t.DIM
    if state.given_up:
        return f"{t.BOLD};{t.RED}"
    if state.supervisor_alive:
        return t.GREEN
    return t.YELLOW if state.watchdog_alive else f"{t.BOLD};{t.RED}"


def _draw_jobs(jobs: list[tuple[JobRecord, JobState]]) -> None:
    """The journal listing for a terminal: state in colour, the trackers each job uses."""
    from tether import terminal as t

    paint = t.Paint(t.colour_wanted(sys.stdout))
    width = t.width_of(sys.stdout)
    rows = []
    for record, state in jobs:
        what = state.describe() + (", restartable" if record.restartable else "")
        rows.append((record, state, what, list(record.trackers)))
    state_width = max(len("STATE"), *(len(r[2]) for r in rows))
    found_width = max(len("TRACKERS"), *(len(",".join(r[3])) for r in rows))
    head = (
        f"{'JOB':<24} {'SUPERVISOR':>10} {'LEADER':>7} {'STARTED':<19} "
        f"{'STATE':<{state_width}} {'TRACKERS':<{found_width}} COMMAND"
    )
    click.echo(paint(head, t.BOLD))
    room = max(20, width - (24 + 1 + 10 + 1 + 7 + 1 + 19 + 1 + state_width + 1 + found_width + 1))
    for record, state, what, trackers in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at))
        leader = str(record.leader[0]) if record.leader else "-"
        click.echo(
            f"{paint.pad(record.job_id, t.BOLD, 24)} {record.supervisor[0]:>10} {leader:>7} "
            f"{started:<19} {paint.pad(what, _state_colour(state), state_width)} "
            f"{paint.trackers(trackers, found_width)} {oneline(' '.join(record.argv), room)}"
        )


_REAP_EPILOG = """\
\b
EXIT STATUS:
  0  every orphaned job is gone (or there was none)
  1  members survived the policy, or a journal record was unusable
     (reported and skipped)
  2  bad input or an unusable journal directory
"""


@click.command(epilog=_REAP_EPILOG)
@click.option(
    "-n", "--dry-run", is_flag=True, help="List what would be terminated; signal nothing."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema 1) instead of text.")
def reap(dry_run: bool, as_json: bool) -> None:
    """Terminate jobs whose supervisor and watchdog are both gone.

    Reads the journal of live jobs ($TETHER_RUNTIME_DIR, /run/tether for root,
    else $XDG_RUNTIME_DIR/tether or /tmp/tether-UID). Each orphaned job is
    terminated with the policy it was started with; records left by a previous
    boot are removed (nothing of theirs can be alive). Jobs still supervised
    are left alone. Restartable jobs are named: restarting them is the
    caller's decision.
    """
    journal = Journal.default()
    results: list[dict[str, Any]] = []
    problems: list[JournalProblem] = []
    failed = False
    for entry in journal.entries():
        if isinstance(entry, JournalProblem):
            problems.append(entry)
            if not as_json:
                _warn(entry)
            continue
        record, state = entry, job_state(entry)
        result = _job_dict(record, state)
        if not state.same_boot:
            result["action"] = "would remove" if dry_run else "removed"
            if not dry_run:
                journal.remove(record.job_id)
        elif not state.orphaned:
            result["action"] = "skipped"
        elif dry_run:
            membership = membership_for(record)
            try:
                live = [m for m in membership.scan() if m.alive]
            finally:
                membership.close()
            result["action"] = "would terminate"
            result["members"] = [{"pid": m.pid, "cmdline": m.cmdline} for m in live]
        else:
            report = recover(record, journal, reason="tether reap: supervisor and watchdog gone")
            result["action"] = "terminated" if report.complete else "survivors"
            result["report"] = report.to_dict()
            failed = failed or not report.complete
            if not as_json:
                from tether.terminal import render_report

                click.echo(render_report(report, sys.stdout))
        results.append(result)
        if not as_json:
            click.echo(_describe(result))
    journal.close()
    if as_json:
        out = {
            "schema": 1,
            "journal": journal.directory,
            "dry_run": dry_run,
            "jobs": results,
            "problems": [_problem(p) for p in problems],
        }
        click.echo(json.dumps(out, indent=2))
    elif not results and not problems:
        click.echo(f"nothing to reap ({journal.directory})")
    sys.exit(EXIT_LEFT_SOMETHING if failed or problems else EXIT_OK)


def _describe(result: dict[str, Any]) -> str:
    cmd = oneline(" ".join(result["argv"]), 60)
    head = f"job {result['job_id']} ({cmd}): {result['state']}"
    action = result["action"]
    if action == "skipped":
        sup = result["supervisor"]
        return f"{head}; supervisor pid {sup['pid']} is alive: left alone"
    if action in ("removed", "would remove"):
        return f"{head}; record {action}"
    tail = ""
    if result["restartable"]:
        tail = "; restartable: the caller may restart it"
    if action == "would terminate":
        members = result["members"]
        listed = ", ".join(f"pid {m['pid']} ({oneline(m['cmdline'], 40)})" for m in members)
        what = f"{len(members)} live member(s): {listed}" if members else "no live members"
        return f"{head}; would terminate with {result['policy']}: {what}{tail}"
    if action == "terminated":
        return f"{head}; terminated, nothing left{tail}"
    return f"{head}; members survived, record kept{tail}"
