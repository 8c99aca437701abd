"""What every command shares: exit statuses, errors, JSON output, terminal
checks, and the flags-over-config merge with the policy options.

Kept import-light: ``tether run`` imports this module on every start, and
click only when a command is built with it (the fast path of ``tether run``
never is).
"""

from __future__ import annotations

import os
import sys

from tether.errors import UsageError

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, NoReturn, TextIO

    import click

    from tether.config import EffectiveConfig
    from tether.display import ProgressLine
    from tether.policy import Policy

# -- exit statuses -----------------------------------------------------------------
# Each command's --help ends with the EXIT STATUS block it documents (the man
# pages read it); these are the numbers, once.

#: Done (kill: the tree is gone; reap/prune/epilog: nothing left behind).
EXIT_OK = 0
#: Not all done: members survived the policy, a stray could not be killed, or
#: a journal record was unusable (kill, ps, reap, prune, epilog, cancel).
EXIT_INCOMPLETE = 1
#: Bad input: bad option or value, no such process, bad configuration (every
#: command but run, which says EXIT_FAILED, as coreutils timeout does).
EXIT_BAD_INPUT = 2
#: tether run: --timeout expired and the tree was terminated.
EXIT_TIMEOUT = 124
#: tether run: tether itself failed (bad input, or members survived the policy).
#: 126 and 127 (command not executable, not found) come with the error
#: (:attr:`tether.errors.TetherError.exit_code`), 128+N from the leader's signal.
EXIT_FAILED = 125
#: Interrupted before a command started (click's Abort: Ctrl-C at a prompt).
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A command's failure: ``tether: MESSAGE`` on stderr, then exit ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int) -> NoReturn:
    raise CliError(message, code)


def built_on_first_use(
    module: str, namespace: dict[str, Any], makers: Mapping[str, Callable[[], Any]], name: str
) -> Any:
    """A module's PEP 562 ``__getattr__`` for its click commands: built (click
    imported) when the click path first asks for ``name``, then kept in the
    module's namespace, so the fast paths never build them."""
    make = makers.get(name)
    if make is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    namespace[name] = made = make()
    return made


def echo_err(message: str) -> None:
    """``click.echo(message, err=True)`` without importing click: a line on
    stderr, ANSI styles removed unless stderr is a terminal, flushed."""
    if _write_line(sys.stderr, message):
        sys.stderr.flush()


def echo_out(message: str) -> None:
    """``click.echo(message)`` without importing click: a line on stdout,
    ANSI styles removed unless stdout is a terminal. Not flushed per line
    (a 1000-row tree would be 1000 writes): the entry point flushes at exit."""
    _write_line(sys.stdout, message)


def _write_line(stream: TextIO | None, message: str) -> bool:
    """False when there is no stream (a daemon's closed stdio): click's echo says nothing."""
    if stream is None:
        return False
    if not isatty(stream):
        message = _strip_ansi(message)
    stream.write(message + "\n")
    return True


def _strip_ansi(text: str) -> str:
    if "\033" not in text:
        return text
    import re

    # click's own pattern (click._compat._ansi_re): piped output is the same.
    return re.sub(r"\033\[[0-?]*[ -/]*[@-~]", "", text)


def as_click_would(body: Callable[[], object]) -> None:
    """Run a command's body without click (a fast path), as the group and
    click's main would: logging configured first; an interrupt becomes
    KeyboardInterrupt after a newline ("tether: interrupted"), and a closed
    stdout exits 1 with nothing more said there."""
    from tether import logs

    logs.configure(logs.resolve(None, None, None, os.environ), os.environ)
    try:
        body()
    except (EOFError, KeyboardInterrupt):
        echo_err("")
        raise KeyboardInterrupt from None
    except OSError as err:
        import errno

        if err.errno != errno.EPIPE:
            raise
        from click.utils import _PacifyFlushWrapper

        sys.stdout = _PacifyFlushWrapper(sys.stdout)
        sys.stderr = _PacifyFlushWrapper(sys.stderr)
        sys.exit(1)


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


# -- terminals ---------------------------------------------------------------------


def isatty(stream: TextIO) -> bool:
    # Not tether.display's: piped runs (CI, cron) need not import it at all.
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


def progress_line(quiet: bool) -> ProgressLine | None:
    """A progress line for a termination, on stderr if it is a terminal (never piped)."""
    if quiet or not isatty(sys.stderr):
        return None
    from tether.display import ProgressLine

    return ProgressLine(sys.stderr)


def parse_pid(text: str) -> int:
    try:
        pid = int(text, 10)
    except ValueError:
        raise UsageError(f"not a pid: {text!r}") from None
    return pid


# -- flags over configuration ------------------------------------------------------


def termination_policy(config: EffectiveConfig) -> Policy:
    """The policy ``run`` and ``kill`` apply; odd orders are said on stderr
    (allowed, never silently: KILL before TERM, or no KILL at the end)."""
    policy = config.policy_for_run()
    for warning in policy.warnings:
        echo_err(f"tether: warning: {warning}")
    return policy


def configured(flags: Mapping[str, object], *, config_file: str | None = None) -> EffectiveConfig:
    """The configuration files (tether.toml) with a command's flags on top.

    Every command that reads the configuration comes through here, and so
    through the one merge, :meth:`tether.config.EffectiveConfig.with_flags`.

    Args:
        flags: setting key -> flag value (None: not given), as ``with_flags`` takes them.
        config_file: a file to read instead of ``TETHER_CONFIG`` (prune's ``--config``).
    """
    import os

    from tether.config import CONFIG_ENV_VAR, load_config

    env: Mapping[str, str] = os.environ
    if config_file is not None:
        if not os.path.exists(config_file):
            raise UsageError(f"--config: {config_file}: no such file")
        env = {**os.environ, CONFIG_ENV_VAR: config_file}
    return load_config(env).with_flags(flags)


def _policy_options() -> list[Callable[[Any], Any]]:
    import click

    return [
        click.option("--policy", "policy_text", metavar="SEQ",
                     help="Termination policy, e.g. TERM,10s,KILL or INT,2s,TERM,10s,KILL."),
        click.option("-s", "--signal", "sig", metavar="SIG",
                     help="First signal (as timeout -s); the policy is SIG,DURATION,KILL."),
        click.option("-k", "--kill-after", metavar="DURATION",
                     help="Grace after the first signal before KILL (as timeout -k). Default 10s."),
        click.option("--leader-signal", metavar="SIG",
                     help="Signal for the job's leader in the first step, if unlike the tree's."),
        click.option("--tree-delay", metavar="DURATION",
                     help="Wait this long after signalling the leader before the rest of the "
                          "tree."),
        click.option("--kill-script", metavar="CMD",
                     help="Command run with TETHER_JOB_ID, TETHER_LEADER_PID and "
                          "TETHER_MEMBER_PIDS before the signals."),
        click.option("--kill-script-mode", type=click.Choice(["precede", "replace"]),
                     help="Run the kill script before the signals, or instead of them "
                          "(default: precede)."),
    ]  # fmt: skip


def json_options(what: str) -> list[Callable[[Any], Any]]:
    """``--json`` (the document on stdout) and ``--json-file PATH``: one
    convention for every command. The command receives ``json_file``: None,
    ``-`` for stdout, or the path."""
    import click

    return [
        click.option("--json", "json_stdout", is_flag=True,
                     help=f"Print {what} as JSON on stdout (and nothing else there)."),
        click.option("--json-file", "json_file", metavar="PATH",
                     help=f"Write {what} as JSON to PATH."),
    ]  # fmt: skip


def json_target(json_stdout: bool, json_file: str | None) -> str | None:
    """The ``json_file`` of :func:`json_options`' two options."""
    if json_stdout and json_file is not None:
        raise UsageError("give either --json or --json-file PATH, not both")
    return "-" if json_stdout else json_file


#: Commands whose ``--json`` once took a FILE (before 0.2), and the old
#: spelling the argv rewrite below still accepts, with a warning, for one release.
LEGACY_JSON_FILE = frozenset({"run", "kill", "cancel"})


def legacy_json_args(command: click.Command, args: list[str]) -> list[str]:
    """``--json FILE`` (deprecated) as ``--json-file FILE``, ``--json -`` as ``--json``.

    Only among ``command``'s own options (``args`` follow the command name),
    never in the job's argv, and only where FILE cannot be meant otherwise:
    ``-``, a name ending in ``.json``, or ``--json=FILE``. ``tether kill
    --json 4242`` is the flag and a pid.
    """
    import click

    takes_value = {
        name
        for p in command.params
        if isinstance(p, click.Option) and not p.is_flag and not p.count
        for name in p.opts
    }
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--", "-") or not arg.startswith("-"):
            # The positional arguments (a job's argv) start here; click reads
            # a lone "-" as one too, and a job's own --json=X is not ours.
            return out + args[i:]
        if arg.startswith("--json="):
            target = arg.partition("=")[2]
            out += _legacy_json(target)
        elif (
            arg == "--json"
            and i + 1 < len(args)
            and (args[i + 1] == "-" or args[i + 1].endswith(".json"))
        ):
            out += _legacy_json(args[i + 1])
            i += 1
        else:
            out.append(arg)
            if arg in takes_value:
                if i + 1 < len(args):
                    out.append(args[i + 1])
                i += 1
        i += 1
    return out


def _legacy_json(target: str) -> list[str]:
    new = ["--json"] if target == "-" else ["--json-file", target]
    sys.stderr.write(
        f"tether: --json {target} is deprecated: use {' '.join(new)}"
        " (--json alone prints the document on stdout)\n"
    )
    return new


_POLICY_PARAMETERS = (
    "policy_text", "sig", "kill_after", "leader_signal", "tree_delay", "kill_script",
    "kill_script_mode",
)  # fmt: skip


def with_policy_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the policy options of ``run`` and ``kill`` (and ``--json``, ``--json-file``).

    The command receives them merged, as ``policy_flags`` (settings for
    :func:`configured`), and ``json_file`` (see :func:`json_target`).
    """

    import functools  # click's path only

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        return f(*args, **merge_policy_parameters(kwargs))

    for option in reversed([*_policy_options(), *json_options("the termination report")]):
        command = option(command)
    return command


def merge_policy_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A command's parameters as click parsed them, with the policy options
    and ``--json``/``--json-file`` merged as :func:`with_policy_options` says."""
    rest = dict(params)
    given = {name: rest.pop(name) for name in _POLICY_PARAMETERS}
    rest["json_file"] = json_target(rest.pop("json_stdout"), rest["json_file"])
    rest["policy_flags"] = policy_flags(**given)
    return rest


def policy_flags(
    policy_text: str | None,
    sig: str | None,
    kill_after: str | None,
    leader_signal: str | None,
    tree_delay: str | None,
    kill_script: str | None,
    kill_script_mode: str | None,
) -> dict[str, object]:
    """The policy options as settings, for :func:`configured`."""
    from tether.config import Flag
    from tether.policy import Policy, parse_duration, parse_signal

    if policy_text is not None and (sig is not None or kill_after is not None):
        raise UsageError("give either --policy or -s/-k, not both")
    if kill_script is not None and not kill_script.strip():
        raise UsageError("empty --kill-script")
    policy: object = policy_text
    if sig is not None or kill_after is not None:
        # As coreutils timeout: -s SIG -k DURATION is the whole policy SIG,DURATION,KILL.
        timeout_policy = Policy.from_timeout_flags(
            parse_signal(sig) if sig is not None else None,
            parse_duration(kill_after) if kill_after is not None else None,
        )
        policy = Flag(timeout_policy, "-s/-k")
    return {
        "termination.policy": policy,
        "termination.leader_signal": leader_signal,
        "termination.tree_delay": tree_delay,
        "termination.kill_script": kill_script,
        "termination.kill_script_mode": kill_script_mode,
    }
