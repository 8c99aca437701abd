"""The ``tether`` command: run, kill, ps.

Exit status of ``tether run`` follows coreutils ``timeout``: 124 timed out,
125 tether itself failed (bad input, or members survived the policy), 126 the
command is not executable, 127 not found, 128+N the leader was killed by
signal N, else the leader's own status. ``tether kill``: 0 the tree is gone,
1 members survived, 2 bad input. ``tether ps``: 0, or 2 on bad input. Each
command's ``--help`` ends with its EXIT STATUS block (the man pages read it).

On a terminal, ``ps`` draws a coloured tree, ``run`` and ``kill`` show a
progress line on stderr and the report as a table (:mod:`tether.terminal`);
piped, the output is the plain, stable columns.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from tether import logs
from tether.errors import TetherError, UsageError
from tether.policy import Policy, parse_duration, parse_signal
from tether.remote.options import wants_remote, with_remote_options

if TYPE_CHECKING:
    from typing import TextIO

    from tether.config import EffectiveConfig
    from tether.process import ProcessHandle
    from tether.terminal import ProgressLine

EXIT_TIMEOUT = 124
EXIT_FAILED = 125
EXIT_BAD_INPUT = 2  # kill / ps
EXIT_SURVIVORS = 1  # kill

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int) -> NoReturn:
    raise CliError(message, code)


def _configured(
    policy_text: str | None,
    sig: str | None,
    kill_after: str | None,
    leader_signal: str | None,
    tree_delay: str | None,
    kill_script: str | None,
    kill_script_mode: str | None,
    **run_flags: object,
) -> EffectiveConfig:
    """The configuration files (tether.toml) with the command-line flags on top."""
    from tether.config import load_config

    if policy_text is not None and (sig is not None or kill_after is not None):
        raise UsageError("give either --policy or -s/-k, not both")
    if kill_script is not None and not kill_script.strip():
        raise UsageError("empty --kill-script")
    config = load_config()
    if sig is not None or kill_after is not None:
        # As coreutils timeout: -s SIG -k DURATION is the whole policy SIG,DURATION,KILL.
        timeout_policy = Policy.from_timeout_flags(
            parse_signal(sig) if sig is not None else None,
            parse_duration(kill_after) if kill_after is not None else None,
        )
        config = config.with_override("termination.policy", str(timeout_policy), "-s/-k")
    flags: tuple[tuple[str, str | None, str], ...] = (
        ("termination.policy", policy_text, "--policy"),
        ("termination.leader_signal", leader_signal, "--leader-signal"),
        ("termination.tree_delay", tree_delay, "--tree-delay"),
        ("termination.kill_script", kill_script, "--kill-script"),
        ("termination.kill_script_mode", kill_script_mode, "--kill-script-mode"),
    )
    for key, value, flag in flags:
        config = config.with_override(key, value, flag)
    for name, given in run_flags.items():
        config = config.with_override(f"run.{name}", given)
    return config


def write_json(target: str | None, text: str) -> None:
    """The ``--json FILE`` option: write ``text`` to FILE, or stdout for ``-``."""
    if target is None:
        return
    text += "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        fail(f"cannot write {target}: {err.strerror}", EXIT_FAILED)


#: Commands that live in their own modules, imported only when invoked (or
#: listed by --help), so `tether run` does not pay for them at start-up.
#: name -> "module:attribute" of a click command.
LAZY_COMMANDS: dict[str, str] = {
    "cancel": "tether.remote.cli:cancel_command",
    "completion": "tether.cli_completion:completion_command",
    "reap": "tether.cli_journal:reap",
    "config": "tether.cli_config:config_command",
    "prune": "tether.cli_prune:prune_command",
    "epilog": "tether.cli_prune:epilog_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        import importlib

        module_name, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


_GROUP_EPILOG = """\
Logging: by default nothing is logged beyond each command's own messages.
With any --log-* option (or TETHER_LOG_LEVEL, TETHER_LOG_FORMAT,
TETHER_LOG_TARGET; the options win) tether logs its events: job started
(trackers used and not), each step (signal, members), each member signalled
(debug), survivors, the leader's exit. json: one object a line with ts,
level, logger, msg and the event's fields (job_id, pid, signal...). auto:
journald when systemd connected stderr to the journal (JOURNAL_STREAM), else
stderr. syslog: /dev/log; journald: /run/systemd/journal/socket.

Output: on a terminal, ps draws a tree in colour, run and kill show progress
on stderr and the report as a table; NO_COLOR (non-empty) or TERM=dumb turns
colour off. Piped, the output is the plain columns scripts parse.

\b
EXIT STATUS (of tether itself; each command's --help lists its own):
  0  --help or --version was printed
  2  unknown command, or a bad option before it (e.g. --log-level loud,
     or a bad TETHER_LOG_* value); 125 instead when the command is run,
     whose own failures are 125 (tether epilog only warns about a bad
     TETHER_LOG_* value: a failing epilog drains a Slurm node)
"""

#: Options of the group (before the command) that take a value: main() skips
#: them to tell which command runs.
_GROUP_VALUE_OPTIONS = ("--log-level", "--log-format", "--log-target")


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=_GROUP_EPILOG,
)
@click.version_option(package_name="tether", message="tether %(version)s")
@click.option(
    "--log-level",
    type=click.Choice(list(logs.LEVELS), case_sensitive=False),
    help="Log events at this level and above (default warning; env TETHER_LOG_LEVEL).",
)
@click.option(
    "--log-format",
    type=click.Choice(list(logs.FORMATS), case_sensitive=False),
    help="text, or json (one object a line; env TETHER_LOG_FORMAT). Default text.",
)
@click.option(
    "--log-target",
    type=click.Choice(list(logs.TARGETS), case_sensitive=False),
    help="Where logs go (default auto: journald under systemd, else stderr; "
    "env TETHER_LOG_TARGET).",
)
@click.pass_context
def cli(
    ctx: click.Context, log_level: str | None, log_format: str | None, log_target: str | None
) -> None:
    """Run jobs so that nothing they start can outlive them."""
    try:
        settings = logs.resolve(log_level, log_format, log_target, os.environ)
    except UsageError as err:
        # Only a variable can be bad here (click checked the options). A
        # failing epilog drains a Slurm node: it warns and logs nothing.
        if ctx.invoked_subcommand != "epilog":
            raise
        click.echo(f"tether: {err}; logging nothing", err=True)
        return
    logs.configure(settings, os.environ)


_policy_options: list[Callable[[Any], Any]] = [
    click.option("--policy", "policy_text", metavar="SEQ",
                 help="Termination policy, e.g. TERM,10s,KILL or INT,2s,TERM,10s,KILL."),
    click.option("-s", "--signal", "sig", metavar="SIG",
                 help="First signal (as timeout -s); the policy is SIG,DURATION,KILL."),
    click.option("-k", "--kill-after", metavar="DURATION",
                 help="Grace after the first signal before KILL (as timeout -k). Default 10s."),
    click.option("--leader-signal", metavar="SIG",
                 help="Signal for the job's leader in the first step, if unlike the tree's."),
    click.option("--tree-delay", metavar="DURATION",
                 help="Wait this long after signalling the leader before the rest of the tree."),
    click.option("--kill-script", metavar="CMD",
                 help="Command run with TETHER_JOB_ID, TETHER_LEADER_PID and TETHER_MEMBER_PIDS "
                      "before the signals."),
    click.option("--kill-script-mode", type=click.Choice(["precede", "replace"]),
                 help="Run the kill script before the signals, or instead of them "
                      "(default: precede)."),
    click.option("--json", "json_file", metavar="FILE",
                 help="Write the termination report as JSON to FILE ('-' for stdout)."),
]  # fmt: skip


def _with_policy_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_policy_options):
        f = option(f)
    return f


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


@cli.command(
    context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False},
    epilog=_RUN_EPILOG,
)
@_with_policy_options
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

    config = _configured(
        policy_text, sig, kill_after, leader_signal, tree_delay, kill_script, kill_script_mode,
        timeout=timeout_text, trackers=trackers, wait_leftovers=wait_leftovers or None,
    )  # fmt: skip
    policy = config.policy_for_run()
    timeout = config["run.timeout"]
    trackers = config["run.trackers"]
    wait_leftovers = config["run.wait_leftovers"]
    if wants_remote(remote):
        from tether.remote.cli import run_remote

        run_remote(
            command,
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

    caller = None if outlive_caller else _open_caller()
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

        progress = _progress_line(quiet)
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
        from tether.terminal import render_report

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


def _open_caller() -> ProcessHandle | None:
    """A verified handle on the process that started tether, to notice its exit.

    Not PR_SET_PDEATHSIG: that fires when the *thread* that forked us exits,
    and a threaded caller (a CI agent) may fork from a short-lived thread.
    """
    from tether.process import ProcessHandle

    ppid = os.getppid()
    if ppid <= 1:
        return None  # started by init (or as init): no caller to outlive
    handle = ProcessHandle.open(ppid)
    if handle is None or os.getppid() != ppid:
        # The parent exited between the two looks: we were already orphaned.
        if handle is not None:
            handle.close()
        raise UsageError(f"the caller (pid {ppid}) exited before the job started")
    return handle


def _now() -> float:
    import time

    return time.monotonic()


def _progress_line(quiet: bool) -> ProgressLine | None:
    """A progress line for a termination, on stderr if it is a terminal (never piped)."""
    if quiet or not _isatty(sys.stderr):
        return None
    from tether.terminal import ProgressLine

    return ProgressLine(sys.stderr)


def _isatty(stream: TextIO) -> bool:
    # Not tether.terminal's: piped runs (CI, cron) need not import it at all.
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


_KILL_EPILOG = """\
\b
EXIT STATUS:
  0  the tree is gone
  1  members survived the policy
  2  bad input: unknown signal, bad duration, pid 1 or below, tether
     itself or an ancestor, no such process
"""


@cli.command(epilog=_KILL_EPILOG)
@_with_policy_options
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
    policy_text: str | None,
    sig: str | None,
    kill_after: str | None,
    leader_signal: str | None,
    tree_delay: str | None,
    kill_script: str | None,
    kill_script_mode: str | None,
    json_file: str | None,
    quiet: bool,
) -> None:
    """Terminate the tree rooted at PID, a process tether did not start, or
    with --gid every process tagged with that supplementary group.

    Best effort: the report says which trackers could apply.
    """
    if (pid is None) == (gid is None):
        raise UsageError("give either a PID or --gid GID")
    policy = _configured(
        policy_text, sig, kill_after, leader_signal, tree_delay, kill_script, kill_script_mode
    ).policy_for_run()
    if gid is not None:
        from tether.prune.groups import kill_gid

        report = kill_gid(gid, policy=policy)
    else:
        from tether.job import kill_tree

        assert pid is not None
        target = _parse_pid(pid)
        progress = _progress_line(quiet)
        try:
            report = kill_tree(target, policy=policy, on_progress=progress)
        finally:
            if progress is not None:
                progress.clear()
    write_json(json_file, report.to_json())
    if not quiet and json_file != "-":
        from tether.terminal import render_report

        click.echo(render_report(report, sys.stdout))
    sys.exit(0 if report.complete else EXIT_SURVIVORS)


def _parse_pid(text: str) -> int:
    try:
        pid = int(text, 10)
    except ValueError:
        raise UsageError(f"not a pid: {text!r}") from None
    return pid


_PS_EPILOG = """\
On a terminal the tree is drawn with connectors, each member's state and the
trackers that found it in colour (unless NO_COLOR or TERM=dumb); piped, the
columns are plain and stable.

\b
EXIT STATUS:
  0  listed
  1  (without PID) a journal record was unusable (reported and skipped)
  2  bad input: not a pid, pid 1 or below, tether itself or an ancestor,
     no such process; or an unusable journal directory
"""


@cli.command(epilog=_PS_EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a tree.")
@click.argument("pid", type=str, required=False)
def ps(pid: str | None, as_json: bool) -> None:
    """Show the tree rooted at PID and how each member was found.

    Without PID, list the jobs in the journal of live jobs and whether their
    supervisor (and its watchdog) is still alive.
    """
    if pid is None:
        from tether.cli_journal import list_jobs

        sys.exit(list_jobs(as_json))
    from tether.job import tree_membership
    from tether.process import read_process

    membership, root = tree_membership(_parse_pid(pid))
    try:
        members = [m for m in membership.scan() if m.alive]
        rows = []
        for m in members:
            info = read_process(m.pid)
            if info is None or info.starttime != m.starttime:
                continue
            rows.append((m, info))
    finally:
        membership.close()
    if as_json:
        out = {
            "schema": 1,
            "root": root.pid,
            "members": [
                {
                    "pid": m.pid,
                    "ppid": info.ppid,
                    "pgid": info.pgid,
                    "sid": info.sid,
                    "state": info.state,
                    "start_time": m.start_time,
                    "found_by": sorted(m.found_by),
                    "cmdline": m.cmdline,
                }
                for m, info in rows
            ],
            "trackers": [{"name": t.name, "used": t.used, "reason": t.reason}
                         for t in membership.trackers],
        }  # fmt: skip
        click.echo(json.dumps(out, indent=2))
        return
    tree = [(m.pid, info.ppid, info.state, sorted(m.found_by), m.cmdline) for m, info in rows]
    if _isatty(sys.stdout):
        _draw_tree(tree, [str(t) for t in membership.trackers if t.used],
                   [str(t) for t in membership.trackers if not t.used])  # fmt: skip
        return
    _print_tree(root.pid, tree)
    for t in membership.trackers:
        click.echo(f"# {t}")


def _draw_tree(
    rows: Sequence[tuple[int, int, str, list[str], str]], used: list[str], unused: list[str]
) -> None:
    from tether.terminal import DIM, Paint, colour_wanted, tree_lines, width_of

    paint = Paint(colour_wanted(sys.stdout))
    for line in tree_lines(rows, paint, sys.stdout, width_of(sys.stdout)):
        click.echo(line)
    for t in used:
        click.echo(f"# {t}")
    for t in unused:
        click.echo(paint(f"# {t}", DIM))


def _print_tree(root: int, rows: Sequence[tuple[int, int, str, list[str], str]]) -> None:
    from tether.report import oneline

    by_pid = {r[0]: r for r in rows}
    kids: dict[int, list[int]] = {}
    for pid, ppid, *_ in rows:
        kids.setdefault(ppid if ppid in by_pid else -1, []).append(pid)
    click.echo(f"{'PID':>7} {'PPID':>7} S  {'FOUND BY':<22} COMMAND")

    def show(pid: int, depth: int) -> None:
        _, ppid, state, found, cmd = by_pid[pid]
        click.echo(
            f"{pid:>7} {ppid:>7} {state}  {','.join(found):<22} {'  ' * depth}{oneline(cmd, 100)}"
        )
        for child in sorted(kids.get(pid, [])):
            show(child, depth + 1)

    for top in sorted(kids.get(-1, [])):
        show(top, 0)


def _command_name(args: Sequence[str]) -> str | None:
    """The command ``args`` run, past the group's options (``--log-level debug run``)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _GROUP_VALUE_OPTIONS:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: one-line errors and documented exit codes, never a traceback."""
    try:
        _run_cli(list(sys.argv[1:] if argv is None else argv))
    finally:
        # A log target that failed (no syslog socket) is said once, not per record.
        problem = logs.failure()
        if problem is not None:
            with contextlib.suppress(Exception):
                click.echo(f"tether: logging failed: {problem}", err=True)


def _run_cli(args: list[str]) -> NoReturn:
    is_run = _command_name(args) == "run"
    bad_input = EXIT_FAILED if is_run else EXIT_BAD_INPUT
    try:
        cli.main(args, prog_name="tether", standalone_mode=False)
    except click.UsageError as err:
        click.echo(f"tether: {err.format_message()}", err=True)
        sys.exit(bad_input)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except CliError as err:
        click.echo(f"tether: {err}", err=True)
        sys.exit(err.code)
    except TetherError as err:
        code = err.exit_code if is_run else EXIT_BAD_INPUT
        if isinstance(err, UsageError) and is_run:
            code = EXIT_FAILED
        click.echo(f"tether: {err}", err=True)
        sys.exit(code)
    except OSError as err:
        click.echo(f"tether: {err.strerror or err}", err=True)
        sys.exit(EXIT_FAILED if is_run else EXIT_BAD_INPUT)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(0)


if __name__ == "__main__":
    # Under `python -m tether.cli` this module is __main__; lazy command
    # modules import tether.cli again, and their CliError must be the one
    # main() catches, so run main from the imported module.
    from tether.cli import main as _main

    _main()
