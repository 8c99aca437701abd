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


@click.command(
    epilog="EXIT STATUS: 0 every orphaned job is gone (or there was none); "
    "1 members survived the policy, or a journal record was unusable (reported and "
    "skipped); 2 bad input."
)
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
                click.echo(report.render_text())
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
