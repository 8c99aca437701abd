"""The ``tether`` command: the group, its lazy command table, and ``main``.

One module per command (``run``, ``kill``, ``ps``, ``reap``, ``cancel``,
``config``, ``completion``, ``schema``, ``prune`` with ``epilog``), imported only when
that command runs (or ``--help`` lists them), so ``tether run`` does not pay
for the others at start-up. What they share (exit statuses, errors, ``--json``
output, the policy options and the flags-over-config merge) is in
:mod:`tether.cli._common`.

Exit status of ``tether run`` follows coreutils ``timeout``: 124 timed out,
125 tether itself failed (bad input, or members survived the policy), 126 the
command is not executable, 127 not found, 128+N the leader was killed by
signal N, else the leader's own status. The other commands: 0 done, 1 not all
done (members survived...), 2 bad input. Each command's ``--help`` ends with
its EXIT STATUS block (the man pages read it).

An unexpected exception (a bug, or an environment that breaks an assumption)
is one line, ``tether: internal error: TYPE: MESSAGE``, never a traceback,
and exits with a status the command already documents (:func:`_internal_status`):
``run`` 125 (tether failed); ``kill``, ``ps``, ``reap``, ``prune`` and
``cancel`` 1 (not all done: the work may be unfinished); ``config``,
``schema`` and ``completion`` 2; ``epilog`` 0 (2 with ``--strict``), since a
failing epilog drains a Slurm node and nothing was shown to survive. An
interrupt (SIGINT) before a command took over its signals exits 130 (the
epilog 0). ``TETHER_TRACEBACK=1`` adds the traceback, for bug reports.

On a terminal, ``ps`` draws a coloured tree, ``run`` and ``kill`` show a
progress line on stderr and the report as a table (:mod:`tether.display`);
piped, the output is the plain, stable columns.
"""

from __future__ import annotations

import gc
import os
import sys

# Neither typing nor contextlib nor collections at import: `tether --version`
# answers with what the interpreter has loaded already (mypy treats any name
# TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

    import click

    #: The ``tether`` click group, built on first use (:func:`__getattr__`).
    cli: click.Group

#: Every command, imported only when invoked (or listed by --help):
#: name -> "module:attribute" of a click command.
COMMANDS: dict[str, str] = {
    "cancel": "tether.cli.cancel:cancel_command",
    "completion": "tether.cli.completion:completion_command",
    "config": "tether.cli.config:config_command",
    "epilog": "tether.cli.prune:epilog_command",
    "kill": "tether.cli.kill:kill",
    "prune": "tether.cli.prune:prune_command",
    "ps": "tether.cli.ps:ps",
    "reap": "tether.cli.reap:reap",
    "run": "tether.cli.run:run",
    "schema": "tether.cli.schema:schema_command",
}


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


def __getattr__(name: str) -> object:
    # PEP 562: click (~20 ms of imports) is loaded only when a command needs
    # the group; `tether --version` answers without it.
    if name == "cli":
        return _group()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_GROUP: list[click.Group] = []


def _group() -> click.Group:
    if not _GROUP:
        _GROUP.append(_make_group())
    return _GROUP[0]


def _make_group() -> click.Group:
    import click

    from tether import logs
    from tether.errors import UsageError

    class _LazyGroup(click.Group):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted([*super().list_commands(ctx), *COMMANDS])

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            target = COMMANDS.get(cmd_name)
            if target is None:
                return super().get_command(ctx, cmd_name)
            import importlib

            module_name, _, attribute = target.partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            assert isinstance(command, click.Command)
            return command

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

    return cli


def _command_index(args: Sequence[str]) -> int | None:
    """Where the command's name is in ``args``, past the group's options
    (``--log-level debug run``)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _GROUP_VALUE_OPTIONS:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return i
    return None


def _command_name(args: Sequence[str]) -> str | None:
    """The command ``args`` run, past the group's options."""
    i = _command_index(args)
    return None if i is None else args[i]


def _legacy_spellings(args: list[str]) -> list[str]:
    """``args`` with deprecated option spellings rewritten (and warned about)."""
    from tether.cli._common import LEGACY_JSON_FILE, legacy_json_args

    i = _command_index(args)
    if i is None or args[i] not in LEGACY_JSON_FILE or not any("--json" in a for a in args):
        return args
    import click

    cli = _group()
    command = cli.get_command(click.Context(cli), args[i])
    assert command is not None
    return [*args[: i + 1], *legacy_json_args(command, args[i + 1 :])]


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: one-line errors and documented exit codes, never a traceback."""
    # No cyclic collection while a command starts: the ~25 a `tether run`
    # made (~7 ms, most of it traversing what imports create) found next to
    # nothing, as imported modules live as long as the process. A command
    # that then runs for long (a supervision) turns it back on (gc_back_on).
    gc.disable()
    try:
        if argv is not None:
            _main(list(argv))
        try:
            _main(sys.argv[1:])
        except SystemExit as done:
            _exit_now(done)
    finally:
        # Reached when this process goes on: a program that called main()
        # and catches its SystemExit (the usual exit is os._exit).
        gc.enable()


def _main(args: list[str]) -> NoReturn:
    if args == ["--version"]:
        _print_version()
    _escape_what_stdout_cannot_encode()
    try:
        _run_cli(args)
    finally:
        # A log target that failed (no syslog socket) is said once, not per record.
        from tether import logs

        problem = logs.failure()
        if problem is not None:
            import contextlib

            from tether.cli._common import echo_err

            with contextlib.suppress(Exception):
                echo_err(f"tether: logging failed: {problem}")


def _escape_what_stdout_cannot_encode() -> None:
    """A command line or a process name is anyone's bytes: where stdout's
    encoding cannot show them (PYTHONIOENCODING=ascii, a C locale), they are
    written backslash-escaped rather than failing the command (stderr does so
    already by default)."""
    stream = sys.stdout
    if stream is None or getattr(stream, "errors", None) != "strict":
        return
    # Not a TextIOWrapper (an embedding program's own stream): left as it is.
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def _exit_now(done: SystemExit) -> NoReturn:
    """Exit with ``done``'s status without the interpreter's finalisation
    (~10 ms of tearing down modules a process about to exit need not tear
    down): what finalisation does that anyone can see is done first — atexit
    handlers (logging's flush among them), then stdio flushed. Not when
    other threads run (finalisation waits for them), when the status is not a
    plain number, or when stdout cannot be flushed: then the interpreter's
    own exit says so (status 120)."""
    code = 0 if done.code is None else done.code
    threading = sys.modules.get("threading")
    if not isinstance(code, int) or not 0 <= code <= 255:
        raise done
    if threading is not None and threading.active_count() > 1:
        raise done
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except Exception:
            raise done from None
    os._exit(code)


def _print_version() -> NoReturn:
    """``tether --version`` without click or importlib.metadata (what click's
    version_option prints; tests pin tether.__version__ to the metadata)."""
    from tether import __version__

    try:
        sys.stdout.write(f"tether {__version__}\n")
        sys.stdout.flush()
    except OSError as err:
        sys.stderr.write(f"tether: {err.strerror or err}\n")
        sys.exit(2)
    sys.exit(0)


def _no_such_option(err: click.NoSuchOption, is_run: bool) -> str:
    """click's message, but "did you mean" only for a near miss (a typo):
    click offers any option that shares a few letters (--uid: --quiet)."""
    import difflib

    close = [
        p for p in err.possibilities or ()
        if difflib.SequenceMatcher(None, err.option_name, p).ratio() > 0.8
    ]  # fmt: skip
    message = f"no such option: {err.option_name}"
    if close:
        return f"{message} (did you mean {' or '.join(sorted(close))}?)"
    if is_run:
        return f"{message} (the command's own options go after --: tether run [OPTIONS] -- CMD...)"
    return f"{message} (see --help)"


def _fast_path(args: list[str]) -> bool:
    """``tether run``, ``ps`` and ``prune`` without click, when the command's
    ``parse_fast`` understands all of ``args`` (and no shell completion is
    asked for, which click answers); False: the click command is to run
    them. Not when click is loaded already (a program that embeds tether's
    CLI, a test that patches click): there is nothing to save, and click's
    is the reference."""
    if os.environ.get("_TETHER_COMPLETE") or "click" in sys.modules:
        return False
    if args[:1] == ["run"]:
        from tether.cli.run import parse_fast, run_fast

        params = parse_fast(args[1:])
        if params is None:
            return False
        run_fast(params)
        return True
    if args[:1] == ["ps"]:
        from tether.cli import ps
        from tether.cli._common import as_click_would

        parsed = ps.parse_fast(args[1:])
        if parsed is None:
            return False
        as_click_would(lambda: ps.show(*parsed))
        return True
    if args[:1] == ["prune"]:
        from tether.cli import prune
        from tether.cli._common import as_click_would

        params = prune.parse_fast(args[1:])
        if params is None:
            return False
        as_click_would(lambda: prune.prune(**params))
        return True
    return False


def _run_cli(args: list[str]) -> NoReturn:
    from tether.cli._common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

    command = _command_name(args)
    is_run = command == "run"
    bad_input = EXIT_FAILED if is_run else EXIT_BAD_INPUT
    note = ""
    if command == "epilog":
        # A failing epilog drains a Slurm node: bad arguments exit 0 (2 with
        # --strict), as the epilog's own bad input does.
        bad_input = _internal_status(command, args)
        note = " (nothing was killed)"
    try:
        if not _fast_path(args):
            cli = _group()
            args = _legacy_spellings(args)
            cli.main(args, prog_name="tether", standalone_mode=False)
    except KeyboardInterrupt:
        # SIGINT before a command took over its signals (click turns it into
        # Abort; tether run forwards it once supervising): nothing of ours runs.
        _say("tether: interrupted")
        sys.exit(EXIT_OK if command == "epilog" else EXIT_INTERRUPTED)
    except Exception as err:
        sys.exit(_failed(err, command, args, bad_input, note))
    import contextlib

    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(0)


def _failed(err: Exception, command: str | None, args: list[str], bad_input: int, note: str) -> int:
    """Say ``err`` on one line; the status to exit with."""
    from tether.cli._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CliError, echo_err
    from tether.errors import TetherError, UsageError

    is_run = command == "run"
    # Only the click path raises click's exceptions: click is loaded then.
    click = sys.modules.get("click")
    if click is not None:
        if isinstance(err, click.NoSuchOption):
            echo_err(f"tether: {_no_such_option(err, is_run)}{note}")
            return bad_input
        if isinstance(err, click.UsageError):
            echo_err(f"tether: {err.format_message()}{note}")
            return bad_input
        if isinstance(err, click.exceptions.Abort):
            _say("tether: interrupted")
            return EXIT_OK if command == "epilog" else EXIT_INTERRUPTED
        if isinstance(err, click.exceptions.Exit):
            code: int = err.exit_code
            return code
    if isinstance(err, CliError):
        echo_err(f"tether: {err}")
        return err.code
    if isinstance(err, TetherError):
        code = err.exit_code if is_run else bad_input
        if isinstance(err, UsageError) and is_run:
            code = EXIT_FAILED
        echo_err(f"tether: {err}")
        return code
    if isinstance(err, OSError):
        from tether._platform.linux.procfs import OUT_OF_DESCRIPTORS

        if err.errno in OUT_OF_DESCRIPTORS:
            # Out of descriptors mid-work, not bad input: what was asked may
            # be half done (the command's "not all done" status).
            echo_err(
                f"tether: {err.strerror} (out of file descriptors: raise the limit, "
                "ulimit -n, and run it again)"
            )
            return _internal_status(command, args)
        echo_err(f"tether: {err.strerror or err}")
        return bad_input
    # Never a traceback: one line, a documented status.
    _internal_error(err)
    return _internal_status(command, args)


#: Commands whose EXIT STATUS has 1 "not all done": an internal error may have
#: left their work unfinished, so they never claim 0 or "bad input" for it.
_UNFINISHED_IS_1 = frozenset({"kill", "ps", "reap", "prune", "cancel"})


def _internal_status(command: str | None, args: Sequence[str]) -> int:
    """The documented status an unexpected error exits with, per command."""
    from tether.cli._common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK

    if command == "epilog":
        # Nothing was shown to survive: never drain the node for our bug.
        return EXIT_BAD_INPUT if "--strict" in args else EXIT_OK
    if command == "run":
        return EXIT_FAILED
    if command in _UNFINISHED_IS_1:
        return EXIT_INCOMPLETE
    return EXIT_BAD_INPUT


def _internal_error(err: BaseException) -> None:
    """``tether: internal error: TYPE: MESSAGE`` on one line (escaped, bounded)."""
    try:
        from tether.sanitize import visible

        text = visible(f"{type(err).__name__}: {err}"[:2000])
    except Exception:  # the sanitiser itself is what broke
        text = type(err).__name__
    if os.environ.get("TETHER_TRACEBACK") == "1":
        import contextlib
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exception(err, file=sys.stderr)
    _say(f"tether: internal error: {text} (a bug in tether; please report it)")


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:  # stderr is gone: nowhere left to say it
        pass
