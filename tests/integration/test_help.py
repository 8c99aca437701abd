"""Every ``--help`` against a golden file, and the EXIT STATUS convention.

The goldens (tests/golden/help/<command>.txt) are the real CLI's output at
COLUMNS=80, so a change to any help text shows up in review. Regenerate
after an intended change with::

    TETHER_REGEN_GOLDEN=1 python3 -m pytest tests/integration/test_help.py

Each epilog ends with a click ``\\b`` block that the man-page generator
parses: ``EXIT STATUS:`` (or ``EXIT STATUS (note):``), then ``  CODE  text``
lines, continuation lines indented further.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from pathlib import Path

import click
import pytest

from helpers import tether_cmd
from tether.cli import cli

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "help"
README = Path(__file__).resolve().parent.parent.parent / "README.md"
REGEN_VAR = "TETHER_REGEN_GOLDEN"
REGEN_HINT = f"{REGEN_VAR}=1 python3 -m pytest tests/integration/test_help.py"
COMMANDS = cli.list_commands(click.Context(cli))
NAMES = ["tether", *COMMANDS]

#: Exit codes each command documents today (the README table agrees for the
#: commands it lists); changing one is an interface change, not a help edit.
CODES = {
    "tether": ["0", "2"],
    "run": ["123", "124", "125", "126", "127", "128+N"],
    "kill": ["0", "1", "2"],
    "ps": ["0", "1", "2"],
    "reap": ["0", "1", "2"],
    "config": ["0", "2"],
    "prune": ["0", "1", "2"],
    "epilog": ["0", "1", "2"],
    "completion": ["0", "2"],
    "cancel": ["0", "1", "2", "125"],
    "schema": ["0", "2"],
}


def render_help(name: str) -> str:
    """``tether [COMMAND] --help`` from the real CLI, at a fixed width."""
    env = {k: v for k, v in os.environ.items() if k not in ("LINES", "TETHER_CONFIG")}
    env["COLUMNS"] = "80"
    args = ["--help"] if name == "tether" else [name, "--help"]
    done = subprocess.run(
        tether_cmd(*args), capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


@pytest.mark.parametrize("name", NAMES)
def test_help_matches_its_golden_file(name: str) -> None:
    text = render_help(name)
    path = GOLDEN / f"{name}.txt"
    if os.environ.get(REGEN_VAR):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"no golden file {path}; create it with: {REGEN_HINT}", pytrace=False)
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=str(path),
                tofile=f"{name} --help",
            )
        )
        pytest.fail(
            f"{name} --help differs from its golden file. If the change is intended, "
            f"regenerate with: {REGEN_HINT}\n{diff}",
            pytrace=False,
        )


def test_every_golden_file_is_a_command() -> None:
    found = sorted(p.stem for p in GOLDEN.glob("*.txt"))
    assert found == sorted(NAMES), f"stale or missing golden files; regenerate with: {REGEN_HINT}"


def exit_status_block(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The help's closing EXIT STATUS block: its header and (code, text) items.

    Fails unless the block ends the help and every line follows the convention.
    """
    lines = text.rstrip("\n").split("\n")
    starts = [i for i, ln in enumerate(lines) if ln.startswith("  EXIT STATUS")]
    assert starts, "no EXIT STATUS block"
    header = lines[starts[-1]]
    assert re.fullmatch(r"  EXIT STATUS( \(.+\))?:", header), header
    items: list[tuple[str, str]] = []
    for ln in lines[starts[-1] + 1 :]:
        item = re.fullmatch(r"    (\d+(?:\+N)?)  (\S.*)", ln)
        if item:
            items.append((item.group(1), item.group(2)))
        else:
            assert items and re.fullmatch(r"     {2,}\S.*", ln), (
                f"not an item or continuation: {ln!r}"
            )
    return header, items


@pytest.mark.parametrize("name", NAMES)
def test_help_ends_with_exit_status_codes(name: str) -> None:
    _header, items = exit_status_block(render_help(name))
    assert [code for code, _ in items] == CODES[name]


def readme_codes() -> dict[str, list[str]]:
    """The README's exit-status table: command -> codes, in order."""
    out = {}
    for row in re.finditer(r"^\| `tether (\w+)` \| (.+) \|$", README.read_text(), re.M):
        pieces = [p.strip() for p in row.group(2).split(";")]
        out[row.group(1)] = [
            m.group(1) for p in pieces if (m := re.match(r"(\d+(?:\+N)?)(?: |$)", p))
        ]
    return out


def test_help_codes_match_the_readme_table() -> None:
    table = readme_codes()
    assert {"run", "kill", "ps", "reap"} <= set(table), table
    for name, codes in table.items():
        assert CODES[name] == codes, name
