"""``tether run``: run a command on a tether (locally, or with --host/-w on remote hosts).

Exit status follows coreutils ``timeout``: 124 timed out, 125 tether itself
failed (bad input, or members survived the policy), 126 the command is not
executable, 127 not found, 128+N the leader was killed by signal N, else the
leader's own status; 123 with --fail-on-leftovers when members outlived the
leader.

The click command is built on first use (:func:`__getattr__`). The common
form (``run``'s own options, then the command) is parsed by :func:`parse_fast`
and run without importing click at all (~20 ms of start-up and ~5 MB of the
supervisor's memory); anything else (``--help``, an error, the remote
options, completion) goes to the click command, which says what is wrong.
"""

from __future__ import annotations

import sys

from tether._collector import gc_back_on
from tether.cli._common import (
    EXIT_FAILED,
    as_click_would,
    built_on_first_use,
    configured,
    echo_err,
    fail,
    merge_policy_parameters,
    progress_line,
    termination_policy,
    write_json,
)

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import click

    from tether.spec import JobSpec
    from tether.supervise import RunOutcome
    from tether.terminate import Progress

_RUN_EPILOG = """\
\b
EXIT STATUS (the command's own status, except):
  123  --fail-on-leftovers: members were still running when the
       leader exited (they were terminated, or waited for)
  124  timed out: --timeout expired and the tree was terminated
       (with --preserve-status: the command's status instead)
  125  tether itself failed: bad input (including a bad option before
       run), or members survived the policy
  126  the command was found but is not executable
  127  the command was not found
  128+N  the leader was killed by signal N
"""


#: ``run``'s own options, as :func:`parse_fast` reads them: option -> (the
#: click parameter it sets, whether it takes a value). A test holds this
#: table and the click command to the same parse of generated argv.
FAST_OPTIONS: dict[str, tuple[str, bool]] = {
    "--policy": ("policy_text", True),
    "-s": ("sig", True),
    "--signal": ("sig", True),
    "-k": ("kill_after", True),
    "--kill-after": ("kill_after", True),
    "--leader-signal": ("leader_signal", True),
    "--tree-delay": ("tree_delay", True),
    "--kill-script": ("kill_script", True),
    "--kill-script-mode": ("kill_script_mode", True),
    "--json": ("json_stdout", False),
    "--json-file": ("json_file", True),
    "--timeout": ("timeout_text", True),
    "--trackers": ("trackers", True),
    "--wait-leftovers": ("wait_leftovers", False),
    "--outlive-caller": ("outlive_caller", False),
    "--tag-gid": ("tag_gid", True),
    "--restartable": ("restartable", False),
    "--forward": ("forward", True),
    "--cancel-on": ("cancel_on", True),
    "--foreground": ("foreground", False),
    "--preserve-status": ("preserve_status", False),
    "--fail-on-leftovers": ("fail_on_leftovers", False),
    "-q": ("quiet", False),
    "--quiet": ("quiet", False),
    "-v": ("verbose", False),
    "--verbose": ("verbose", False),
}
#: The remote options (tether.cli._remote), by kind: "flag", "value", or
#: "multiple" (repeatable: each one adds a value, as click's multiple=True).
FAST_REMOTE_OPTIONS: dict[str, tuple[str, str]] = {
    "--host": ("remote_hosts", "multiple"),
    "-w": ("remote_host_lists", "multiple"),
    "--hosts": ("remote_host_lists", "multiple"),
    "-x": ("remote_excludes", "multiple"),
    "--exclude": ("remote_excludes", "multiple"),
    "-f": ("remote_fanout", "value"),
    "--fanout": ("remote_fanout", "value"),
    "-o": ("remote_ssh_options", "multiple"),
    "--ssh-option": ("remote_ssh_options", "multiple"),
    "-F": ("remote_ssh_config", "value"),
    "--ssh-config": ("remote_ssh_config", "value"),
    "-l": ("remote_login", "value"),
    "--login": ("remote_login", "value"),
    "-N": ("remote_no_prefix", "flag"),
    "--no-host-prefix": ("remote_no_prefix", "flag"),
    "-b": ("remote_gather", "flag"),
    "--gather": ("remote_gather", "flag"),
    "-n": ("remote_no_stdin", "flag"),
    "--no-stdin": ("remote_no_stdin", "flag"),
    "--remote-engine": ("remote_engine", "value"),
    "--cancel-timeout": ("remote_cancel_timeout", "value"),
}


def parse_fast(args: list[str]) -> dict[str, Any] | None:
    """``run``'s arguments (those after ``run``) as the click command's
    parameters, or None for anything this parser does not fully understand:
    then the click command parses them, and says what is wrong. click's
    rules: ``--opt VALUE``, ``--opt=VALUE``, ``-sVALUE``; the last of a
    repeated option wins, but a repeatable one (``--host``) adds; the
    options end at ``--`` or at the first argument that is not one (``-``
    is an argument).
    """
    params: dict[str, Any] = {param: None for param, _ in FAST_OPTIONS.values()}
    params.update({param: False for param, value in FAST_OPTIONS.values() if not value})
    for param, kind in FAST_REMOTE_OPTIONS.values():
        params[param] = {"flag": False, "value": None, "multiple": ()}[kind]
    params["remote_cancel_timeout"] = "5s"
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg[:1] != "-" or arg == "-":
            break
        name, eq, value = arg.partition("=") if arg[:2] == "--" else (arg[:2], "", arg[2:])
        known = FAST_OPTIONS.get(name)
        if known is None:
            remote = FAST_REMOTE_OPTIONS.get(name)
            if remote is None:
                return None
            param, kind = remote
            known = (param, kind != "flag")
        else:
            kind = ""
        param, takes_value = known
        if not takes_value:
            if eq or value:
                return None  # a value for a flag, or short flags run together (-qv)
            # `--json FILE` is the deprecated spelling of --json-file FILE,
            # which the click path rewrites, with a warning.
            if name == "--json" and i + 1 < len(args):
                after = args[i + 1]
                if after == "-" or after.endswith(".json"):
                    return None
            params[param] = True
        else:
            if not eq and not value:
                if i + 1 >= len(args):
                    return None
                i += 1
                value = args[i]
            params[param] = (*params[param], value) if kind == "multiple" else value
        i += 1
    command = tuple(args[i:])
    if not command:
        return None
    fanout = params["remote_fanout"]
    if fanout is not None:
        # click's IntRange(min=1); anything int() reads otherwise is click's to say.
        if not (fanout.isascii() and fanout.isdigit() and int(fanout) >= 1):
            return None
        params["remote_fanout"] = int(fanout)
    if params["remote_engine"] not in (None, "auto", "python", "sh"):
        return None
    mode = params["kill_script_mode"]
    if mode is not None and mode not in ("precede", "replace"):
        return None
    gid = params["tag_gid"]
    if gid is not None:
        if not (gid.isascii() and gid.isdigit()):
            return None
        params["tag_gid"] = int(gid)
    params["command"] = command
    return params


def run_fast(params: dict[str, Any]) -> None:
    """Run what :func:`parse_fast` parsed, as the click group and command would."""
    remote = {k: params.pop(k) for k in list(params) if k.startswith("remote_")}
    as_click_would(lambda: _run(**merge_policy_parameters(params), remote=remote))


def __getattr__(name: str) -> object:
    return built_on_first_use(__name__, globals(), {"run": _make_command}, name)


def _make_command() -> click.Command:
    import click

    from tether.cli._common import with_policy_options
    from tether.cli._remote import with_remote_options

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
    @click.option(
        "--forward",
        metavar="SIGS",
        help="Signals passed on to the command instead of cancelling the job, besides "
        "USR1,USR2,WINCH (and HUP when tether is PID 1), e.g. HUP,TERM.",
    )
    @click.option(
        "--cancel-on",
        metavar="SIGS",
        help="Signals that start the policy (default INT,TERM,HUP,QUIT; as PID 1 "
        "INT,TERM,QUIT); the default ones left out are passed on. 'none': no signal cancels.",
    )
    @click.option(
        "--foreground",
        is_flag=True,
        help="Let the command keep the terminal (as timeout --foreground): /dev/tty, Ctrl-C "
        "and Ctrl-Z reach it, and Ctrl-C does not cancel the job. No session tracking.",
    )
    @click.option(
        "--preserve-status",
        is_flag=True,
        help="Exit with the command's status even when --timeout expired (as timeout).",
    )
    @click.option(
        "--fail-on-leftovers",
        is_flag=True,
        help="Exit 123 if members were still running when the command exited "
        "(they are terminated as usual): fails a CI step that leaks processes.",
    )
    @click.option("-q", "--quiet", is_flag=True, help="Do not print the report on stderr.")
    @click.option(
        "-v",
        "--verbose",
        is_flag=True,
        help="Print a line on stderr as each step of the policy is sent (also on a terminal) "
        "and each signal passed on, and the report even when nothing was left.",
    )
    @with_remote_options
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    def run(command: tuple[str, ...], **options: Any) -> None:
        """Run COMMAND on a tether: when it ends, times out or is cancelled, its
        whole tree is terminated with the policy.

        INT, TERM, HUP or QUIT sent to tether start the policy on the whole tree;
        each further one moves it on to its next step at once. USR1, USR2 and
        WINCH are passed on to the command (and HUP too when tether is PID 1, as
        tini does). The exit of the process that started tether (its caller: a
        CI agent, a scheduler) starts the policy too, unless --outlive-caller or
        tether was started with SIGHUP ignored (nohup). If tether itself is
        killed, its watchdog terminates the job; if both are, `tether reap` does.
        stdin, stdout and stderr pass through.
        """
        remote = {k: options.pop(k) for k in list(options) if k.startswith("remote_")}
        _run(command=command, **options, remote=remote)

    return run


def _run(
    command: tuple[str, ...],
    policy_flags: dict[str, object],
    json_file: str | None,
    timeout_text: str | None,
    trackers: str | None,
    wait_leftovers: bool,
    outlive_caller: bool,
    tag_gid: int | None,
    restartable: bool,
    forward: str | None,
    cancel_on: str | None,
    foreground: bool,
    preserve_status: bool,
    fail_on_leftovers: bool,
    quiet: bool,
    verbose: bool,
    remote: dict[str, Any] | None,
) -> None:
    """The command, as the click command or :func:`run_fast` calls it (``remote``:
    the remote options, or None)."""
    flags = {
        **policy_flags,
        "run.timeout": timeout_text,
        "run.trackers": trackers,
        "run.wait_leftovers": wait_leftovers or None,
        "run.forward": forward,
        "run.cancel_on": cancel_on,
        "run.fail_on_leftovers": fail_on_leftovers or None,
    }
    if remote is not None and not (remote.get("remote_hosts") or remote.get("remote_host_lists")):
        remote = None  # no host asked for: a local run (which imports nothing remote)
    if remote is not None:
        from tether.cli._remote import remote_flags

        flags.update(remote_flags(remote))
        for given, flag in (
            (forward, "--forward"), (cancel_on, "--cancel-on"), (foreground, "--foreground"),
            (preserve_status, "--preserve-status"), (fail_on_leftovers, "--fail-on-leftovers"),
        ):  # fmt: skip
            if given:
                fail(f"{flag} is not supported with --host/-w", EXIT_FAILED)
    config = configured(flags)
    from tether.spec import JobSpec

    spec = JobSpec(
        argv=command,
        policy=termination_policy(config),
        trackers=config["run.trackers"],
        timeout=config["run.timeout"],
        restartable=restartable,
        tag_gid=tag_gid,
        leftovers="wait" if config["run.wait_leftovers"] else "terminate",
        forward=config["run.forward"],
        cancel_on=None if config["run.cancel_on"] == "auto" else config["run.cancel_on"],
        foreground=foreground,
        fail_on_leftovers=config["run.fail_on_leftovers"],
    )
    if remote is not None:
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
        spec,
        outlive_caller=outlive_caller,
        quiet=quiet,
        verbose=verbose,
        json_on_stdout=json_file == "-",
    )
    report = outcome.report
    assert report is not None  # a failed termination raised in _supervised
    if json_file is not None:
        write_json(json_file, report.to_json())
    if not quiet and (verbose or report.killed or outcome.timed_out or outcome.signals
                      or not report.complete):  # fmt: skip
        from tether.display import render_report

        echo_err(render_report(report, sys.stderr))
    if not report.complete:
        fail(
            f"{len(report.survivors)} member(s) survived the policy: "
            + ", ".join(f"pid {s.pid} ({s.state})" for s in report.survivors),
            EXIT_FAILED,
        )
    if outcome.leftovers and not quiet:
        rc = outcome.returncode
        echo_err(
            f"tether: {outcome.leftovers} member(s) were still running when the command "
            f"exited (status {rc if rc is None or rc >= 0 else 128 - rc}): "
            "--fail-on-leftovers"
        )
    sys.exit(outcome.status(preserve_status=preserve_status))


def _supervised(
    spec: JobSpec,
    *,
    outlive_caller: bool,
    quiet: bool,
    verbose: bool = False,
    json_on_stdout: bool = False,
) -> RunOutcome:
    """Run ``spec`` with tether as its dedicated supervisor, until it is over.

    With ``--json`` the report is tether's stdout, so the job's stdout goes
    to tether's stderr: the document is never mixed with the job's output.
    """
    from tether.caller import hangup_ignored, open_caller
    from tether.job import Job
    from tether.supervise import forwarded_signals, signal_roles, supervise

    # Before any handler is installed: nohup's SIG_IGN is read here.
    roles = signal_roles(
        forward=spec.forward,
        cancel_on=spec.cancel_on,
        foreground=spec.foreground,
        hup_ignored=hangup_ignored(),
    )
    # Nested blocks, not contextlib.ExitStack (contextlib: ~4 ms of a start).
    caller = None if outlive_caller else open_caller()
    try:
        with forwarded_signals(wake_on_child=True, roles=roles) as inbox:
            stdout = sys.stderr.fileno() if json_on_stdout else None
            with Job(
                spec,
                stdout=stdout,
                dedicated_supervisor=True,
                wake_fd=inbox.fileno,
                _forks_nothing_else=True,
            ) as job:
                progress = None if verbose else progress_line(quiet)
                try:
                    lines = _StepLines(job.id, job.pid)
                    gc_back_on()
                    outcome = supervise(
                        job,
                        inbox=inbox,
                        timeout=spec.timeout,
                        leftovers=spec.leftovers,
                        caller=caller,
                        on_progress=progress
                        if progress is not None or (quiet and not verbose)
                        else lines,
                        on_forward=lines.forwarded if verbose else None,
                    )
                finally:
                    if progress is not None:
                        progress.clear()
                if outcome.error is not None:
                    raise outcome.error
    finally:
        if caller is not None:
            caller.close()
    return outcome


class _StepLines:
    """Piped stderr (a CI log) or --verbose: one line the moment each step of a
    termination starts, as ``timeout -v`` says when it signals, not only the
    report after the grace; with --verbose, one per signal passed on."""

    def __init__(self, job_id: str, leader: int) -> None:
        self.job_id = job_id
        self.leader = leader
        self.step = 0

    def forwarded(self, sig: int, delivered: bool) -> None:
        from tether.supervise import signal_label

        text = (
            f"passed {signal_label(sig)} on to the command (pid {self.leader})"
            if delivered
            else f"{signal_label(sig)} not passed on: the command has exited"
        )
        try:
            sys.stderr.write(f"tether: job {self.job_id}: {text}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def __call__(self, progress: Progress) -> None:
        if progress.step == self.step:
            return
        self.step = progress.step
        try:
            sys.stderr.write(
                f"tether: terminating job {self.job_id}: step {progress.step}/{progress.steps}, "
                f"{progress.signal} sent to {progress.signalled} member(s)\n"
            )
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
