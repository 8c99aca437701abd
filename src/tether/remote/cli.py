"""``tether run --host/-w`` (remote jobs, fan-out) and ``tether cancel --host``.

Exit status of a remote ``tether run``: each host's status follows ``tether
run`` (124 timed out; 125 tether failed: unreachable host, authentication or
host key failure, no usable python3, lost connection, or members survived;
126/127 command not executable/not found there; 128+N the leader was killed by
signal N; otherwise the command's status), and the overall status is the
largest of them (as ``pdsh -S``). ``tether cancel``: 0 the remote tree is gone
(or the job had already ended); 1 members survived; 2 bad input; 125 the host
could not be reached or the agent failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
from collections import deque
from typing import NoReturn

import click

from tether.cli import EXIT_BAD_INPUT, EXIT_FAILED, _open_caller, fail, write_json
from tether.policy import Policy, parse_duration
from tether.remote.client import (
    HostResult,
    HostRun,
    OutputSink,
    RunSpec,
    SshOptions,
    cancel_job,
    render_host_report,
    worst,
)
from tether.remote.hostlist import HostListError, parse_target, resolve_targets

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
JSON_SCHEMA = 1
_JOB_ID_CHARS = frozenset("0123456789abcdef")


def _ssh(options: tuple[str, ...], config: str | None, engine: str = "auto") -> SshOptions:
    for opt in options:
        if not opt or "\n" in opt or "\0" in opt:
            raise HostListError(f"bad ssh option {opt!r}")
    if config is not None and not os.path.isfile(config):
        raise HostListError(f"ssh config file {config!r} does not exist")
    return SshOptions(tuple(options), config, engine=engine)


def _write_json(target: str | None, results: list[HostResult]) -> None:
    document = {"schema": JSON_SCHEMA, "hosts": [r.to_dict() for r in results]}
    write_json(target, json.dumps(document, indent=2))


def run_remote(
    command: tuple[str, ...],
    *,
    policy: Policy,
    timeout: float | None,
    trackers: str,
    wait_leftovers: bool,
    json_file: str | None,
    quiet: bool,
    verbose: bool,
    outlive_caller: bool = True,
    restartable: bool = False,
    tag_gid: int | None = None,
    remote_hosts: tuple[str, ...] = (),
    remote_host_lists: tuple[str, ...] = (),
    remote_excludes: tuple[str, ...] = (),
    remote_fanout: int | None = None,
    remote_ssh_options: tuple[str, ...] = (),
    remote_ssh_config: str | None = None,
    remote_cancel_timeout: str = "5s",
    remote_engine: str | None = None,
    remote_no_stdin: bool = False,
) -> NoReturn:
    """Run ``command`` on every target; exit with the largest host status."""
    from tether.config import load_config

    config = load_config()
    if remote_fanout is None:
        remote_fanout = int(config["remote.fanout"])
    remote_engine = remote_engine or str(config["remote.engine"])
    # ssh takes the first value of an option: the command line's must come first.
    remote_ssh_options = (*remote_ssh_options, *config["remote.ssh_options"])
    if wait_leftovers:
        fail("--wait-leftovers is not supported with --host/-w", EXIT_FAILED)
    targets = resolve_targets(remote_hosts, remote_host_lists, remote_excludes)
    if not targets:
        fail("no hosts left to run on (every host was excluded)", EXIT_FAILED)
    ssh = _ssh(remote_ssh_options, remote_ssh_config, remote_engine)
    ack_timeout = parse_duration(remote_cancel_timeout)
    prefix = len(targets) > 1 or bool(remote_host_lists)
    # One host reads our stdin, as with ssh; a fan-out does not (as pdsh).
    stdin_fd = None if remote_no_stdin or prefix else sys.stdin.fileno()
    spec = RunSpec(
        tuple(command),
        policy,
        timeout,
        trackers,
        stdin_fd=stdin_fd,
        restartable=restartable,
        tag_gid=tag_gid,
    )
    sink = OutputSink(prefix)

    ev_r, ev_w = os.pipe()
    wake_r, wake_w = os.pipe()
    for fd in (ev_r, ev_w, wake_r, wake_w):
        os.set_blocking(fd, False)

    def on_event() -> None:
        with contextlib.suppress(OSError):
            os.write(ev_w, b"x")

    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    # As locally: the caller's exit (a CI agent, a scheduler) cancels every
    # host, as a SIGHUP would, unless --outlive-caller.
    caller = None if outlive_caller else _open_caller()
    old_handlers = {s: signal.signal(s, on_signal) for s in _FORWARDED}
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    runs = [HostRun(t, spec, ssh, sink, on_event) for t in targets]
    pending = deque(runs)
    active: list[HostRun] = []
    seen_signals = 0
    cancel_reason: str | None = None
    caller_gone: str | None = None
    try:
        while pending or active:
            while pending and len(active) < remote_fanout and cancel_reason is None:
                run = pending.popleft()
                active.append(run)
                run.start()
            if caller is not None and cancel_reason is None and caller.has_exited():
                received.append(signal.SIGHUP)
                caller_gone = f"the caller (pid {caller.pid}) exited"
            if len(received) > seen_signals:
                new = received[seen_signals:]
                seen_signals = len(received)
                if cancel_reason is None:
                    name = signal.Signals(new[0]).name
                    cancel_reason = caller_gone or f"tether received {name} on the client"
                    for run in pending:
                        run.result.error = "cancelled before it started"
                    pending.clear()
                    new = new[1:]
                    for run in active:
                        run.cancel(cancel_reason)
                if any(s == signal.SIGINT for s in new):
                    # A second INT: every host skips to the policy's last step.
                    for run in active:
                        run.cancel(cancel_reason)
            if cancel_reason is not None:
                for run in active:
                    if run.ack_overdue(ack_timeout):
                        run.cancel_out_of_band(f"no acknowledgement within {remote_cancel_timeout}")
            active = [r for r in active if not r.done.is_set()]
            if not pending and not active:
                break
            wait_ms = 100 if cancel_reason is not None else None
            poller = select.poll()
            poller.register(ev_r, select.POLLIN)
            poller.register(wake_r, select.POLLIN)
            if caller is not None and caller.fileno >= 0 and cancel_reason is None:
                poller.register(caller.fileno, select.POLLIN)
            poller.poll(wait_ms)
            for fd in (ev_r, wake_r):
                with contextlib.suppress(OSError):
                    os.read(fd, 4096)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        for fd in (ev_r, ev_w, wake_r, wake_w):
            os.close(fd)
        if caller is not None:
            caller.close()
    results = [r.result for r in runs]
    _write_json(json_file, results)
    for result in results:
        if result.error is not None:
            click.echo(f"tether: {result.target.label}: {result.error}", err=True)
        report = result.report
        if report is None or quiet:
            continue
        terminated = (
            bool([m for m in report.get("members", ()) if m.get("outcome") == "killed"])
            or result.timed_out
            or result.cancelled is not None
            or not report.get("complete", False)
        )
        if verbose or terminated:
            click.echo(render_host_report(result, prefix), err=True)
        if not report.get("complete", False):
            survivors = report.get("survivors", [])
            click.echo(
                f"tether: {result.target.label}: {len(survivors)} remote member(s) survived the "
                "policy: " + ", ".join(f"pid {s['pid']} ({s['state']})" for s in survivors),
                err=True,
            )
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(worst([r.exit_status for r in results]))


_policy_opts = [
    click.option("--policy", "policy_text", metavar="SEQ",
                 help="Termination policy (default: the one the job was started with)."),
    click.option("-o", "--ssh-option", "ssh_options", multiple=True, metavar="OPTION",
                 help="Passed to ssh as -o OPTION."),
    click.option("-F", "--ssh-config", "ssh_config", metavar="FILE",
                 help="ssh configuration file (ssh -F)."),
    click.option("--json", "json_file", metavar="FILE",
                 help="Write the result as JSON to FILE ('-' for stdout)."),
    click.option("-q", "--quiet", is_flag=True, help="Do not print the report."),
]  # fmt: skip


@click.command(
    "cancel",
    epilog="\b\nEXIT STATUS:\n"
    "  0  the remote tree is gone (or the job had ended)\n"
    "  1  members survived the policy\n"
    "  2  bad input\n"
    "  125  the host could not be reached or its agent failed\n",
)
@click.option("--host", "host", required=True, metavar="[USER@]HOST[:PORT]",
              help="The host the job runs on.")  # fmt: skip
@_policy_opts[0]
@_policy_opts[1]
@_policy_opts[2]
@_policy_opts[3]
@_policy_opts[4]
@click.argument("job_id")
def cancel_command(
    host: str,
    job_id: str,
    policy_text: str | None,
    ssh_options: tuple[str, ...],
    ssh_config: str | None,
    json_file: str | None,
    quiet: bool,
) -> None:
    """Cancel remote job JOB_ID over a new connection (out of band).

    The host's journal is searched for the job; its old supervisor and
    watchdog are stopped, and what is left of its tree is terminated with the
    policy there. Works when the connection that started the job is gone or
    hung.
    """
    if not (8 <= len(job_id) <= 64) or not set(job_id) <= _JOB_ID_CHARS:
        fail(f"bad job id {job_id!r} (expected the hex id tether printed)", EXIT_BAD_INPUT)
    target = parse_target(host)
    ssh = _ssh(ssh_options, ssh_config)
    policy = Policy.parse(policy_text) if policy_text is not None else None
    result = cancel_job(target, job_id, ssh, policy=policy)
    _write_json(json_file, [result])
    if result.error is not None:
        fail(f"{target.label}: {result.error}", EXIT_FAILED)
    if not quiet and json_file != "-":
        text = render_host_report(result, prefix=False)
        if text:
            click.echo(text)
    sys.exit(result.exit_status)
