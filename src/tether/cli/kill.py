"""``tether kill``: terminate a tree tether did not start, or every process of a tag gid."""

from __future__ import annotations

import sys

import click

from tether.cli._common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    configured,
    parse_pid,
    progress_line,
    termination_policy,
    with_policy_options,
    write_json,
)
from tether.errors import UsageError

_KILL_EPILOG = """\
\b
EXIT STATUS:
  0  the tree is gone
  1  members survived the policy
  2  bad input: unknown signal, bad duration, pid 1 or below, tether
     itself or an ancestor, no such process
"""


@click.command("kill", epilog=_KILL_EPILOG)
@with_policy_options
@click.option(
    "--gid",
    type=click.IntRange(min=0),
    metavar="GID",
    help="Instead of a tree: every process carrying supplementary group GID "
    "(see tether run --tag-gid).",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not print the report.")
@click.argument("pid", type=str, required=False)
def kill(
    pid: str | None,
    gid: int | None,
    policy_flags: dict[str, object],
    json_file: str | None,
    quiet: bool,
) -> None:
    """Terminate the tree rooted at PID, a process tether did not start, or
    with --gid every process tagged with that supplementary group.

    Best effort: the report says which trackers could apply.
    """
    if (pid is None) == (gid is None):
        raise UsageError("give either a PID or --gid GID")
    policy = termination_policy(configured(policy_flags))
    if gid is not None:
        from tether.job import kill_gid

        report = kill_gid(gid, policy=policy)
    else:
        from tether.job import kill_tree

        assert pid is not None
        target = parse_pid(pid)
        progress = progress_line(quiet)
        try:
            report = kill_tree(target, policy=policy, on_progress=progress)
        finally:
            if progress is not None:
                progress.clear()
    write_json(json_file, report.to_json())
    if not quiet and json_file != "-":
        from tether.display import render_report

        click.echo(render_report(report, sys.stdout))
    sys.exit(EXIT_OK if report.complete else EXIT_INCOMPLETE)
