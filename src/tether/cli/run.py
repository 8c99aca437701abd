"""``tether run``: run a command on a tether (locally, or with --host/-w on remote hosts).

Exit status follows coreutils ``timeout``: 124 timed out, 125 tether itself
failed (bad input, or members survived the policy), 126 the command is not
executable, 127 not found, 128+N the leader was killed by signal N, else the
leader's own status.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

import click

from tether.cli._common import (
    EXIT_FAILED,
    configured,
    fail,
    progress_line,
    with_policy_options,
    write_json,
)
from tether.cli._remote import remote_flags, wants_remote, with_remote_options

if TYPE_CHECKING:
    from tether.spec import JobSpec
    from tether.supervise import RunOutcome
    from tether.terminate import Progress

_RUN_EPILOG = """\
\b
EXIT STATUS (the command's own status, except):
  124  timed out: --timeout expired and the tree was terminated
  125  tether itself failed: bad input (including a bad option before
       run), or members survived the policy
  126  the command was found but is not executable
  127  the command was not found
  128+N  the leader was killed by signal N
"""


@click.command(
    "run",
    context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False},
    epilog=_RUN_EPILOG,
)
@with_policy_options
@click.option(
    "--timeout",
    "timeout_text",
    metavar="DURATION",
    help="Terminate the whole tree after DURATION (e.g. 30s, 5m, '1min 30s').",
)
@click.option(
    "--trackers",
    metavar="LIST",
    help="Trackers to use: auto (default), or a list of cgroup,subreaper,session,cookie,walk.",
)
@click.option(
    "--wait-leftovers",
    is_flag=True,
    help="When the leader exits, wait for leftover members instead of terminating them.",
)
@click.option(
    "--outlive-caller",
    is_flag=True,
    help="Keep running when the process that started tether exits "
    "(by default the job is terminated, as on SIGHUP).",
)
@click.option(
    "--tag-gid",
    type=click.IntRange(min=0),
    metavar="GID",
    help="(root) Add supplementary group GID to the job's processes, so `tether kill "
    "--gid` and `tether prune` find those that escaped session and cgroup.",
)
@click.option(
    "--restartable",
    is_flag=True,
    help="Mark the job restartable in the journal (tether reap names such jobs).",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not print the report on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Print the report even when nothing was left.")
@with_remote_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    command: tuple[str, ...],
    policy_flags: dict[str, object],
    json_file: str | None,
    timeout_text: str | None,
    trackers: str | None,
    wait_leftovers: bool,
    outlive_caller: bool,
    tag_gid: int | None,
    restartable: bool,
    quiet: bool,
    verbose: bool,
    **remote: Any,
) -> None:
    """Run COMMAND on a tether: when it ends, times out or is cancelled, its
    whole tree is terminated with the policy.

    INT, TERM, HUP or QUIT sent to tether start the policy on the whole tree;
    a second INT skips to the last step. So does the exit of the process that
    started tether (its caller: a CI agent, a scheduler), unless
    --outlive-caller. If tether itself is killed, its watchdog terminates the
    job; if both are, `tether reap` does. stdin, stdout and stderr pass through.
    """
    flags = {
        **policy_flags,
        "run.timeout": timeout_text,
        "run.trackers": trackers,
        "run.wait_leftovers": wait_leftovers or None,
    }
    if wants_remote(remote):
        flags.update(remote_flags(remote))
    config = configured(flags)
    from tether.spec import JobSpec

    spec = JobSpec(
        argv=command,
        policy=config.policy_for_run(),
        trackers=config["run.trackers"],
        timeout=config["run.timeout"],
        restartable=restartable,
        tag_gid=tag_gid,
        leftovers="wait" if config["run.wait_leftovers"] else "terminate",
    )
    if wants_remote(remote):
        from tether.cli._remote import run_remote

        run_remote(
            spec,
            config=config,
            json_file=json_file,
            quiet=quiet,
            verbose=verbose,
            outlive_caller=outlive_caller,
            **remote,
        )
    outcome = _supervised(
        spec, outlive_caller=outlive_caller, quiet=quiet, json_on_stdout=json_file == "-"
    )
    report = outcome.report
    assert report is not None  # a failed termination raised in _supervised
    write_json(json_file, report.to_json())
    if not quiet and (verbose or report.killed or outcome.timed_out or outcome.signals
                      or not report.complete):  # fmt: skip
        from tether.display import render_report

        click.echo(render_report(report, sys.stderr), err=True)
    if not report.complete:
        fail(
            f"{len(report.survivors)} member(s) survived the policy: "
            + ", ".join(f"pid {s.pid} ({s.state})" for s in report.survivors),
            EXIT_FAILED,
        )
    sys.exit(outcome.exit_status)


def _supervised(
    spec: JobSpec, *, outlive_caller: bool, quiet: bool, json_on_stdout: bool = False
) -> RunOutcome:
    """Run ``spec`` with tether as its dedicated supervisor, until it is over.

    With ``--json`` the report is tether's stdout, so the job's stdout goes
    to tether's stderr: the document is never mixed with the job's output.
    """
    from tether.caller import open_caller
    from tether.job import Job
    from tether.supervise import forwarded_signals, supervise

    with contextlib.ExitStack() as stack:
        caller = None if outlive_caller else open_caller()
        if caller is not None:
            stack.callback(caller.close)
        inbox = stack.enter_context(forwarded_signals(wake_on_child=True))
        stdout = sys.stderr.fileno() if json_on_stdout else None
        job = stack.enter_context(
            Job(spec, stdout=stdout, dedicated_supervisor=True, wake_fd=inbox.fileno)
        )
        progress = progress_line(quiet)
        if progress is not None:
            stack.callback(progress.clear)
        outcome = supervise(
            job,
            inbox=inbox,
            timeout=spec.timeout,
            leftovers=spec.leftovers,
            caller=caller,
            on_progress=progress if progress is not None or quiet else _StepLines(job.id),
        )
        if outcome.error is not None:
            raise outcome.error
    return outcome


class _StepLines:
    """Piped stderr (a CI log): one line the moment each step of a termination
    starts, as ``timeout -v`` says when it signals, not only the report after
    the grace."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.step = 0

    def __call__(self, progress: Progress) -> None:
        if progress.step == self.step:
            return
        self.step = progress.step
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(
                f"tether: terminating job {self.job_id}: step {progress.step}/{progress.steps}, "
                f"{progress.signal} sent to {progress.members_left} member(s)\n"
            )
            sys.stderr.flush()
