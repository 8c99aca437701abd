"""``tether reap``: terminate jobs whose supervisor and watchdog are both gone.

Both killed, or an OOM kill took them together: each such job is terminated
with the policy recorded for it, and records a reboot left behind are cleared.
"""

from __future__ import annotations

import json
import sys

import click

from tether.cli._common import EXIT_INCOMPLETE, EXIT_OK
from tether.cli.ps import job_dict, problem_dict, warn
from tether.journal import Journal, JournalProblem
from tether.recovery import job_state, membership_for, recover
from tether.report import oneline

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_REAP_EPILOG = """\
\b
EXIT STATUS:
  0  every orphaned job is gone (or there was none)
  1  members survived the policy, or a journal record was unusable
     (reported and skipped)
  2  bad input or an unusable journal directory
"""


@click.command("reap", epilog=_REAP_EPILOG)
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
                warn(entry)
            continue
        record, state = entry, job_state(entry)
        result = job_dict(record, state)
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
                from tether.display import render_report

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
            "problems": [problem_dict(p) for p in problems],
        }
        click.echo(json.dumps(out, indent=2))
    elif not results and not problems:
        click.echo(f"nothing to reap ({journal.directory})")
    sys.exit(EXIT_INCOMPLETE if failed or problems else EXIT_OK)


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
