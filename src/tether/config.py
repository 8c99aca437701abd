"""Configuration files: ``tether.toml``, validated strictly, every value with its source.

Files are read in this order, later ones overriding earlier ones key by key:

1. ``/etc/tether/tether.toml`` (the system file),
2. ``$XDG_CONFIG_HOME/tether/tether.toml``, else ``~/.config/tether/tether.toml``,
3. the file named by ``TETHER_CONFIG`` (an error if it is set and missing).

Command-line flags override all of them: every command merges its flags with
:meth:`EffectiveConfig.with_flags`.
A missing system or user file is skipped; an unreadable or malformed one is an
error. Unknown tables, unknown keys and bad values are errors reported as
``FILE:LINE: message`` (:class:`ConfigError`): a typo must never silently
fall back to a default on a machine that kills processes.

``tomllib`` reports no line numbers for values, so the line of each key is
found by scanning the file's text for its table header and key (dotted keys
and quoted keys included); it points at the right line for any ordinary file.

The reference for every setting is ``docs/configuration.md``; :data:`SETTINGS`
holds the same names, defaults and one-line descriptions.
"""

from __future__ import annotations

import math
import os
import stat
import sys

from tether import _signals
from tether._records import dataclass, field, replace
from tether.errors import TetherError, UsageError
from tether.policy import (
    KillScript,
    Policy,
    Step,
    format_duration,
    parse_duration,
    parse_signal,
    signal_name,
)
from tether.tracking.select import parse_tracker_names

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from typing import Any, Literal, TypeAlias

SYSTEM_CONFIG_FILE = "/etc/tether/tether.toml"
CONFIG_ENV_VAR = "TETHER_CONFIG"
JSON_SCHEMA_VERSION = 1


class ConfigError(TetherError):
    """A configuration file or override is malformed: ``FILE:LINE: message``.

    Attributes:
        message: what is wrong, without the location.
        where: ``FILE:LINE``, ``FILE``, a command-line flag such as ``--policy``,
            or ``TETHER_CONFIG``.
    """

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        return (type(self), (self.where, self.message))


# -- where a value came from ---------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a setting's value came from.

    Attributes:
        kind: ``"default"``, ``"file"`` (a configuration file) or ``"flag"``.
        path: the file, for ``kind == "file"``.
        line: the line of the key in that file (1-based).
        flag: the command-line flag, for ``kind == "flag"``.
        via_env: the file was named by ``TETHER_CONFIG``.
        rank: precedence: 0 default, then 1, 2, ... for each file read, and
            :data:`FLAG_RANK` for flags.
    """

    kind: Literal["default", "file", "flag"]
    path: str | None = None
    line: int | None = None
    flag: str | None = None
    via_env: bool = False
    rank: int = 0

    @property
    def location(self) -> str:
        """``FILE:LINE``, the flag, or ``default``: the prefix of error messages."""
        if self.kind == "file":
            return f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        if self.kind == "flag":
            return str(self.flag)
        return "default"

    def __str__(self) -> str:
        if self.kind == "file" and self.via_env:
            return f"{self.location} ({CONFIG_ENV_VAR})"
        return self.location


DEFAULT_SOURCE = Source("default")
FLAG_RANK = 1000


# -- value types ---------------------------------------------------------------


class _Invalid(Exception):
    """A value is malformed; the message has no location yet."""


def _typename(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be {what}, not {_typename(value)}")
    return value


def _parse_policy(value: object) -> Policy:
    # Parsed once, here: the setting keeps the Policy (and the text as written,
    # for display: see Setting.literal). A Policy is taken as it is (-s/-k).
    if isinstance(value, Policy):
        return value
    text = _string(value, 'a policy string such as "TERM,10s,KILL"').strip()
    try:
        return Policy.parse(text)
    except UsageError as err:
        raise _Invalid(str(err)) from None


def _parse_signal(value: object) -> _signals.Signal:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _string(value, 'a signal such as "TERM", "SIGINT" or 15')
    try:
        return parse_signal(text)
    except UsageError as err:
        raise _Invalid(str(err)) from None


def _parse_optional_signal(value: object) -> _signals.Signal | None:
    if value == "":
        return None
    return _parse_signal(value)


def _parse_duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if seconds < 0 or not math.isfinite(seconds):
            raise _Invalid(f"must be a non-negative, finite duration, not {value!r}")
        try:
            parse_duration(format_duration(seconds))  # the same maximum as text
        except UsageError as err:
            raise _Invalid(str(err)) from None
        return seconds
    text = _string(value, 'a duration such as "10s", "2m", "1min 30s" or a number of seconds')
    try:
        return parse_duration(text)
    except UsageError as err:
        raise _Invalid(str(err)) from None


def _parse_optional_duration(value: object) -> float | None:
    if value == "":
        return None
    return _parse_duration(value)


def _parse_timeout(value: object) -> float | None:
    # As in coreutils timeout(1), a duration of 0 disables the timeout.
    if isinstance(value, str) and value.strip().lower() in ("", "none"):
        return None
    seconds = _parse_duration(value)
    return seconds or None


def _string_list(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise _Invalid(f"must be an array of {what}, not {_typename(value)}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Invalid(f"item {i + 1} must be {what}, not {_typename(item)}")
        out.append(item)
    return tuple(out)


def _parse_kill_script(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        try:
            import shlex

            argv = tuple(shlex.split(value))
        except ValueError as err:
            raise _Invalid(f"cannot split {value!r} into words: {err}") from None
    else:
        argv = _string_list(value, "strings (the command and its arguments)")
    if argv and not argv[0]:
        raise _Invalid("the command (first word) is empty")
    return argv or None


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _string(value, " or ".join(f'"{c}"' for c in choices))
        if text not in choices:
            raise _Invalid(f"must be {' or '.join(repr(c) for c in choices)}, not {text!r}")
        return text

    return parse


def _parse_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, not {_typename(value)}")
    return value


def _integer(lowest: int, highest: int, why: str = "") -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, not {_typename(value)}")
        if not lowest <= value <= highest:
            raise _Invalid(f"must be between {lowest} and {highest}, not {value}{why}")
        return value

    return parse


def _parse_log_file(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {_typename(value)}")
    if value and not value.startswith("/"):
        raise _Invalid(f'must be an absolute path (or ""), not {value!r}')
    return value


def _parse_trackers(value: object) -> str:
    if isinstance(value, str):
        names: str | tuple[str, ...] = value.strip()
    else:
        names = tuple(n.strip() for n in _string_list(value, "tracker names"))
    if names in ("auto", ("auto",)):
        return "auto"
    try:
        parse_tracker_names(names)
    except UsageError as err:
        raise _Invalid(str(err)) from None
    items = names.split(",") if isinstance(names, str) else list(names)
    return ",".join(dict.fromkeys(n.strip() for n in items))


def _parse_signal_list(auto: str) -> Callable[[object], object]:
    """A list of signals a supervisor handles (``"HUP,USR1"`` or an array),
    kept as its text; ``auto`` (if given) and ``none`` as they are."""

    def parse(value: object) -> str:
        from tether.spec import parse_signal_set, signal_list

        if isinstance(value, str) and value.strip().lower() in (auto, "none"):
            return value.strip().lower()
        items = value if isinstance(value, str) else _string_list(value, "signal names")
        try:
            return signal_list(parse_signal_set(items, "signals"))
        except UsageError as err:
            raise _Invalid(str(err).removeprefix("signals: ")) from None

    return parse


def _parse_regex_list(value: object) -> tuple[str, ...]:
    import re  # a configuration file's or a setting's text only: ~5 ms a start

    patterns = _string_list(value, "regular expressions")
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as err:
            raise _Invalid(f"item {i + 1} ({pattern!r}) is not a valid regex: {err}") from None
    return patterns


# Patterns, not compiled regexes: re compiles (and caches) them on first use,
# which a run without a configuration file or remote settings never reaches
# (six compiles were ~1 ms of every `tether run`'s start).
_USER = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?"


def _parse_users(value: object) -> tuple[str, ...]:
    import re  # a configuration file's or a setting's text only: ~5 ms a start

    users = _string_list(value, "user names or uids")
    for i, user in enumerate(users):
        if not re.fullmatch(_USER, user):
            raise _Invalid(f"item {i + 1} ({user!r}) is not a user name or uid")
    return users


_SSH_OPTION = r"[A-Za-z][A-Za-z0-9]*\s*[= ]\s*\S.*"


def _parse_ssh_options(value: object) -> tuple[str, ...]:
    import re  # a configuration file's or a setting's text only: ~5 ms a start

    options = _string_list(value, 'ssh options such as "ConnectTimeout=10"')
    for i, option in enumerate(options):
        if not re.fullmatch(_SSH_OPTION, option):
            raise _Invalid(
                f"item {i + 1} ({option!r}) is not an ssh option NAME=VALUE "
                '(each is passed as "-o ITEM", e.g. "ConnectTimeout=10")'
            )
    return options


# -- how values are shown ----------------------------------------------------------


def _toml_string(text: str) -> str:
    # JSON string escapes (\" \\ \n \uXXXX) are valid TOML basic-string escapes;
    # JSON leaves DEL raw, which TOML forbids in a string.
    import json  # shown values only: a run reads its config without json

    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _signals.Signal):
        return _toml_string(signal_name(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _json_value(value: object) -> object:
    if isinstance(value, _signals.Signal):
        return signal_name(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# -- the settings --------------------------------------------------------------------

# A string at run time, as annotations are: typing is not imported.
ValueKind: TypeAlias = (
    "Literal['policy', 'signal', 'duration', 'string', 'argv', 'choice', 'bool', 'int', 'list']"
)


@dataclass(frozen=True)
class SettingSpec:
    """One setting: its key, default, validation, and how it is written back.

    Attributes:
        key: ``table.name``.
        default: the default value, typed (a policy as its text: the setting's
            value is the parsed :class:`Policy`).
        kind: what sort of value it is (for flags given as strings).
        help: one line for the reference and ``tether config``.
        unset: the TOML text for "not set" (None), e.g. ``""`` or ``"none"``.
        flag: the command-line flag that overrides it, if any.
        duration: durations are shown as ``10s`` and given in JSON as seconds.
        combine: how a flag's values meet the files' for a list: ``"append"``
            (after them) or ``"prepend"`` (before them: ssh takes the first
            value of an option); ``"replace"`` for everything else.
    """

    key: str
    default: object
    parse: Callable[[object], object]
    kind: ValueKind
    help: str
    unset: str = '""'
    flag: str | None = None
    duration: bool = False
    combine: Literal["replace", "append", "prepend"] = "replace"

    def toml(self, value: object) -> str:
        """The value as TOML text that parses back to the same value."""
        if value is None:
            return self.unset
        if self.duration:
            assert isinstance(value, float)
            return _toml_string(format_duration(value))
        return _toml_value(value)

    def json(self, value: object) -> object:
        """The value as JSON: durations in seconds, signals by name, arrays as lists."""
        return _json_value(value)


def _spec(key: str, default: object, parse: Callable[[object], object], kind: ValueKind,
          help: str, **kw: Any) -> SettingSpec:  # fmt: skip
    return SettingSpec(key, default, parse, kind, help, **kw)


SETTINGS: tuple[SettingSpec, ...] = (
    _spec("termination.policy", "TERM,10s,KILL", _parse_policy, "policy",
          "signals and grace periods sent to the whole tree, in order", flag="--policy"),
    _spec("termination.tree_signal", None, _parse_optional_signal, "signal",
          "replaces the first signal of the policy (as timeout -s); \"\" keeps the policy's",
          flag="-s"),
    _spec("termination.grace", None, _parse_optional_duration, "duration",
          "replaces the wait after the first signal (as timeout -k); \"\" keeps the policy's",
          flag="-k", duration=True),
    _spec("termination.leader_signal", None, _parse_optional_signal, "signal",
          "first signal for the job's leader only; \"\" sends it the tree's",
          flag="--leader-signal"),
    _spec("termination.tree_delay", 0.0, _parse_duration, "duration",
          "after signalling the leader, wait this long before signalling the rest of the tree",
          flag="--tree-delay", duration=True),
    _spec("termination.final_wait", None, _parse_optional_duration, "duration",
          "bound on the wait after the last signal (survivors are reported); "
          "\"\" keeps the policy's (5s unless it ends with a duration)", duration=True),
    _spec("termination.kill_script", None, _parse_kill_script, "argv",
          "command run with TETHER_JOB_ID, TETHER_LEADER_PID, TETHER_MEMBER_PIDS; \"\" for none",
          flag="--kill-script"),
    _spec("termination.kill_script_mode", "precede", _choice("precede", "replace"), "choice",
          "run the kill script before the signals (precede) or instead of them (replace)",
          flag="--kill-script-mode"),
    _spec("termination.kill_script_timeout", 10.0, _parse_duration, "duration",
          "how long the kill script may run", duration=True),
    _spec("run.timeout", None, _parse_timeout, "duration",
          "terminate the whole tree after this long; 0 or \"none\" for no timeout",
          unset='"none"', flag="--timeout", duration=True),
    _spec("run.trackers", "auto", _parse_trackers, "string",
          "auto, or a list of cgroup, subreaper, session, cookie, walk", flag="--trackers"),
    _spec("run.wait_leftovers", False, _parse_bool, "bool",
          "when the leader exits, wait for leftover members instead of terminating them",
          flag="--wait-leftovers"),
    _spec("run.forward", "none", _parse_signal_list("none"), "string",
          "signals passed on to the command instead of cancelling the job, besides USR1, "
          "USR2, WINCH (and HUP when tether is PID 1); \"none\" for no others",
          unset='"none"', flag="--forward"),
    _spec("run.cancel_on", "auto", _parse_signal_list("auto"), "string",
          "signals that start the policy: auto (INT, TERM, HUP, QUIT; as PID 1 INT, TERM, "
          "QUIT), a list, or \"none\"; default ones left out are passed on",
          unset='"auto"', flag="--cancel-on"),
    _spec("run.fail_on_leftovers", False, _parse_bool, "bool",
          "exit 123 when members were still running as the command exited (a leak)",
          flag="--fail-on-leftovers"),
    _spec("prune.min_uid", 1000, _integer(1, 2**32 - 2, " (root is never pruned)"), "int",
          "processes of uids below this are never touched", flag="--min-uid"),
    _spec("prune.min_age", 0.0, _parse_duration, "duration",
          "processes younger than this are never touched", flag="--min-age", duration=True),
    _spec("prune.orphans_only", False, _parse_bool, "bool",
          "only consider processes re-parented to init", flag="--orphans-only"),
    _spec("prune.exclude_users", (), _parse_users, "list",
          "user names or uids never touched", combine="append"),
    _spec("prune.exclude_comm", (), _parse_regex_list, "list",
          "regexes matched against the process name (comm); matches are never touched",
          flag="--exclude-comm", combine="append"),
    _spec("prune.include_ssh", False, _parse_bool, "bool",
          "also consider processes of interactive SSH sessions"),
    _spec("prune.policy", "TERM,10s,KILL", _parse_policy, "policy",
          "termination policy for what the pruner kills"),
    _spec("prune.log_file", "", _parse_log_file, "string",
          "append the prune/epilog decisions to this file instead of syslog or the journal; "
          "\"\" for syslog (or /var/log/tether/prune.log where no syslog socket exists)",
          flag="--log-file"),
    _spec("remote.fanout", 32, _integer(1, 10000), "int",
          "how many hosts are contacted at once", flag="--fanout"),
    _spec("remote.ssh_options", (), _parse_ssh_options, "list",
          "options passed to ssh, each as -o ITEM (e.g. \"ConnectTimeout=10\")",
          combine="prepend"),
    _spec("remote.engine", "auto", _choice("auto", "python", "sh"), "choice",
          "what supervises a remote job: python (needs python3 >= 3.11 there), sh (the "
          "POSIX-shell agent: weaker guarantees), or auto (python if the host can, else sh)",
          flag="--remote-engine"),
    _spec("remote.transport", "openssh", _choice("openssh"), "choice",
          "openssh: the ssh client, which honours ~/.ssh/config (asyncssh was measured "
          "and not adopted, see bench/remote_transport.py)"),
)  # fmt: skip

_BY_KEY: dict[str, SettingSpec] = {s.key: s for s in SETTINGS}
TABLES: tuple[str, ...] = tuple(dict.fromkeys(s.key.partition(".")[0] for s in SETTINGS))

#: Names users bring from other tools, with what to write instead.
_HINTS: dict[str, str] = {
    "termination.kill_tree": (
        "is not a setting: tether always terminates the whole tree (nothing may outlive "
        "the job); to let the leader stop its own workers first, set tree_delay"
    ),
    "termination.kill_children": "is not a setting: tether always terminates the whole tree",
    "termination.signal": "is not a setting: use tree_signal (the policy's first signal)",
    "termination.kill_signal": "is not a setting: use leader_signal or tree_signal",
    "termination.kill_children_signal": "is not a setting: use tree_signal",
    "termination.kill_after": "is not a setting: use grace (the wait after the first signal)",
    "termination.grace_timeout": "is not a setting: use grace or final_wait",
    "run.policy": "belongs in [termination]",
    "run.kill_script": "belongs in [termination]",
    "prune.older_than": "is not a setting: use min_age",
}


# -- finding the line of a key ---------------------------------------------------

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = rf"\s*\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$"
_ARRAY_HEADER = rf"\s*\[\[\s*({_DOTTED})\s*\]\]"
_ASSIGN = rf"\s*({_DOTTED})\s*="


def _split_key(dotted: str) -> tuple[str, ...]:
    import re  # a configuration file's or a setting's text only: ~5 ms a start

    parts = []
    for m in re.finditer(_KEY_PART, dotted):
        p = m.group(0)
        if p[0] == '"':
            import json

            p = json.loads(p)
        elif p[0] == "'":
            p = p[1:-1]
        parts.append(p)
    return tuple(parts)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path (and table header) in TOML text to its first line (1-based).

    A line scanner, not a parser: it skips the insides of multi-line strings
    and is exact for headers and ``key = value`` lines, which is what error
    messages point at.
    """
    import re  # a configuration file's or a setting's text only: ~5 ms a start

    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        m = re.match(_ARRAY_HEADER, line) or re.match(_HEADER, line)
        if m is not None:
            table = _split_key(m.group(1))
            lines.setdefault(table, number)
            continue
        m = re.match(_ASSIGN, line)
        if m is not None:
            path = table + _split_key(m.group(1))
            for i in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:i], number)
            rest = line[m.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
                    break
    return lines


# -- loading -----------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFile:
    """A candidate configuration file and whether it was read."""

    path: str
    found: bool
    via_env: bool = False


@dataclass(frozen=True)
class Setting:
    """One effective setting: its key, typed value, and where it came from.

    Attributes:
        key: ``table.name``.
        value: the typed value (a :class:`Policy` for a policy).
        source: where it came from.
        note: why a value given somewhere was dropped (a policy modifier).
        literal: a policy as it was written (``"TERM,10s,KILL"``), which is
            what ``tether config`` shows; None for other settings.
    """

    key: str
    value: Any
    source: Source
    note: str | None = None
    literal: str | None = None

    @property
    def spec(self) -> SettingSpec:
        return _BY_KEY[self.key]

    @property
    def text(self) -> str:
        """The value as TOML text (``"10s"``, ``true``, ``["a", "b"]``)."""
        if self.literal is not None:
            return _toml_string(self.literal)
        return self.spec.toml(self.value)

    @property
    def json_value(self) -> object:
        """The value as JSON: a policy as written, durations in seconds, signals by name."""
        if self.literal is not None:
            return self.literal
        return self.spec.json(self.value)


def _typed(spec: SettingSpec, raw: object, source: Source) -> Setting:
    """The setting ``raw`` gives (a TOML value, or a flag's read by :func:`_from_flag`).

    Raises:
        _Invalid: ``raw`` is not a valid value for ``spec``.
    """
    value = spec.parse(raw)
    literal = None
    if spec.kind == "policy":
        literal = raw.strip() if isinstance(raw, str) else str(value)
    return Setting(spec.key, value, source, literal=literal)


def _default(spec: SettingSpec) -> Setting:
    if spec.kind == "policy":
        return _typed(spec, spec.default, DEFAULT_SOURCE)
    return Setting(spec.key, spec.default, DEFAULT_SOURCE)


#: Every setting at its default (the two default policies parsed once, here).
_DEFAULTS: dict[str, Setting] = {spec.key: _default(spec) for spec in SETTINGS}


#: A configuration file larger than this is refused, not read (a real one is
#: a few KiB; /dev/zero or a runaway generator must not eat the memory).
MAX_CONFIG_BYTES = 1 << 20
#: Deepest nesting of arrays and inline tables accepted (tomllib recurses).
MAX_TOML_DEPTH = 32


def unsafe_for_root(path: str, st: os.stat_result) -> str | None:
    """Why root must not read the file ``path`` (stat ``st``), or None.

    As sudo and sshd do: the file and every directory above it must be owned
    by root and writable by no one else, or another user could steer what
    root runs (``termination.kill_script``) through ``sudo -E`` or ``su``.
    """

    def bad(what: str, where: str, mode: int, uid: int) -> str | None:
        if uid != 0:
            return f"{what} {where} is owned by uid {uid}, not root"
        if mode & 0o022:
            return f"{what} {where} is writable by group or others (mode {mode & 0o7777:04o})"
        return None

    why = bad("the file", path, st.st_mode, st.st_uid)
    directory = os.path.dirname(os.path.realpath(path))
    while why is None:
        try:
            dst = os.stat(directory)
        except OSError as err:
            return f"directory {directory}: {err.strerror}"
        # A sticky, root-owned directory (/tmp) still lets others plant files
        # in it, not replace root's: only its owner matters then.
        mode = dst.st_mode & ~0o022 if dst.st_mode & 0o1000 else dst.st_mode
        why = bad("its directory", directory, mode, dst.st_uid)
        if directory == "/":
            break
        directory = os.path.dirname(directory)
    return why


def _read_file(path: str, via_env: bool) -> bytes | None:
    """The bytes of a configuration file, bounded; None if root must skip it."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a file") from None
    except OSError as err:
        raise ConfigError(path, f"cannot read: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(path, "is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, "is not a regular file (a FIFO, socket or device)")
        if os.geteuid() == 0:
            why = unsafe_for_root(path, st)
            if why is not None:
                if via_env:
                    raise ConfigError(CONFIG_ENV_VAR, f"{path}: refused as root: {why}")
                sys.stderr.write(f"tether: skipping configuration file {path}: {why}\n")
                return None
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:
                raise ConfigError(path, f"larger than {MAX_CONFIG_BYTES} bytes: not read")
            chunks.append(chunk)
    except OSError as err:
        raise ConfigError(path, f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _check_depth(path: str, text: str) -> None:
    """Refuse nesting deeper than :data:`MAX_TOML_DEPTH` before tomllib recurses."""
    depth = 0
    quote = ""
    for number, line in enumerate(text.splitlines(), 1):
        i = 0
        while i < len(line):
            c = line[i]
            if quote:
                if c == "\\" and quote == '"':
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c == "#":
                break
            elif c in "[{":
                depth += 1
                if depth > MAX_TOML_DEPTH:
                    raise ConfigError(
                        f"{path}:{number}", f"nested deeper than {MAX_TOML_DEPTH} levels"
                    )
            elif c in "]}":
                depth = max(0, depth - 1)
            i += 1


def _parse_file(path: str, via_env: bool, rank: int) -> dict[str, Setting] | None:
    import re  # a configuration file's or a setting's text only: ~5 ms a start

    raw = _read_file(path, via_env)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}", "not UTF-8 text") from None
    import tomllib  # only when a file exists: most runs have none

    _check_depth(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        msg = str(err)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        if m is None:
            m = re.search(r"\s*\(at end of document\)$", msg)
            where = f"{path}:{len(text.splitlines()) or 1}"
            raise ConfigError(where, f"not valid TOML: {msg[: m.start()] if m else msg}") from None
        raise ConfigError(
            f"{path}:{m.group(1)}", f"not valid TOML: {msg[: m.start()]} (column {m.group(2)})"
        ) from None
    except (ValueError, RecursionError):
        # int() past Python's digit limit; nesting the depth check missed.
        m = re.search(r"[0-9_]{100}", text)
        line = text[: m.start()].count("\n") + 1 if m else 1
        raise ConfigError(f"{path}:{line}", "a number too large or nesting too deep") from None
    lines = key_lines(text)

    def source(*path_parts: str) -> Source:
        for i in range(len(path_parts), 0, -1):
            line = lines.get(path_parts[:i])
            if line is not None:
                return Source("file", path, line, via_env=via_env, rank=rank)
        return Source("file", path, 1, via_env=via_env, rank=rank)

    out: dict[str, Setting] = {}
    for table, body in data.items():
        src = source(table)
        if table not in TABLES:
            owners = [k.partition(".")[0] for k in _BY_KEY if k.partition(".")[2] == table]
            if not isinstance(body, dict) and owners:
                raise ConfigError(
                    src.location,
                    f"{table} must be in a table: write it under [{owners[0]}]",
                )
            raise ConfigError(
                src.location,
                f"unknown table [{table}]{_suggest(table, TABLES) or ''} "
                f"(tables: {', '.join(TABLES)})",
            )
        if not isinstance(body, dict):
            raise ConfigError(src.location, f"{table} must be a table ([{table}]), not "
                              f"{_typename(body)}")  # fmt: skip
        for name, value in body.items():
            key = f"{table}.{name}"
            src = source(table, name)
            spec = _BY_KEY.get(key)
            if spec is None:
                names = [k.partition(".")[2] for k in _BY_KEY if k.startswith(table + ".")]
                hint = _HINTS.get(key)
                if hint is not None:
                    raise ConfigError(src.location, f"{key} {hint}")
                raise ConfigError(
                    src.location,
                    f"unknown setting {key}{_suggest(name, names) or ''} "
                    f"(in [{table}]: {', '.join(names)})",
                )
            try:
                out[key] = _typed(spec, value, src)
            except _Invalid as err:
                raise ConfigError(src.location, f"{key}: {err}") from None
    return out


def _suggest(name: str, choices: Sequence[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else None


def user_config_file(env: Mapping[str, str]) -> str | None:
    """``$XDG_CONFIG_HOME/tether/tether.toml``, else ``$HOME/.config/tether/tether.toml``.

    A relative XDG_CONFIG_HOME is ignored, as the XDG base directory spec says.
    None when neither variable gives a home.
    """
    xdg = env.get("XDG_CONFIG_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "tether", "tether.toml")
    home = env.get("HOME", "")
    if not home:
        return None
    return os.path.join(home, ".config", "tether", "tether.toml")


def config_files(
    env: Mapping[str, str] | None = None, *, system_file: str | None = SYSTEM_CONFIG_FILE
) -> list[tuple[str, bool]]:
    """The candidate files, lowest precedence first, as (path, named by TETHER_CONFIG)."""
    env = os.environ if env is None else env
    out: list[tuple[str, bool]] = []
    if system_file is not None:
        out.append((system_file, False))
    user = user_config_file(env)
    if user is not None:
        out.append((user, False))
    named = env.get(CONFIG_ENV_VAR, "")
    if named:
        out.append((named, True))
    return out


def load_config(
    env: Mapping[str, str] | None = None, *, system_file: str | None = SYSTEM_CONFIG_FILE
) -> EffectiveConfig:
    """Read the configuration files and return the effective configuration.

    Args:
        env: the environment to read ``HOME``, ``XDG_CONFIG_HOME`` and
            ``TETHER_CONFIG`` from (default ``os.environ``).
        system_file: the system-wide file (tests point it elsewhere; None skips it).

    Raises:
        ConfigError: a file is malformed, has an unknown key or a bad value, or
            ``TETHER_CONFIG`` names a file that does not exist.
    """
    layers: list[dict[str, Setting]] = []
    files: list[ConfigFile] = []
    for path, via_env in config_files(env, system_file=system_file):
        if not os.path.lexists(path):
            if via_env:
                raise ConfigError(CONFIG_ENV_VAR, f"{path}: no such file")
            files.append(ConfigFile(path, False, via_env))
            continue
        layer = _parse_file(path, via_env, len(layers) + 1)
        if layer is None:
            files.append(ConfigFile(path, False, via_env))
            continue
        layers.append(layer)
        files.append(ConfigFile(path, True, via_env))
    settings = dict(_DEFAULTS)
    for layer in layers:
        settings.update(layer)
    config = EffectiveConfig(_resolve(settings), tuple(files))
    config.check()
    return config


#: Settings that modify ``termination.policy`` rather than stand alone.
POLICY_MODIFIERS = ("termination.tree_signal", "termination.grace", "termination.final_wait")


def _resolve(settings: dict[str, Setting]) -> dict[str, Setting]:
    """Drop policy modifiers set at a lower precedence than the policy itself.

    A policy given later (a later file, or ``--policy``) is the whole policy:
    ``grace = "30s"`` in /etc must not bend ``tether run --policy KILL``.
    """
    policy = settings["termination.policy"]
    for key in POLICY_MODIFIERS:
        s = settings[key]
        if s.value is not None and s.source.rank < policy.source.rank:
            settings[key] = Setting(
                key,
                None,
                policy.source,
                note=f"{s.text} from {s.source} is replaced by termination.policy",
            )
    return settings


# -- the result ----------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """A command-line value and the flag that gave it, for :meth:`EffectiveConfig.with_flags`.

    Attributes:
        value: as :meth:`EffectiveConfig.with_flags` takes it (None: not given).
        name: the flag as the command spells it (``"-s/-k"``, ``"--exclude-user"``):
            the setting's source and the prefix of error messages.
    """

    value: object
    name: str


@dataclass(frozen=True)
class EffectiveConfig:
    """Every setting's effective value and source; immutable.

    Read values with ``config["run.timeout"]`` (typed: durations in seconds,
    signals as ints with a ``name``, as ``signal.Signals`` members have,
    arrays as tuples, policies as :class:`Policy`, None when unset), the source with
    ``config.setting(key).source``, and the policy for ``tether run``/``kill``
    with :meth:`policy_for_run`. Flags go on top with :meth:`with_flags`.

    Attributes:
        files: every candidate file, lowest precedence first, and whether it was read.
    """

    _settings: Mapping[str, Setting]
    files: tuple[ConfigFile, ...] = field(default=())

    @classmethod
    def defaults(cls) -> EffectiveConfig:
        """The built-in defaults, no file read."""
        return cls(dict(_DEFAULTS))

    def __getitem__(self, key: str) -> Any:
        return self.setting(key).value

    def setting(self, key: str) -> Setting:
        """The :class:`Setting` for ``key`` (``KeyError`` for an unknown key)."""
        return self._settings[key]

    def items(self) -> Iterator[Setting]:
        """Every setting, in reference order."""
        for spec in SETTINGS:
            yield self._settings[spec.key]

    def with_flags(self, flags: Mapping[str, object]) -> EffectiveConfig:
        """This configuration with a command's flags on top: the one flags-over-config merge.

        Every command (run, kill, prune, epilog, remote run) gives its flags
        here, once, and reads the effective values back.

        Args:
            flags: setting key -> the flag's value; None (or an empty list)
                means "not given" and leaves the setting as configured.
                Strings are read as the flag would be written (``"10s"``,
                ``"TERM"``, ``"1000"``, ``"cgroup,session"``); typed values
                (bool, int, float seconds, list, a :class:`Policy`) as in TOML.
                Wrap a value in :class:`Flag` to name the flag that gave it
                (default: the setting's own flag, e.g. ``--policy``).

        A flag replaces the configured value, except for a list setting whose
        :attr:`SettingSpec.combine` adds the flag's items after (``append``)
        or before (``prepend``) the configured ones.

        Raises:
            ConfigError: ``"--policy: bad policy ..."``; or a cross-setting
                check failed (:meth:`check`).
        """
        settings = dict(self._settings)
        changed = False
        for key, given in flags.items():
            name = given.name if isinstance(given, Flag) else None
            value = given.value if isinstance(given, Flag) else given
            if value is None or (isinstance(value, list | tuple) and not value):
                continue
            spec = _BY_KEY[key]
            flag = name or spec.flag or f"--{key.partition('.')[2].replace('_', '-')}"
            source = Source("flag", flag=flag, rank=FLAG_RANK)
            try:
                setting = _typed(spec, _from_flag(spec, value), source)
            except _Invalid as err:
                raise ConfigError(flag, str(err)) from None
            configured = settings[key].value
            if spec.combine == "append":
                setting = replace(setting, value=(*configured, *setting.value))
            elif spec.combine == "prepend":
                setting = replace(setting, value=(*setting.value, *configured))
            settings[key] = setting
            changed = True
        if not changed:
            return self
        config = EffectiveConfig(_resolve(settings), self.files)
        config.check()
        return config

    def with_override(self, key: str, value: object, source: str | None = None) -> EffectiveConfig:
        """This configuration with one flag on top: :meth:`with_flags` for ``key`` alone.

        Args:
            key: e.g. ``"termination.policy"``.
            value: the flag's value, as :meth:`with_flags` takes it (None: ``self``).
            source: the flag, e.g. ``"--policy"`` (default: the setting's own flag).

        Raises:
            ConfigError: ``"--policy: bad policy ..."``.
        """
        return self.with_flags({key: value if source is None else Flag(value, source)})

    def check(self) -> None:
        """Cross-setting checks (each setting alone was checked when read).

        Raises:
            ConfigError: e.g. ``grace`` with a one-step policy.
        """
        self.policy_for_run()
        self.policy_for_prune()

    def policy_for_run(self) -> Policy:
        """The :class:`Policy` for ``tether run`` and ``tether kill``.

        ``termination.policy`` with its first signal replaced by ``tree_signal``,
        the wait after its first signal by ``grace``, its last wait by
        ``final_wait`` (each when set), plus ``leader_signal``, ``tree_delay``
        and the kill script.

        Raises:
            ConfigError: ``grace`` is set but the policy has only one signal.
        """
        steps = list(self["termination.policy"].steps)
        tree_signal = self["termination.tree_signal"]
        if tree_signal is not None:
            steps[0] = Step(tree_signal, steps[0].grace)
        grace = self["termination.grace"]
        if grace is not None:
            if len(steps) < 2:
                policy = self.setting("termination.policy")
                raise ConfigError(
                    self.setting("termination.grace").source.location,
                    "termination.grace is the wait between the first and the next signal, "
                    f"but the policy {policy.literal!r} ({policy.source}) has one signal; "
                    "use final_wait",
                )
            steps[0] = Step(steps[0].signal, grace)
        final_wait = self["termination.final_wait"]
        if final_wait is not None:
            steps[-1] = Step(steps[-1].signal, final_wait)
        argv = self["termination.kill_script"]
        kill_script = (
            None
            if argv is None
            else KillScript(
                argv,
                mode=self["termination.kill_script_mode"],
                timeout=self["termination.kill_script_timeout"],
            )
        )
        return Policy(
            tuple(steps),
            leader_signal=self["termination.leader_signal"],
            tree_delay=self["termination.tree_delay"],
            kill_script=kill_script,
        )

    def policy_for_prune(self) -> Policy:
        """The :class:`Policy` for what the pruner kills (``prune.policy``)."""
        policy: Policy = self["prune.policy"]
        return policy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, stable keys (schema 1).

        ``{"schema": 1, "files": [{"path", "found", "via_env"}], "settings":
        [{"key", "value", "source", "kind", "path", "line", "note"}], "effective_policy"}``;
        durations are seconds, signals names, unset values null.
        """
        return {
            "schema": JSON_SCHEMA_VERSION,
            "files": [{"path": f.path, "found": f.found, "via_env": f.via_env} for f in self.files],
            "settings": [
                {
                    "key": s.key,
                    "value": s.json_value,
                    "source": str(s.source),
                    "kind": s.source.kind,
                    "path": s.source.path,
                    "line": s.source.line,
                    "note": s.note,
                }
                for s in self.items()
            ],
            "effective_policy": str(self.policy_for_run()),
        }

    def render_toml(self) -> str:
        """The effective configuration as a TOML file, each line commented with its source.

        Reading the output back as a configuration file gives the same values.
        """
        out: list[str] = []
        table = None
        settings = list(self.items())
        width = max(len(s.key.partition(".")[2]) + 3 + len(s.text) for s in settings)
        for s in settings:
            t, _, name = s.key.partition(".")
            if t != table:
                if table is not None:
                    out.append("")
                out.append(f"[{t}]")
                table = t
            assignment = f"{name} = {s.text}"
            note = f"; {s.note}" if s.note else ""
            out.append(f"{assignment:<{width}}  # {s.source}{note}")
        return "\n".join(out) + "\n"


def _from_flag(spec: SettingSpec, value: object) -> object:
    """A command-line string read as the setting's type (TOML is typed, flags are not)."""
    if not isinstance(value, str):
        return value
    if spec.kind == "int":
        try:
            return int(value.strip(), 10)
        except ValueError:
            return value  # parse() names the expected type
    if spec.kind == "bool":
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
    if spec.kind == "list":
        return [value]
    return value
