"""The examples in README.md and docs/ cannot go stale silently.

Every ```sh block passes ``sh -n`` (bash -n for bash-only syntax), every
```python block compiles, and every ``tether COMMAND --option`` in them names
a command and option the real CLI has. Running them all is not possible here
(Slurm, remote hosts, root-only tags); the README's Python example runs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tether.cli import cli

ROOT = Path(__file__).resolve().parent.parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(lang: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            if m.group(1) in lang:
                line = page.read_text()[: m.start()].count("\n") + 1
                code = m.group(2)
                if m.group(1) == "console":  # "$ command" lines; the rest is output
                    code = "".join(c[2:] + "\n" for c in code.splitlines() if c.startswith("$ "))
                out.append((f"{page.relative_to(ROOT)}:{line}", code))
    return out


SHELL = blocks(("sh", "bash", "console"))
PYTHON = blocks(("python",))


def test_there_are_examples() -> None:
    assert len(SHELL) >= 10 and len(PYTHON) >= 2


@pytest.mark.parametrize(("where", "code"), SHELL, ids=[w for w, _ in SHELL])
def test_shell_example_parses(where: str, code: str) -> None:
    done = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{where}: {done.stderr}"


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[w for w, _ in PYTHON])
def test_python_example_compiles(where: str, code: str) -> None:
    compile(code, where, "exec")


def _tether_lines(code: str) -> list[list[str]]:
    out = []
    for raw in code.replace("\\\n", " ").splitlines():
        line = raw.split(" #")[0].strip()
        for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            if words and words[0] == "tether":
                out.append(words)
    return out


def test_every_tether_option_in_the_examples_exists() -> None:
    ctx = click.Context(cli)
    checked = 0
    problems = []
    for where, code in SHELL:
        for words in _tether_lines(code):
            args = words[1:]
            while args and args[0].startswith("-"):  # the group's own options
                args = args[2:] if args[0].startswith("--log-") and "=" not in args[0] else args[1:]
            if not args:
                continue
            command = cli.get_command(ctx, args[0])
            if command is None:
                problems.append(f"{where}: no command {args[0]!r} in {' '.join(words)}")
                continue
            known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            for word in args[1:]:
                if word == "--":
                    break
                name = word.split("=")[0]
                if name.startswith("-") and len(name) > 1 and name not in known:
                    problems.append(f"{where}: tether {args[0]} has no {name}")
            checked += 1
    assert checked >= 20
    assert not problems, "\n".join(problems)


def test_readme_python_example_runs(tmp_path: Path) -> None:
    """The README's library example, with `make test` and ./launcher.sh
    replaced by commands that exist everywhere."""
    (readme,) = [c for w, c in PYTHON if w.startswith("README.md") and "tether.run(" in c]
    code = readme.replace('["make", "test"]', '["true"]').replace(
        '["./launcher.sh"]', '["sh", "-c", "sleep 300 & wait"]'
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("0 False")
