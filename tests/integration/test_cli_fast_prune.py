"""``tether prune``'s fast path (issue 15: the whole command no slower than a
``ps | awk`` cron script): the common forms of ``tether prune`` run without
importing click (click and its parser are ~20-35 ms of the command).

As for ``run`` and ``ps`` (test_cli_fast_run.py, test_cli_fast_ps.py), the
shortcut is only as good as its agreement with click: every argv the fast
parser accepts, click parses to the same parameters; whatever it does not
understand goes to click; and both paths print the same and exit alike.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_cli_fast_run import both_paths, both_paths_into_a_closed_pipe, options_read_only_from_argv
from test_cli_imports import imported_after

from helpers import is_root, wait_for_exec
from tether.cli import cli
from tether.cli.prune import FAST_OPTIONS, parse_fast

PRUNE = cli.get_command(click.Context(cli), "prune")
assert PRUNE is not None

#: A uid no account and no other test uses: the stray these tests make runs as it.
STRAY_UID = 64123

TOKENS = [
    *FAST_OPTIONS, "-h", "--help", "--", "-", "-vv", "--json=1", "--min-uid=5", "--jso",
    "--bogus", "operand", "5m", "0", "1000", "auto", "none", "slurm", "torque", "bogus", "AUTO",
    "-1", "", " 7", "+7", "1_000", "²", "x", "TERM,1s,KILL", "1" * 30,
]  # fmt: skip


def click_params(args: list[str]) -> dict[str, object]:
    parent = cli.make_context("tether", ["prune"], resilient_parsing=True)
    return dict(PRUNE.make_context("prune", list(args), parent=parent).params)


@given(st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=8))
@example(["--json", "--no-syslog", "--batch", "none", "--min-uid", "1000", "--min-age", "0",
          "--include-ssh", "--sessions-file", "/x"])  # fmt: skip
@example(["--user", "a", "--user", "b", "--exclude-user", "c", "--kill", "-v"])
@example(["--min-uid", "1", "--min-uid", "2"])  # the last one wins
@example(["--batch", "bogus"])  # click refuses it: the fast path must not take it
@example(["--min-uid", "x"])
@example(["--gid", "٣"])  # a digit to str.isdigit and int(), not to an ASCII check
@example(["--policy", ""])
@example(["--older-than"])  # a value missing: click says so
@settings(max_examples=500, deadline=None)
def test_the_fast_parser_agrees_with_click(args: list[str]) -> None:
    fast = parse_fast(args)
    if fast is None:
        return  # click parses it (or says what is wrong)
    assert click_params(args) == fast


def test_the_fast_parser_reads_the_common_forms_and_declines_the_rest() -> None:
    common = parse_fast(["--json", "--min-age", "5m", "--user", "alice", "--user", "7"])
    assert common is not None
    assert common["as_json"] is True and common["min_age"] == "5m"
    assert common["users"] == ("alice", "7") and common["kill"] is False
    assert common["include_ssh"] is None and common["batch"] == "auto"
    assert parse_fast([]) == click_params([])
    for declined in (
        ["--help"], ["-h"], ["--", "--json"], ["-vv"], ["operand"], ["--min-age=5m"],
        ["--min-uid", " 7"], ["--min-uid", "+7"], ["--batch", "AUTO"], ["--policy"],
        ["--policy", "-TERM"], ["--jso"],
    ):  # fmt: skip
        assert parse_fast(declined) is None, declined


def test_a_common_prune_imports_no_click() -> None:
    run = "import contextlib\nfrom tether.cli import main\nwith contextlib.suppress(SystemExit):\n"
    argv = ["prune", "--json", "--no-syslog", "--batch", "none", "--user", str(STRAY_UID)]
    fast = imported_after(run + f"    main({argv!r})\n")
    assert "tether.cli.prune" in fast and "tether.prune.classify" in fast
    assert "click" not in fast
    assert "click" in imported_after(run + "    main(['prune', '--help'])\n")
    assert "click" in imported_after(run + "    main(['prune', '--min-age=5m', '--user', 'x'])\n")


@pytest.fixture
def stray() -> Iterator[int]:
    """A process of STRAY_UID in a session of its own (not tether's, which is
    protected), in no job: a stray for --user STRAY_UID --min-age 0."""
    if not is_root():
        pytest.skip("a process of another uid needs root")
    child = subprocess.Popen(
        ["sleep", "60"], user=STRAY_UID, group=STRAY_UID, extra_groups=[],
        start_new_session=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Both paths must read the same command line: not one mid-exec.
        wait_for_exec(child.pid, "sleep")
        yield child.pid
    finally:
        child.kill()  # our own child, not yet reaped: the pid is still its
        child.wait(timeout=10)


def test_click_declares_nothing_the_fast_parser_would_miss() -> None:
    assert PRUNE is not None
    options_read_only_from_argv(PRUNE, FAST_OPTIONS)
    names = {n for p in PRUNE.params if isinstance(p, click.Option) for n in p.opts}
    assert names - {"--help"} == set(FAST_OPTIONS)
    assert not [p for p in PRUNE.params if isinstance(p, click.Argument)]


def _both(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> list[tuple[int, str, str]]:
    return both_paths(["prune", *args], cwd=tmp_path, env={**os.environ, **(env or {})})


#: Scoped to the stray's uid, logging nothing, whatever the node runs.
SCOPE = ["--user", str(STRAY_UID), "--min-age", "0", "--no-syslog", "--batch", "none",
         "--include-ssh"]  # fmt: skip


def _stable_json(text: str) -> dict[str, object]:
    """The document without what changes between two scans of a busy node:
    how many processes there were and were left alone, and how long it took."""
    doc = json.loads(text)
    for key in ("scanned", "scan_seconds", "exempt"):
        doc.pop(key)
    for row in doc["strays"]:
        row.pop("age")  # seconds, to the millisecond
    assert isinstance(doc, dict)
    return doc


def test_fast_and_click_paths_list_a_stray_alike(stray: int, tmp_path: Path) -> None:
    (fast, slow) = _both(["--json", *SCOPE], tmp_path)
    assert fast[0] == slow[0] == 0 and fast[2] == slow[2] == "", (fast, slow)
    doc = _stable_json(fast[1])
    assert doc == _stable_json(slow[1])
    assert [(s["pid"], s["cmdline"], s["uids"]) for s in doc["strays"]] == [  # type: ignore[index, union-attr]
        (stray, "sleep 60", [STRAY_UID] * 4)
    ]
    # The text listing: the same lines, counts and ages aside, and the
    # node-wide "left alone" line (as "exempt" above: a zombie of another
    # test can come and go between the two scans).
    (fast, slow) = _both(["-v", *SCOPE], tmp_path)
    digits = re.compile(r"\d+")
    assert fast[0] == slow[0] == 0

    def stable(text: str) -> str:
        lines = [line for line in text.splitlines() if not line.startswith("# left alone:")]
        return digits.sub("N", "\n".join(lines))

    assert stable(fast[1]) == stable(slow[1])
    assert any(line.split()[:1] == [str(stray)] and line.endswith("sleep 60")
               for line in fast[1].splitlines()), fast[1]  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["--min-age", "bogus", "--user", str(STRAY_UID)],
        ["--user", "no-such-user-tether-test"],
        ["--min-uid", "0", "--user", str(STRAY_UID)],
        ["--gid", "5", "--older-than", "soon", "--user", str(STRAY_UID)],
        ["--policy", "TERM,x", "--user", str(STRAY_UID)],
        ["--syslog-facility", "loud", "--user", str(STRAY_UID)],
        ["--sessions-file", "/nonexistent/tether-sessions", "--no-syslog", "--batch", "none",
         "--user", str(STRAY_UID)],
        ["--config", "/nonexistent/tether.toml", "--user", str(STRAY_UID)],
        ["--batch", "bogus"],  # declined: click says what is wrong, on both
        ["--json", "--no-syslog", "--batch", "none", "--user", str(STRAY_UID), "--min-age", "0"],
    ],
)  # fmt: skip
def test_fast_and_click_paths_end_alike(args: list[str], tmp_path: Path) -> None:
    """Same status, stdout and stderr: bad input, a job list that cannot be
    read, and a run with no stray (the same JSON, scan figures aside)."""
    fast, slow = _both(args, tmp_path)
    if fast[1].startswith("{"):
        assert (fast[0], _stable_json(fast[1]), fast[2]) == (
            slow[0],
            _stable_json(slow[1]),
            slow[2],
        )
    else:
        assert fast == slow
    assert fast[0] in (0, 2)


def test_a_bad_log_variable_ends_alike(tmp_path: Path) -> None:
    """The group's TETHER_LOG_* check runs on the fast path too."""
    fast, slow = _both(["--user", str(STRAY_UID)], tmp_path, {"TETHER_LOG_LEVEL": "loud"})
    assert fast == slow and fast[0] == 2 and "TETHER_LOG_LEVEL" in fast[2], fast


def test_fast_and_click_paths_end_alike_on_a_closed_stdout() -> None:
    """--json into a pipe nobody reads: click's main exits 1 on EPIPE (click.echo
    flushes inside the command); so does the fast path."""
    statuses = both_paths_into_a_closed_pipe(["prune", "--json", *SCOPE])
    assert statuses[0] == statuses[1] == (1, "")
