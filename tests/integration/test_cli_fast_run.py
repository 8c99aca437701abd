"""``tether run``'s fast path (issue 15): the common form is parsed without
click (:func:`tether.cli.run.parse_fast`) and the entry point exits with
``os._exit`` once what finalisation would show is done.

The shortcut is only as good as its agreement with click: every argv the
fast parser accepts, click parses to the same parameters; whatever it does
not understand goes to click. And ``os._exit`` keeps its guards: atexit
handlers run, buffered stdout is flushed, other threads are waited for.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_cli_imports import imported_after

from helpers import tether_cmd
from tether.cli import cli
from tether.cli._common import echo_err, echo_out, legacy_json_args
from tether.cli.run import FAST_OPTIONS, FAST_REMOTE_OPTIONS, parse_fast

RUN = cli.get_command(click.Context(cli), "run")
assert RUN is not None

# Names click knows for run (every option, the remote ones too) and a few it does not.
CLICK_NAMES = sorted({n for p in RUN.params if isinstance(p, click.Option) for n in p.opts})
OPTION_TOKENS = [*CLICK_NAMES, "-h", "--help", "--bogus", "-qv", "-vq", "-x", "---", "--json="]
FAST_NAMES = [*FAST_OPTIONS, *FAST_REMOTE_OPTIONS]
SAMPLE_VALUES = (
    "5s TERM KILL - -- x.json precede replace Precede 0 12 -1 1_0 ² = -q --timeout auto "
    "python sh Sh 01 h1 node[1-3] ConnectTimeout=5"
)
VALUES = st.one_of(
    st.sampled_from([*SAMPLE_VALUES.split(), "", " 7", "cgroup,session"]), st.text(max_size=6)
)


@st.composite
def run_argv(draw: st.DrawFn) -> list[str]:
    """run's arguments: options (known, unknown, --opt=value, -sVALUE), values, then a command."""
    args: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        # Half from run's own options: most argv then reach the comparison.
        name = draw(st.one_of(st.sampled_from(FAST_NAMES), st.sampled_from(OPTION_TOKENS)))
        form = draw(st.sampled_from(["plain", "equals", "attached"]))
        value = draw(VALUES)
        if form == "equals" and name.startswith("--"):
            args.append(f"{name}={value}")
        elif form == "attached" and len(name) == 2:
            args.append(name + value)
        else:
            args.append(name)
            if draw(st.booleans()):
                args.append(value)
    if draw(st.booleans()):
        args.append("--")
    args += draw(st.lists(st.sampled_from(["true", "-", "--", "-q", "x.json", "sh"]), max_size=3))
    return args


def options_read_only_from_argv(command: click.Command, names: Iterable[str]) -> None:
    """The agreement tests compare parsed values in this environment; what
    click would read from elsewhere, or do on parsing, a fast parser does
    not: an option added with envvar=, a callback, a count or a
    --flag/--no-flag pair would pass them and still be read differently."""
    wanted = set(names)
    for p in command.params:
        if isinstance(p, click.Option) and wanted & set(p.opts):
            assert p.envvar is None and p.callback is None and not p.count, p.name
            assert not p.secondary_opts, p.name
    assert command.context_settings.get("auto_envvar_prefix") is None
    assert command.context_settings.get("default_map") is None


def click_params(args: list[str]) -> dict[str, object]:
    parent = cli.make_context("tether", ["run"], resilient_parsing=True)
    return dict(RUN.make_context("run", list(args), parent=parent).params)


@given(run_argv())
@example(["--", "true"])
@example(["-sINT", "-k", "2s", "--json", "--", "x"])
@example(["--timeout", "--", "sh"])
@example(["--json", "x.json", "true"])  # the deprecated --json FILE: click rewrites it
@example(["-q", "-s", "-", "true"])
@example(["-s", "INT", "--signal=HUP", "-q", "true"])  # the last one wins
@example(["--tag-gid", "1_0", "true"])  # int() takes it; the fast path leaves it to click
@example(["--tag-gid", "²", "true"])  # a digit to str.isdigit(), not to int()
@example(["--foreground", "-", "--json==5s"])  # "-" starts the job's argv: its --json=X is its own
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_fast_parser_agrees_with_click(args: list[str]) -> None:
    fast = parse_fast(args)
    if fast is None:
        return  # click parses it (or says what is wrong)
    # Accepted: click must accept the same argv, as given (no deprecated
    # spelling rewritten), to the same parameters, the remote ones too.
    assert legacy_json_args(RUN, list(args)) == args
    assert click_params(args) == fast


def test_the_fast_parser_reads_the_common_forms() -> None:
    """Not a parser that declines everything: the usual forms are read."""
    cases = [
        ["--", "true"],
        ["true", "-q"],
        ["-q", "--timeout", "5s", "sleep", "1"],
        ["-sINT", "-k", "2s", "--json", "--", "make", "-j2"],
        ["--policy=TERM,1s,KILL", "--tag-gid", "7", "-v", "--", "x"],
        ["--json-file", "r.json", "--fail-on-leftovers", "--wait-leftovers", "true"],
        ["--host", "h1", "--", "true"],
        ["-w", "node[1-3]", "-x", "node2", "-f", "2", "-o", "A=1", "-oB=2", "-N", "-b", "true"],
        ["--hosts=a,b", "--remote-engine", "sh", "--cancel-timeout", "2s", "-n", "-l", "u", "x"],
    ]
    for args in cases:
        fast = parse_fast(args)
        assert fast is not None, args
        assert click_params(args) == fast
    assert set(FAST_NAMES) <= set(CLICK_NAMES)
    assert {p.name for p in RUN.params} == set(parse_fast(["true"]) or ())
    options_read_only_from_argv(RUN, FAST_NAMES)


@pytest.mark.parametrize(
    "args",
    [["--help"], ["-h"], [], ["--"], ["--timeout"], ["-qv", "true"], ["--quiet=1", "true"],
     ["--kill-script-mode", "later", "true"], ["--tag-gid", "-1", "true"], ["-f", "0", "true"],
     ["--fanout", " 7", "true"], ["--remote-engine", "bash", "true"], ["-Nb", "true"],
     ["--json", "-", "true"], ["--bogus", "true"]],
)  # fmt: skip
def test_what_the_fast_parser_declines(args: list[str]) -> None:
    assert parse_fast(args) is None


def test_a_common_run_imports_neither_click_nor_the_keeper() -> None:
    run = "import contextlib\nfrom tether.cli import main\nwith contextlib.suppress(SystemExit):\n"
    fast = imported_after(run + "    main(['run', '-q', '--timeout', '30s', '--', 'true'])\n")
    assert "tether.cli.run" in fast and "tether.job" in fast
    assert "click" not in fast
    # Nor what only other jobs need: the job keeper (sockets, pickle), the wire form's base64.
    assert not {"tether.keeper", "socket", "pickle", "base64"} & fast
    # Nor dataclasses (and its inspect): records are tether._records' (issue 15).
    assert not {"dataclasses", "inspect"} & fast
    helped = imported_after(run + "    main(['run', '--help'])\n")
    assert "click" in helped


# Runs main() with the fast path on (fast) or off (click), with argv.
_BOTH = (
    "import sys, tether.cli as c\n"
    "if sys.argv[1] == 'click':\n"
    "    c._fast_path = lambda args: False\n"
    "c.main(sys.argv[2:])\n"
)


def both_paths(
    args: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: int = subprocess.PIPE,
    timeout: float = 120,
) -> list[tuple[int, str, str]]:
    """``main(args)`` with the fast path on, then forced through click:
    (status, stdout, stderr) of each. ``env``: the whole environment."""
    out = []
    for mode in ("fast", "click"):
        done = subprocess.run(
            [sys.executable, "-c", _BOTH, mode, *args], stdout=stdout, stderr=subprocess.PIPE,
            text=True, timeout=timeout, check=False, cwd=cwd, env=env,
        )  # fmt: skip
        out.append((done.returncode, done.stdout or "", done.stderr))
    return out


def both_paths_into_a_closed_pipe(
    args: list[str], env: dict[str, str] | None = None
) -> list[tuple[int, str]]:
    """(status, stderr) of :func:`both_paths` with stdout a pipe whose reader is
    gone before anything is written. Buffered, as stdout into a pipe is: the
    suite may run with PYTHONUNBUFFERED, which writes through."""
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONUNBUFFERED"}
    r, w = os.pipe()
    os.close(r)
    try:
        return [(rc, err) for rc, _, err in both_paths(args, env=env, stdout=w)]
    finally:
        os.close(w)


def _both(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> list[tuple[int, str, str]]:
    out = []
    for rc, out_text, err_text in both_paths(
        args, cwd=tmp_path, env={**os.environ, **(env or {})}, timeout=60
    ):
        done = subprocess.CompletedProcess(args, rc, out_text, err_text)
        ids = re.compile(r"\b[0-9a-f]{24}\b|pid \d+|\d+\.\d+s|\(pid \d+\)")
        stdout = ids.sub("X", done.stdout)
        if stdout.startswith("{"):  # a report: its shape (members and times vary)
            report = json.loads(done.stdout)
            stdout = json.dumps([sorted(report), report["complete"], report["reason"]])
        out.append((done.returncode, stdout, ids.sub("X", done.stderr)))
    return out


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--timeout", "bogus", "--", "true"],
        ["run", "--policy", "TERM,x", "--", "true"],
        ["run", "-s", "TERM", "--policy", "KILL", "--", "true"],
        ["run", "--kill-script", " ", "--", "true"],
        ["run", "--trackers", "nope", "--", "true"],
        ["run", "--json", "--json-file", "r.json", "--", "true"],
        ["run", "-s", "KILL", "-k", "1s", "--", "true"],
        ["run", "--", "sh", "-c", "exit 3"],
        ["run", "--", "/nonexistent/command"],
        ["run", "--", "/"],
        ["run", "--timeout", "0.1s", "--preserve-status", "-q", "--", "sh", "-c", "sleep 30"],
        ["run", "--json", "--", "sh", "-c", "echo out; exit 4"],
    ],
)
def test_fast_and_click_paths_end_alike(args: list[str], tmp_path: Path) -> None:
    """Same status, stdout and stderr (job ids, pids and times aside)."""
    fast, slow = _both(args, tmp_path)
    assert fast == slow


@pytest.mark.parametrize(
    "env",
    [{"TETHER_LOG_LEVEL": "loud"}, {"TETHER_LOG_LEVEL": "info", "TETHER_LOG_FORMAT": "json"}],
)
def test_fast_and_click_paths_log_alike(env: dict[str, str], tmp_path: Path) -> None:
    """The group's logging settings (TETHER_LOG_*) apply on the fast path too."""
    fast, slow = _both(["run", "--", "true"], tmp_path, env)
    strip = re.compile(r'"ts": "[^"]*"|\d{4}-\d\d-\d\dT[0-9:.]*Z|tether\[\d+\]|=\d+|"pid": \d+')
    assert (fast[0], strip.sub("", fast[2])) == (slow[0], strip.sub("", slow[2]))


def test_tether_run_exit_runs_atexit_handlers_and_flushes_stdout() -> None:
    """os._exit skips finalisation, not what it would show: an atexit handler
    runs, and buffered stdout (a pipe, PYTHONUNBUFFERED unset) is written."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stdout.write('atexit ran\\n'))\n"
        "sys.stdout.write('buffered before\\n')\n"
        "sys.argv = ['tether', 'run', '-q', '--', 'sh', '-c', 'exit 5']\n"
        "from tether.cli import main\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 5, done.stderr
    assert done.stdout == "buffered before\natexit ran\n"


def test_tether_run_exit_waits_for_other_threads() -> None:
    """With another (non-daemon) thread running, the interpreter's own exit
    waits for it: os._exit would cut it off."""
    code = (
        "import sys, threading\n"
        "def after_main():\n"
        "    threading.main_thread().join()\n"
        "    sys.stdout.write('thread finished\\n'); sys.stdout.flush()\n"
        "threading.Thread(target=after_main).start()\n"
        "sys.argv = ['tether', 'run', '-q', '--', 'true']\n"
        "from tether.cli import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, "thread finished\n"), done.stderr


def test_the_entry_point_exits_with_the_commands_status() -> None:
    done = subprocess.run(
        tether_cmd("run", "--", "sh", "-c", "echo out; exit 7"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (7, "out\n"), done.stderr


@given(
    st.text(alphabet=st.sampled_from(["\x1b", "[", "3", "1", ";", "m", "?", "a", " ", "é"])),
    st.sampled_from(["stderr", "stdout"]),
)
@example("\x1b[31mred\x1b[0m", "stderr")
@example("\x1b[31mred\x1b[0m", "stdout")
@settings(max_examples=200, deadline=None)
def test_echo_err_and_echo_out_are_click_echo_on_a_pipe(message: str, stream: str) -> None:
    ours, theirs = io.StringIO(), io.StringIO()
    saved = getattr(sys, stream)
    setattr(sys, stream, ours)
    try:
        (echo_err if stream == "stderr" else echo_out)(message)
    finally:
        setattr(sys, stream, saved)
    click.echo(message, file=theirs)
    assert ours.getvalue() == theirs.getvalue()


def test_version_imports_nothing_the_interpreter_had_not() -> None:
    """`tether --version` (target: python + 10 ms) loads tether.cli and the
    package, not typing, contextlib or collections."""
    probe = (
        "import sys\nbefore = set(sys.modules)\nfrom tether.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    version, added = done.stdout.splitlines()
    assert version.startswith("tether ")
    assert "tether.cli" in added.split()
    assert not {"typing", "contextlib", "collections", "click"} & set(added.split())


def test_fast_and_click_paths_end_alike_on_a_closed_stdout() -> None:
    """--json into a pipe nobody reads: click's main exits 1 on EPIPE; so does the fast path."""
    statuses = both_paths_into_a_closed_pipe(["run", "--json", "--", "true"])
    assert statuses[0] == statuses[1] == (1, "")


def test_no_cyclic_collection_while_tether_run_starts_and_one_while_it_supervises() -> None:
    """Start-up's imports make no cyclic garbage worth ~25 collections; a
    supervision (hours, maybe) collects again, past what start-up froze."""
    code = (
        "import gc, sys\n"
        "import tether.supervise\n"
        "real = tether.supervise.supervise\n"
        "def spy(*args, **kwargs):\n"
        "    young = gc.get_stats()[0]['collections']\n"
        "    seen.extend((gc.isenabled(), young, gc.get_freeze_count()))\n"
        "    return real(*args, **kwargs)\n"
        "tether.supervise.supervise = spy\n"
        "seen = []\n"
        "sys.argv = ['tether', 'run', '-q', '--', 'true']\n"
        "import atexit\n"
        "atexit.register(lambda: print(before, *seen))\n"
        "from tether.cli import main\n"
        "before = gc.get_stats()[0]['collections']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    before, enabled, collections, frozen = done.stdout.split()
    assert enabled == "True"
    assert collections == before
    assert int(frozen) > 1000


def test_a_program_that_calls_main_gets_its_collector_back() -> None:
    code = (
        "import contextlib, gc\n"
        "from tether.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(['--version'])\n"
        "print(gc.isenabled())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "True"
