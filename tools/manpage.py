"""Man pages generated from the click commands themselves: one source with ``--help``.

    python3 tools/manpage.py --output man/

A build tool, kept outside the wheel: it imports the ``tether`` of this
checkout (``src/``), and tests/docs/test_manpages.py fails while ``man/`` is
not what it generates.

Writes ``tether.1``, one page per command (``tether-run.1``, ``tether-prune.8``,
...) and ``tether.toml.5`` (from :data:`tether.config.SETTINGS`). Each
command's page takes its synopsis, options (flags, metavar, help, defaults)
and description from the click objects, and its EXIT STATUS from the epilog,
whose convention is a ``\\b`` block::

    EXIT STATUS:
      0  what 0 means
      2  what 2 means, continued on lines
         indented further

A one-line ``EXIT STATUS: 0 text; 1 text.`` epilog is read too. The rest of
an epilog becomes the page's NOTES. The output is deterministic: the date is
:data:`RELEASE_DATE` (or ``SOURCE_DATE_EPOCH`` when set, as reproducible
builds ask), never the clock.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

if __name__ == "__main__":
    # Run as a script: document this checkout's tether, not another installed one.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tether

#: The date printed in every page's footer; bump it with the version.
RELEASE_DATE = "2026-11-21"

#: Commands an administrator runs (section 8); the others are section 1.
ADMIN_COMMANDS = frozenset({"prune", "reap", "epilog"})

_MANUALS = {1: "User Commands", 5: "File Formats", 8: "System Administration"}

#: Environment variables: (names, meaning). A variable is listed in tether(1)
#: only when the source mentions one of its names (see :func:`environment_names`),
#: so the page never documents a variable the code does not read or set.
ENVIRONMENT: tuple[tuple[tuple[str, ...], str], ...] = (
    (("TETHER_CONFIG",),
     "A configuration file read after the system and user files, overriding them "
     "key by key; it must exist. See tether.toml(5)."),
    (("XDG_CONFIG_HOME", "HOME"),
     "The user's configuration file is $XDG_CONFIG_HOME/tether/tether.toml "
     "(when XDG_CONFIG_HOME is an absolute path), else ~/.config/tether/tether.toml."),
    (("TETHER_RUNTIME_DIR",),
     "The directory of the journal of live jobs (default: /run/tether for root, "
     "else $XDG_RUNTIME_DIR/tether, else /tmp/tether-UID)."),
    (("XDG_RUNTIME_DIR",),
     "Where an unprivileged user's journal lives when TETHER_RUNTIME_DIR is unset "
     "($XDG_RUNTIME_DIR/tether)."),
    (("TETHER_JOB_ID",),
     "Set by tether in the environment of a job's command: the job's id. The "
     "cookie tracker finds processes by it even after they left the job's session; "
     "it never makes a process legitimate for tether prune (anyone can set it)."),
    (("TETHER_LEADER_PID", "TETHER_MEMBER_PIDS"),
     "Given to the kill script (--kill-script) with TETHER_JOB_ID: the leader's pid "
     "and the pids of the job's live members, separated by spaces."),
    (("TETHER_SYSLOG_SOCKET",),
     "The syslog socket tether prune and tether epilog log their decisions to "
     "(default /dev/log; --syslog-socket overrides it)."),
    (("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_JOB_UID", "SLURM_UID", "SLURM_JOB_USER"),
     "Read by tether epilog under Slurm: the ended job and its owner. Processes "
     "carrying the job's SLURM_JOB_ID are that job's strays."),
    (("PBS_JOBID",),
     "Processes carrying the ended Torque/PBS job's PBS_JOBID are that job's strays "
     "(tether epilog)."),
    (("TETHER_LOG_LEVEL", "TETHER_LOG_FORMAT", "TETHER_LOG_TARGET"),
     "Defaults for --log-level, --log-format and --log-target, for epilogues and "
     "services whose command line is hard to change; the flags win."),
    (("TETHER_JOURNALD_SOCKET",),
     "The journald socket log records are sent to (default "
     "/run/systemd/journal/socket)."),
    (("TETHER_PROCESS_BACKEND",),
     "linux or psutil: the process-table backend, chosen once at start-up (default: "
     "linux on Linux, psutil elsewhere). psutil has no cgroups, subreaper or pidfds; "
     "every report says which trackers it could use."),
    (("TETHER_NO_NATIVE_PROCSCAN",),
     "1: tether prune and tether epilog read /proc in Python instead of through the "
     "optional native reader (the same results, slower), e.g. to compare the two."),
    (("TETHER_TRACEBACK",),
     "1: an internal error (a bug in tether) prints its Python traceback after "
     "the one-line message, for a bug report."),
    (("NO_COLOR",),
     "Non-empty: no colour in tether's output (https://no-color.org); TERM=dumb does "
     "the same. Colour is only ever used on a terminal."),
)  # fmt: skip

# Which names count as environment variables when the source is scanned.
_ENV_NAME = re.compile(r"\b(?:TETHER|SLURM|PBS|XDG)_[A-Z0-9_]*[A-Z0-9]\b|\bNO_COLOR\b")
# Test-only variables are not the user's business.
_ENV_IGNORED = frozenset({"TETHER_TEST_ID"})

_TABLES = {
    "termination": "How a job's tree is terminated (tether run, tether kill).",
    "run": "tether run.",
    "prune": "tether prune and tether epilog: stray processes on batch nodes.",
    "remote": "Jobs on SSH hosts (tether run --host/-w, tether cancel).",
}

_KINDS = {
    "policy": 'policy: signals and grace periods, e.g. "TERM,10s,KILL"',
    "signal": 'signal: a name or number, e.g. "TERM", "SIGINT", 15',
    "duration": 'duration: e.g. "250ms", "10s", "1min 30s", or a number of seconds',
    "string": "string",
    "argv": "command: a string (split like a shell) or an array of strings",
    "choice": "string: one of the words above",
    "bool": "boolean: true or false",
    "int": "integer",
    "list": "array of strings",
}

#: tether.toml(5) EXAMPLES: (what it is for, the file). Tests load each one.
TOML_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("A CI runner: give build tools a chance to clean up, bound every job.",
     '[termination]\npolicy = "INT,5s,TERM,20s,KILL"\nfinal_wait = "10s"\n\n'
     '[run]\ntimeout = "2h"\n'),
    ("A training launcher that shuts its own workers down: signal the launcher "
     "first, the rest of the tree 30 seconds later.",
     '[termination]\nleader_signal = "INT"\ntree_delay = "30s"\n'
     'kill_script = ["/opt/ml/bin/dump-state", "--reason", "cancelled"]\n'
     'kill_script_mode = "precede"\n'),
    ("A batch node:",
     "[prune]\nmin_uid = 1000\nmin_age = \"5m\"\nexclude_users = [\"slurm\", \"munge\"]\n"
     "exclude_comm = ['^slurmstepd$', '^sshd$']\npolicy = \"TERM,30s,KILL\"\n"),
)  # fmt: skip

_EXIT_CODE = re.compile(r"\d+(?:\+[A-Za-z]+)?(?:\s*[-\u2013]\s*\d+)?")


# -- roff ----------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Plain text as roff: backslashes, hyphens (as ``\\-``, so options copy and
    search as ASCII), non-ASCII as ``\\[uXXXX]`` (groff reads its input as Latin-1)."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\e")
        elif c == "-":
            out.append("\\-")
        elif ord(c) > 126 or (ord(c) < 32 and c != "\t"):
            out.append(f"\\[u{ord(c):04X}]")
        else:
            out.append(c)
    return "".join(out)


def _line(text: str) -> str:
    """A text line that roff will not take for a request (leading ``.`` or ``'``)."""
    return "\\&" + text if text.startswith((".", "'")) else text


# Inline code (`tether reap`) and option names (--policy, -s) are set in bold.
_INLINE = re.compile(r"`([^`]+)`|(?<![\w\-\[.])(--?[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*)")


def _inline(text: str) -> str:
    """Text with `code` and --options in bold, escaped."""
    out = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(_escape(text[pos : m.start()]))
        out.append(f"\\fB{_escape(m.group(1) or m.group(2))}\\fR")
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _metavar(text: str) -> str:
    """A metavar or usage piece: upper-case words in italics, the rest roman."""
    out = []
    pos = 0
    for m in re.finditer(r"[A-Z][A-Z0-9_]*", text):
        out.append(_escape(text[pos : m.start()]))
        out.append(f"\\fI{_escape(m.group(0))}\\fR")
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _quoted(text: str) -> str:
    """A macro argument (``.SS``, ``.TH``): escaped and double-quoted."""
    return '"' + _escape(text).replace('"', "\\(dq") + '"'


@dataclass(frozen=True)
class _Paragraph:
    lines: tuple[str, ...]
    literal: bool  # a click ``\b`` block: lines kept as written


def _paragraphs(text: str) -> list[_Paragraph]:
    """Click help text split as click splits it: blank lines, ``\\b`` blocks."""
    out = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(text).partition("\f")[0]):
        lines = block.splitlines()
        literal = bool(lines) and lines[0].strip() == "\b"
        if literal:
            lines = lines[1:]
        lines = [ln.rstrip() for ln in lines]
        if any(ln.strip() for ln in lines):
            out.append(_Paragraph(tuple(lines), literal))
    return out


def _render(paragraphs: Sequence[_Paragraph]) -> list[str]:
    out: list[str] = []
    for p in paragraphs:
        out.append(".PP")
        if p.literal:
            out.append(".nf")
            out.extend(_line(_inline(ln)) if ln.strip() else ".sp" for ln in p.lines)
            out.append(".fi")
        else:
            out.extend(_line(_inline(ln.strip())) for ln in p.lines if ln.strip())
    return out


# -- exit status from the epilog ------------------------------------------------------


@dataclass(frozen=True)
class ExitStatus:
    """The EXIT STATUS an epilog documents: a lead sentence and (code, meaning) pairs."""

    intro: str
    codes: tuple[tuple[str, str], ...]
    rest: str = ""  # pieces of a one-line epilog that name no code ("otherwise ...")


def parse_epilog(epilog: str | None) -> tuple[ExitStatus | None, list[_Paragraph]]:
    """Split an epilog into its EXIT STATUS and the other paragraphs (for NOTES)."""
    status = None
    notes = []
    for p in _paragraphs(epilog or ""):
        first = p.lines[0].strip()
        if status is None and first.upper().startswith("EXIT STATUS"):
            status = _exit_status(p)
        else:
            notes.append(p)
    return status, notes


def _exit_status(p: _Paragraph) -> ExitStatus:
    head, _, inline = p.lines[0].strip()[len("EXIT STATUS") :].partition(":")
    intro = head.strip().removeprefix("(").removesuffix(")").strip()
    body = list(p.lines[1:])
    if inline.strip() or not p.literal:
        # The one-line form: "EXIT STATUS: 0 text; 1 text; otherwise text."
        text = " ".join([inline.strip(), *(ln.strip() for ln in body)]).strip()
        codes, rest = [], []
        for piece in (s.strip() for s in text.split(";")):
            m = _EXIT_CODE.match(piece)
            if m and piece[m.end() : m.end() + 1] == " ":
                codes.append((m.group(0), piece[m.end() :].strip().removesuffix(".")))
            elif piece:
                rest.append(piece)
        return ExitStatus(intro, tuple(codes), "; ".join(rest))
    items: list[list[str]] = []
    indent = None
    extra: list[str] = []
    for ln in body:
        if not ln.strip():
            continue
        depth = len(ln) - len(ln.lstrip())
        m = _EXIT_CODE.match(ln.strip())
        if m and ln.strip()[m.end() : m.end() + 1] == " " and (indent is None or depth <= indent):
            indent = depth
            items.append([m.group(0), ln.strip()[m.end() :].strip()])
        elif items:
            items[-1][1] += " " + ln.strip()
        else:
            extra.append(ln.strip())
    if extra:
        intro = " ".join([intro, *extra]).strip()
    return ExitStatus(intro, tuple((c, t) for c, t in items))


def _render_exit_status(status: ExitStatus) -> list[str]:
    out = []
    if status.intro:
        # The header's parenthesis leads into the list: "(the command's own
        # status, except):" reads as "The command's own status, except:".
        text = status.intro[0].upper() + status.intro[1:].rstrip(".:")
        out += [".PP", _line(_inline(text + ":"))]
    for code, text in status.codes:
        out += [".TP", f"\\fB{_escape(code)}\\fR", _line(_inline(text))]
    if status.rest:
        out += [".PP", _line(_inline(status.rest[0].upper() + status.rest[1:]))]
    return out


# -- options -------------------------------------------------------------------------


def _option_metavar(param: click.Option, ctx: click.Context) -> str:
    if param.is_flag or param.count:
        return ""
    if param.metavar is not None:
        return param.metavar
    try:
        return param.make_metavar(ctx)  # type: ignore[call-arg,unused-ignore]  # click >= 8.2
    except TypeError:
        return param.make_metavar()  # type: ignore[call-arg,unused-ignore]  # click 8.1


def _render_options(params: Sequence[click.Parameter], ctx: click.Context) -> list[str]:
    out = []
    for param in params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        metavar = _option_metavar(param, ctx)
        names = []
        for declared in (param.opts, param.secondary_opts):
            # Short options first: click builds the help option's names from a
            # set, whose order changes from one process to the next.
            group = sorted(declared, key=lambda o: o.startswith("--"))
            if group:
                names.append(", ".join(f"\\fB{_escape(o)}\\fR" for o in group))
        tag = " / ".join(names) + (f" {_metavar(metavar)}" if metavar else "")
        # The help as --help shows it, extras included ("[default: 32; x>=1]").
        help_text = " ".join(record[1].split())
        out += [".TP", tag, _line(_inline(help_text)) if help_text else '.\\" (no help)']
    return out


def _synopsis(prog: str, command: click.Command, ctx: click.Context) -> list[str]:
    pieces = " ".join(_metavar(p) for p in command.collect_usage_pieces(ctx))
    return [".SH SYNOPSIS", f"\\fB{_escape(prog)}\\fR {pieces}".rstrip()]


# -- pages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One man page: ``name(section)`` and its roff text."""

    name: str
    section: int
    text: str

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.section}"


def man_date(env: Mapping[str, str] | None = None) -> str:
    """The footer date: ``SOURCE_DATE_EPOCH`` when set, else :data:`RELEASE_DATE`."""
    env = os.environ if env is None else env
    epoch = env.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return time.strftime("%Y-%m-%d", time.gmtime(int(epoch)))
    return RELEASE_DATE


def _header(name: str, section: int, summary: str, date: str) -> list[str]:
    return [
        f'.\\" {name}({section}): generated by `python3 tools/manpage.py`; do not edit.',
        f".TH {_quoted(name.upper())} {section} {_quoted(date)} "
        f"{_quoted(f'tether {tether.__version__}')} {_quoted(_MANUALS[section])}",
        # Option names must not be hyphenated at a line end, nor words spread out.
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{_escape(name)} \\- {_escape(summary)}",
    ]


def _section(name: str) -> int:
    return 8 if name in ADMIN_COMMANDS else 1


def _see_also(refs: Sequence[tuple[str, int]]) -> list[str]:
    text = ",\n".join(f"\\fB{_escape(n)}\\fR({s})" for n, s in refs)
    return [".SH SEE ALSO", *text.splitlines()]


def _summary(command: click.Command) -> str:
    text = command.get_short_help_str(limit=200).strip()
    text = text.removesuffix(".")
    return text[0].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _commands(root: click.Group, ctx: click.Context) -> Iterator[tuple[str, click.Command]]:
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        if command is not None and not command.hidden:
            yield name, command


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    # As make_context() would, without parsing arguments: the command's own
    # context_settings (help_option_names) apply.
    return click.Context(command, info_name=name, parent=parent, **command.context_settings)


def command_page(
    root: click.Group, name: str, command: click.Command, root_ctx: click.Context, date: str
) -> Page:
    """tether-NAME(N) from the command's click object."""
    section = _section(name)
    ctx = _context(command, name, root_ctx)
    out = _header(f"tether-{name}", section, _summary(command), date)
    out += _synopsis(f"tether {name}", command, ctx)
    out += [".SH DESCRIPTION", *_render(_paragraphs(command.help or ""))]
    out += [".SH OPTIONS", *_render_options(command.get_params(ctx), ctx)]
    status, notes = parse_epilog(command.epilog)
    if status is not None:
        out += [".SH EXIT STATUS", *_render_exit_status(status)]
    if notes:
        out += [".SH NOTES", *_render(notes)]
    refs = [("tether", 1)]
    if name in ("run", "kill", "prune", "epilog", "config"):
        refs.append(("tether.toml", 5))
    refs += [(f"tether-{n}", _section(n)) for n, _ in _commands(root, root_ctx) if n != name]
    out += _see_also(refs)
    return Page(f"tether-{name}", section, "\n".join(out) + "\n")


def environment_names(package_dir: Path | None = None) -> set[str]:
    """Environment variable names the package's source mentions."""
    base = Path(tether.__file__).parent if package_dir is None else package_dir
    names: set[str] = set()
    for path in sorted(base.rglob("*.py")):
        names.update(_ENV_NAME.findall(path.read_text(encoding="utf-8")))
    return names - _ENV_IGNORED


def _environment(names: set[str]) -> list[str]:
    out = [".SH ENVIRONMENT"]
    documented: set[str] = set()
    for variables, meaning in ENVIRONMENT:
        documented.update(variables)
        present = [v for v in variables if v in names]
        if present:
            out += [".TP", ", ".join(f"\\fB{_escape(v)}\\fR" for v in present), _inline(meaning)]
    for name in sorted(names - documented):
        # Not yet described in ENVIRONMENT (tests/docs/test_manpages.py says so).
        out += [".TP", f"\\fB{_escape(name)}\\fR", "See the command pages."]
    return out


def _files() -> list[str]:
    from tether.config import SYSTEM_CONFIG_FILE

    entries = (
        (SYSTEM_CONFIG_FILE, "The system configuration file; see tether.toml(5)."),
        ("~/.config/tether/tether.toml",
         "The user's configuration file ($XDG_CONFIG_HOME/tether/tether.toml when "
         "XDG_CONFIG_HOME is set)."),
        ("/run/tether/",
         "root's journal of live jobs: one JSON record per job, written before its first "
         "process runs and removed once its tree is proven empty (tether ps, tether reap)."),
        ("$XDG_RUNTIME_DIR/tether/, /tmp/tether-UID/",
         "An unprivileged user's journal ($TETHER_RUNTIME_DIR overrides every default)."),
    )  # fmt: skip
    out = [".SH FILES"]
    for path, meaning in entries:
        out += [".TP", f"\\fI{_escape(path)}\\fR", _inline(meaning)]
    return out


def tether_page(root: click.Group, root_ctx: click.Context, date: str) -> Page:
    """tether(1): the command list, global options, environment, files, exit status."""
    commands = list(_commands(root, root_ctx))
    out = _header("tether", 1, _summary(root), date)
    out += _synopsis("tether", root, root_ctx)
    out += [".SH DESCRIPTION", *_render(_paragraphs(root.help or ""))]
    out += _render(
        _paragraphs(
            "tether run starts a command on a tether: whatever it starts (children, "
            "double-forked daemons, processes that left its session or process group) "
            "is tracked, and when the command ends, times out or is cancelled, all of it "
            "is terminated, politely first (a policy such as TERM,10s,KILL), then by "
            "force, with a report of what was found and how each process ended.\n\n"
            "Each command has its own page and its own --help."
        )
    )
    out.append(".SH COMMANDS")
    for name, command in commands:
        out += [
            ".TP",
            f"\\fBtether\\-{_escape(name)}\\fR({_section(name)})",
            _line(_inline(command.get_short_help_str(limit=200))),
        ]
    out += [".SH OPTIONS", *_render_options(root.get_params(root_ctx), root_ctx)]
    out += _environment(environment_names())
    out += _files()
    out += [
        ".SH EXIT STATUS",
        ".PP",
        "A usage error (an unknown option, a missing argument) exits with status 2,",
        "except for \\fBtether run\\fR, which exits with 125 as",
        "\\fBtimeout\\fR(1) does. Each command's page lists its own statuses:",
    ]
    for name, command in commands:
        status, _ = parse_epilog(command.epilog)
        if status is None:
            continue
        out += [f".SS {_quoted(f'tether {name}')}", *_render_exit_status(status)]
    refs = [(f"tether-{n}", _section(n)) for n, _ in commands]
    out += _see_also([*refs, ("tether.toml", 5), ("timeout", 1), ("kill", 1), ("cgroups", 7)])
    return Page("tether", 1, "\n".join(out) + "\n")


def config_page(date: str) -> Page:
    """tether.toml(5) from :data:`tether.config.SETTINGS`."""
    from tether.config import CONFIG_ENV_VAR, POLICY_MODIFIERS, SETTINGS, SYSTEM_CONFIG_FILE

    out = _header("tether.toml", 5, "tether configuration file", date)
    out += [
        ".SH SYNOPSIS",
        f"\\fI{_escape(SYSTEM_CONFIG_FILE)}\\fR",
        ".br",
        "\\fI$XDG_CONFIG_HOME/tether/tether.toml\\fR, else \\fI~/.config/tether/tether.toml\\fR",
        ".br",
        f"\\fI${_escape(CONFIG_ENV_VAR)}\\fR",
        ".SH DESCRIPTION",
    ]
    out += _render(
        _paragraphs(
            "tether reads TOML files, each overriding the ones before it key by key: "
            f"{SYSTEM_CONFIG_FILE} (the machine's settings), then "
            "$XDG_CONFIG_HOME/tether/tether.toml, or ~/.config/tether/tether.toml when "
            "XDG_CONFIG_HOME is unset or not an absolute path (each skipped if missing), "
            f"then the file named by {CONFIG_ENV_VAR}, which must exist (an empty "
            f"{CONFIG_ENV_VAR}= counts as unset). Command-line flags override every file.\n\n"
            "`tether config` prints the effective configuration, each value with where it "
            "came from (default, FILE:LINE, or a flag); its output is itself a valid "
            "tether.toml. `tether config KEY` prints one value.\n\n"
            "Validation is strict, because a typo must not silently fall back to a "
            "default on a machine whose job is killing processes: unknown tables, unknown "
            "keys, values of the wrong type and values that do not parse are errors (see "
            "DIAGNOSTICS). A bad value in a lower file is an error even if a higher file "
            "sets the same key."
        )
    )
    out += [".SS Values"]
    out += _render(
        _paragraphs(
            'Durations: a string as tether run takes it ("250ms", "10s", "2m", "1.5h", '
            'systemd-style "1min 30s") or a number of seconds (10, 0.5).\n\n'
            'Signals: "TERM", "SIGTERM", "sigterm" or a number (15).\n\n'
            "Policies: a comma-separated sequence of signals and grace periods, as --policy "
            'takes it: "TERM,10s,KILL", "INT,2s,TERM,10s,KILL".\n\n'
            'Unset: settings whose default is "as the policy says" take "" to unset a value '
            'an earlier file set; run.timeout takes 0 or "none" (as in timeout(1), 0 '
            "disables it)."
        )
    )
    out.append(".SH SETTINGS")
    table = None
    for spec in SETTINGS:
        t, _, key = spec.key.partition(".")
        if t != table:
            table = t
            out += [f".SS {_quoted(f'[{t}]')}", ".PP", _inline(_TABLES.get(t, ""))]
        default = spec.toml(spec.default)
        facts = [f"Type: {_KINDS[spec.kind]}.", f"Default: {default}."]
        if spec.flag:
            facts.append(f"Flag: {spec.flag}.")
        out += [
            ".TP",
            f"\\fB{_escape(key)}\\fR = \\fI{_escape(default)}\\fR",
            # As written: a help may start with a value ("auto, or a list...").
            _line(_inline(spec.help + ".")),
            ".br",
            _line(_inline(" ".join(facts))),
        ]
    modifiers = ", ".join(m.partition(".")[2] for m in POLICY_MODIFIERS)
    out.append('.SS "How the policy is put together"')
    out += _render(
        _paragraphs(
            "The policy tether run and tether kill apply starts from termination.policy; "
            "tree_signal replaces its first signal, grace the wait after its first signal "
            "(an error if the policy has one signal: use final_wait), final_wait the wait "
            "after its last signal; leader_signal, tree_delay and the kill script apply to "
            "the first step. `tether config` prints the result as the effective termination "
            f"policy.\n\nA policy set at a higher level replaces the modifiers ({modifiers}) "
            'of lower levels: with grace = "30s" in the system file, '
            "`tether run --policy KILL` runs exactly KILL.\n\n"
            "There is no kill_tree setting: nothing a job started may outlive it, so the "
            "whole tree is always terminated. To let a leader stop its own workers first, "
            "set tree_delay."
        )
    )
    out += [".SH FILES"]
    for path, meaning in (
        (SYSTEM_CONFIG_FILE, "The system file."),
        ("~/.config/tether/tether.toml", "The user's file ($XDG_CONFIG_HOME/tether/tether.toml)."),
    ):
        out += [".TP", f"\\fI{_escape(path)}\\fR", meaning]
    out += [
        ".SH ENVIRONMENT",
        ".TP",
        f"\\fB{_escape(CONFIG_ENV_VAR)}\\fR",
        "A file read last, overriding the others; it must exist.",
        ".TP",
        "\\fBXDG_CONFIG_HOME\\fR, \\fBHOME\\fR",
        "Where the user's file is.",
        ".SH DIAGNOSTICS",
    ]
    out += _render(
        _paragraphs(
            "Errors are one line, FILE:LINE: message, e.g.\n\n"
            "\b\n"
            "tether: /etc/tether/tether.toml:7: unknown setting run.trakers "
            "(did you mean trackers?) (in [run]: timeout, trackers, wait_leftovers)\n\n"
            "`tether config` then exits with status 2; a command that reads the "
            "configuration treats it as bad input (tether run: 125, as timeout(1) does)."
        )
    )
    out.append(".SH EXAMPLES")
    for purpose, text in TOML_EXAMPLES:
        out += [".PP", _line(_inline(purpose)), ".PP", ".RS 4", ".nf"]
        out += [_line(_escape(ln)) if ln else ".sp" for ln in text.rstrip("\n").splitlines()]
        out += [".fi", ".RE"]
    out += _see_also([("tether", 1), ("tether-config", 1), ("tether-run", 1), ("tether-prune", 8)])
    return Page("tether.toml", 5, "\n".join(out) + "\n")


def generate(env: Mapping[str, str] | None = None) -> list[Page]:
    """Every page, from the click commands as they are now imported."""
    from tether.cli import cli

    date = man_date(env)
    root_ctx = _context(cli, "tether", None)
    pages = [tether_page(cli, root_ctx, date)]
    for name, command in _commands(cli, root_ctx):
        pages.append(command_page(cli, name, command, root_ctx, date))
    pages.append(config_page(date))
    return pages


def write_pages(directory: str | Path, pages: Sequence[Page]) -> list[Path]:
    """Write ``pages`` into ``directory``; remove pages of commands that are gone."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for page in pages:
        path = out / page.filename
        path.write_text(page.text, encoding="ascii")
        written.append(path)
    keep = {p.filename for p in pages}
    for old in out.glob("tether*.[158]"):
        if old.name not in keep:
            old.unlink()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 tools/manpage.py", description="Write tether's man pages."
    )
    parser.add_argument("--output", "-o", default="man", help="directory (default: man)")
    args = parser.parse_args(argv)
    for path in write_pages(args.output, generate()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
