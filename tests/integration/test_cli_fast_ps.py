"""``tether ps``'s fast path (issue 15: ``tether ps`` of 1000 processes within
pstree): ``tether ps [--json] [-a|--all] [PID|JOB_ID]`` runs without
importing click (click alone is ~20-35 ms of a ~100 ms command).

As for ``run`` (test_cli_fast_run.py), the shortcut is only as good as its
agreement with click: every argv the fast parser accepts, click parses to the
same parameters; whatever it does not understand goes to click; and both
paths print the same and exit alike.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_cli_fast_run import both_paths, both_paths_into_a_closed_pipe, options_read_only_from_argv
from test_cli_imports import imported_after

from helpers import wait_for, wait_for_exec
from tether.cli import cli
from tether.cli.ps import FAST_FLAGS, parse_fast

PS = cli.get_command(click.Context(cli), "ps")
assert PS is not None

TOKENS = [
    *FAST_FLAGS, "-h", "--help", "--", "-", "-aj", "--json=1", "--jso", "--bogus", "-x",
    "1", "42", "", " 7", "abc123", "1 2", "²", "-1",
]  # fmt: skip


def click_params(args: list[str]) -> dict[str, object]:
    parent = cli.make_context("tether", ["ps"], resilient_parsing=True)
    return dict(PS.make_context("ps", list(args), parent=parent).params)


@given(st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=5))
@example(["--json", "1", "--all"])
@example(["-a", "-a", "1"])  # a flag given twice is still the flag
@example([""])  # an empty operand: click passes it on, and so does the fast path
@settings(max_examples=400, deadline=None)
def test_the_fast_parser_agrees_with_click(args: list[str]) -> None:
    fast = parse_fast(args)
    if fast is None:
        return  # click parses it (or says what is wrong)
    pid, as_json, show_all = fast
    assert click_params(args) == {"pid": pid, "as_json": as_json, "show_all": show_all}


def test_click_declares_nothing_the_fast_parser_would_miss() -> None:
    options_read_only_from_argv(PS, FAST_FLAGS)
    names = {n for p in PS.params if isinstance(p, click.Option) for n in p.opts}
    assert names - {"--help"} == set(FAST_FLAGS)


def test_the_fast_parser_reads_the_common_forms_and_declines_the_rest() -> None:
    assert parse_fast([]) == (None, False, False)
    assert parse_fast(["123"]) == ("123", False, False)
    assert parse_fast(["--json", "123"]) == ("123", True, False)
    assert parse_fast(["123", "--all"]) == ("123", False, True)
    assert parse_fast(["-a", "--json"]) == (None, True, True)
    for declined in (["--help"], ["-h"], ["--", "1"], ["-aj"], ["1", "2"], ["--json=1"], ["-1"]):
        assert parse_fast(declined) is None, declined


def test_a_common_ps_imports_no_click() -> None:
    run = "import contextlib\nfrom tether.cli import main\nwith contextlib.suppress(SystemExit):\n"
    fast = imported_after(run + f"    main(['ps', '--json', '{os.getpid()}'])\n")
    assert "tether.cli.ps" in fast and "tether.membership" in fast
    assert "click" not in fast
    assert "click" in imported_after(run + "    main(['ps', '--help'])\n")


@pytest.fixture
def small_tree() -> Iterator[int]:
    """A sleeping parent with two sleeping children: pid of the parent."""
    parent = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], stdin=subprocess.DEVNULL)
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    try:
        wait_for(lambda: len(children.read_text().split()) == 2, what="the two children")
        for child in children.read_text().split():
            # Both paths must read the same command lines: not one mid-exec.
            wait_for_exec(int(child), "sleep")
        yield parent.pid
    finally:
        for child in children.read_text().split():
            os.kill(int(child), 9)  # our own shell's children, not yet reaped by it
        parent.kill()
        parent.wait(timeout=10)


def _both(args: list[str], tmp_path: Path) -> list[tuple[int, str, str]]:
    env = {**os.environ, "TETHER_RUNTIME_DIR": str(tmp_path / "journal")}
    return both_paths(args, cwd=tmp_path, env=env, timeout=60)


@pytest.mark.parametrize(
    "args",
    [["{tree}"], ["--json", "{tree}"], ["--all", "{tree}"], [], ["--json"],
     ["no-such-job"], ["{tree}", "--json", "-a"]],
)  # fmt: skip
def test_fast_and_click_paths_print_alike(args: list[str], small_tree: int, tmp_path: Path) -> None:
    """Same status, stdout and stderr: a tree, its JSON, the (empty) journal, bad input."""
    args = [a.format(tree=small_tree) for a in args]
    fast, slow = _both(["ps", *args], tmp_path)
    assert fast == slow
    if str(small_tree) in args and "--json" not in args:
        rows = fast[1].splitlines()
        assert fast[0] == 0 and sum(r.endswith(" sleep 60") for r in rows) == 2, fast


@pytest.mark.parametrize("args", [["{tree}"], [], ["--json"]])
def test_fast_and_click_paths_end_alike_on_a_closed_stdout(
    args: list[str], small_tree: int, tmp_path: Path
) -> None:
    """Into a pipe whose reader is gone: status 1 and nothing said, as click's
    main does for an EPIPE. Buffered, as stdout into a pipe is (the suite may
    run with PYTHONUNBUFFERED, which writes through)."""
    args = [a.format(tree=small_tree) for a in args]
    env = {**os.environ, "TETHER_RUNTIME_DIR": str(tmp_path / "journal")}
    statuses = both_paths_into_a_closed_pipe(["ps", *args], env)
    assert statuses[0] == statuses[1] == (1, ""), statuses
