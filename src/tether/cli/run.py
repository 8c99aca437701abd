"""``tether run``: run a command on a tether (locally, or with --host/-w on remote hosts).

Exit status follows coreutils ``timeout``: 124 timed out, 125 tether itself
failed (bad input, or members survived the policy), 126 the command is not
executable, 127 not found, 128+N the leader was killed by signal N, else the
leader's own status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

import click

from tether.cli._common import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    configured,
    fail,
    policy_flags,
    progress_line,
    with_policy_options,
    write_json,
)
from tether.cli._remote import remote_flags, wants_remote, with_remote_options

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

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
    policy_text: str | None,
    sig: str | None,
    kill_after: str | None,
    leader_signal: str | None,
    tree_delay: str | None,
    kill_script: str | None,
    kill_script_mode: str | None,
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
    from tether.job import Job

    flags = {
        **policy_flags(
            policy_text, sig, kill_after, leader_signal, tree_delay, kill_script, kill_script_mode
        ),
        "run.timeout": timeout_text,
        "run.trackers": trackers,
        "run.wait_leftovers": wait_leftovers or None,
    }
    if wants_remote(remote):
        flags.update(remote_flags(remote))
    config = configured(flags)
    policy = config.policy_for_run()
    timeout = config["run.timeout"]
    trackers = config["run.trackers"]
    wait_leftovers = config["run.wait_leftovers"]
    if wants_remote(remote):
        from tether.cli._remote import run_remote

        run_remote(
            command,
            config=config,
            policy=policy,
            timeout=timeout,
            trackers=trackers,
            wait_leftovers=wait_leftovers,
            json_file=json_file,
            quiet=quiet,
            verbose=verbose,
            outlive_caller=outlive_caller,
            restartable=restartable,
            tag_gid=tag_gid,
            **remote,
        )

    received: list[int] = []
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    def on_child(_signum: int, _frame: object) -> None:
        # Only wakes the loop (through the wakeup fd) to reap adopted orphans.
        pass

    if outlive_caller:
        caller = None
    else:
        from tether.caller import open_caller

        caller = open_caller()
    old_handlers = {s: signal.signal(s, on_signal) for s in _FORWARDED}
    old_handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, on_child)
    old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    try:
        job = Job(
            command,
            policy=policy,
            trackers=trackers,
            dedicated_supervisor=True,
            wake_fd=rfd,
            restartable=restartable,
            tag_gid=tag_gid,
        )
    except BaseException:
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if caller is not None:
            caller.close()
        raise
    watched = [caller.fileno] if caller is not None and caller.fileno >= 0 else []
    timed_out = False
    reason = "leftovers after the leader exited"
    with job:
        deadline = None if timeout is None else _now() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - _now())
            rc = job.wait(left, also=watched)
            # Drain the wake fd *before* looking at what woke us: a signal
            # that lands after the checks below then leaves its byte for the
            # next wait instead of being slept through.
            with contextlib.suppress(BlockingIOError, InterruptedError):
                os.read(rfd, 4096)
            if caller is not None and caller.has_exited():
                reason = f"the caller (pid {caller.pid}) exited"
                received.append(signal.SIGHUP)
                break
            if received:
                reason = (
                    f"tether received SIG{signal.Signals(received[0]).name.removeprefix('SIG')}"
                )
                break
            if rc is not None:
                if wait_leftovers:
                    job.wait_tree(None if deadline is None else max(0.0, deadline - _now()))
                    if received:
                        reason = "tether received a signal while waiting for leftovers"
                    elif deadline is not None and _now() >= deadline and job.members():
                        timed_out, reason = True, "timeout"
                break
            if deadline is not None and _now() >= deadline:
                timed_out, reason = True, "timeout"
                break
            # A SIGCHLD: an orphan the subreaper adopted has exited. Reap it
            # now, or zombies pile up for the job's whole life (tether as a
            # container's PID 1 must reap like an init).
            job.reap_adopted()
        count_at_cancel = received.count(signal.SIGINT)

        def skip_to_last() -> bool:
            # Any INT beyond those that started this termination is "the second".
            return received.count(signal.SIGINT) > count_at_cancel

        progress = progress_line(quiet)
        try:
            report = job.cancel(reason, skip_to_last=skip_to_last, on_progress=progress)
        finally:
            if progress is not None:
                progress.clear()
    if caller is not None:
        caller.close()
    signal.set_wakeup_fd(old_wakeup)
    for s, h in old_handlers.items():
        signal.signal(s, h)
    os.close(rfd)
    os.close(wfd)

    write_json(json_file, report.to_json())
    terminated_something = bool(report.killed) or timed_out or received or not report.complete
    if not quiet and (verbose or terminated_something):
        from tether.display import render_report

        click.echo(render_report(report, sys.stderr), err=True)
    if not report.complete:
        fail(
            f"{len(report.survivors)} member(s) survived the policy: "
            + ", ".join(f"pid {s.pid} ({s.state})" for s in report.survivors),
            EXIT_FAILED,
        )
    if timed_out:
        sys.exit(EXIT_TIMEOUT)
    rc = job.returncode
    if rc is None:
        sys.exit(EXIT_FAILED)
    sys.exit(128 - rc if rc < 0 else rc)


def _now() -> float:
    import time

    return time.monotonic()
