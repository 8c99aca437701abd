"""The man pages under man/ are the ones tools/manpage.py generates, and render cleanly.

tools/ is on the tests' path (pyproject.toml): the generator is a build tool,
outside the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import click
import pytest

import manpage
from tether.config import SETTINGS, load_config

MAN_DIR = Path(__file__).resolve().parent.parent.parent / "man"
REGENERATE = "python3 tools/manpage.py --output man/"
EXPECTED = {
    "tether.1", "tether-run.1", "tether-kill.1", "tether-ps.1", "tether-config.1",
    "tether-cancel.1", "tether-completion.1", "tether-schema.1", "tether-prune.8", "tether-reap.8",
    "tether-epilog.8", "tether.toml.5",
}  # fmt: skip

needs_groff = pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
needs_man = pytest.mark.skipif(shutil.which("man") is None, reason="needs man (man-db)")


@pytest.fixture(scope="module")
def pages() -> dict[str, manpage.Page]:
    # No SOURCE_DATE_EPOCH: the committed pages carry RELEASE_DATE.
    return {p.filename: p for p in manpage.generate(env={})}


def _commands() -> dict[str, click.Command]:
    from tether.cli import cli

    ctx = click.Context(cli, info_name="tether")
    out = {}
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        out[name] = command
    return out


def render(path: Path, width: int = 200) -> str:
    """``man -l`` output as a reader sees it, dashes as ASCII."""
    env = {**os.environ, "MANWIDTH": str(width), "MANPAGER": "cat", "PAGER": "cat"}
    env.pop("MAN_KEEP_FORMATTING", None)
    done = subprocess.run(
        ["man", "-l", str(path)], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # Some groff setups print \- as U+2212 and - as U+2010.
    return done.stdout.replace("\u2212", "-").replace("\u2010", "-")


def groff_warnings(path: Path) -> str:
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    return f"rc={done.returncode} {done.stderr}" if done.returncode or done.stderr else ""


def test_every_command_has_a_page(pages: dict[str, manpage.Page]) -> None:
    names = {f"tether-{n}" for n in _commands()}
    assert names <= {p.name for p in pages.values()}
    assert set(pages) == EXPECTED


def test_committed_pages_are_the_generated_ones(pages: dict[str, manpage.Page]) -> None:
    committed = {p.name for p in MAN_DIR.glob("tether*.[158]")}
    assert committed == set(pages), f"man/ is stale: run `{REGENERATE}`"
    stale = [n for n, p in pages.items() if (MAN_DIR / n).read_text() != p.text]
    assert not stale, f"man/{', man/'.join(stale)} out of date: run `{REGENERATE}`"


def test_generation_is_deterministic() -> None:
    first = [(p.filename, p.text) for p in manpage.generate(env={})]
    assert first == [(p.filename, p.text) for p in manpage.generate(env={})]
    assert manpage.man_date({"SOURCE_DATE_EPOCH": "86400"}) == "1970-01-02"
    assert manpage.man_date({}) == manpage.RELEASE_DATE
    dated = manpage.generate(env={"SOURCE_DATE_EPOCH": "86400"})
    assert all('"1970\\-01\\-02"' in p.text.splitlines()[1] for p in dated)


def test_pages_are_ascii_roff_without_stray_requests(pages: dict[str, manpage.Page]) -> None:
    for name, page in pages.items():
        assert page.text.isascii(), name
        for line in page.text.splitlines():
            # Every request is a known man(7) macro or a roff basic; never text
            # that happened to start with a dot.
            if line.startswith((".", "'")):
                word = line[1:].split(" ", 1)[0]
                assert word in {
                    "TH", "SH", "SS", "PP", "TP", "RS", "RE", "nf", "fi", "br", "sp",
                    "nh", "ad", "\\\"",
                }, (name, line)  # fmt: skip


@needs_groff
def test_groff_renders_every_page_without_warnings() -> None:
    problems = {p.name: groff_warnings(p) for p in sorted(MAN_DIR.glob("tether*.[158]"))}
    assert {n: w for n, w in problems.items() if w} == {}


@needs_man
def test_each_page_shows_every_option_of_its_command() -> None:
    for name, command in _commands().items():
        (path,) = MAN_DIR.glob(f"tether-{name}.[18]")
        text = render(path)
        words = set(text.replace(",", " ").split())
        # Hidden options (the completion script's --complete) are not the user's.
        opts = [
            o for p in command.params if isinstance(p, click.Option) and not p.hidden
            for o in p.opts
        ]  # fmt: skip
        missing = [o for o in [*opts, "--help"] if o not in words]
        assert not missing, f"{path.name} lacks {missing}"
        assert "EXIT STATUS" in text and "SYNOPSIS" in text and f"tether {name}" in text


@needs_man
def test_tether_page_lists_commands_environment_files() -> None:
    text = render(MAN_DIR / "tether.1")
    for name in _commands():
        assert f"tether-{name}(" in text
    for var in ("TETHER_CONFIG", "TETHER_RUNTIME_DIR", "TETHER_JOB_ID"):
        assert var in text
    for path in ("/etc/tether/tether.toml", "~/.config/tether/tether.toml", "/run/tether/"):
        assert path in text
    assert "--version" in text


def test_every_environment_variable_in_the_source_is_described() -> None:
    described = {v for names, _ in manpage.ENVIRONMENT for v in names}
    undescribed = manpage.environment_names() - described
    assert not undescribed, f"describe {sorted(undescribed)} in tools/manpage.py ENVIRONMENT"
    assert {"TETHER_CONFIG", "TETHER_RUNTIME_DIR", "TETHER_JOB_ID"} <= manpage.environment_names()


@needs_man
def test_config_page_has_every_setting_and_working_examples(tmp_path: Path) -> None:
    text = render(MAN_DIR / "tether.toml.5")
    for spec in SETTINGS:
        table, _, key = spec.key.partition(".")
        assert f"[{table}]" in text and f"{key} = {spec.toml(spec.default)}" in text, spec.key
    for i, (_purpose, toml) in enumerate(manpage.TOML_EXAMPLES):
        assert toml.splitlines()[1] in text
        path = tmp_path / f"example{i}.toml"
        path.write_text(toml)
        config = load_config({"TETHER_CONFIG": str(path)}, system_file=None)
        assert any(s.source.kind == "file" for s in config.items())


# -- the parts, on made-up input ------------------------------------------------------


def test_exit_status_block_with_continuation_lines() -> None:
    status, notes = manpage.parse_epilog(
        "Some note.\n\n\b\nEXIT STATUS (drains a node):\n  0  done\n  2  bad input,\n"
        "     or worse\n  128+N  killed by signal N\n"
    )
    assert status is not None
    assert status.intro == "drains a node"
    assert status.codes == (("0", "done"), ("2", "bad input, or worse"),
                            ("128+N", "killed by signal N"))  # fmt: skip
    assert [p.lines for p in notes] == [("Some note.",)]


def test_one_line_exit_status_degrades_to_codes() -> None:
    status, notes = manpage.parse_epilog(
        "EXIT STATUS: 124 timed out; 128+N killed by signal N; otherwise its own status."
    )
    assert status is not None and not notes
    assert status.codes == (("124", "timed out"), ("128+N", "killed by signal N"))
    assert status.rest == "otherwise its own status."
    assert manpage.parse_epilog("Just a note.")[0] is None


@needs_groff
@needs_man
def test_escaping_survives_groff(tmp_path: Path) -> None:
    @click.command(
        "weird",
        epilog="\b\nEXIT STATUS:\n  0  fine\n\n.starts with a dot\n'starts with a quote",
    )
    @click.option("--dry-run-now", is_flag=True, help="A back\\slash, \u2264 and \u2014 here.")
    def weird(dry_run_now: bool) -> None:
        """.TH not a request

        'also not one; -x and --y-z are options.
        """

    group = click.Group("tether", commands={"weird": weird})
    root_ctx = click.Context(group, info_name="tether")
    page = manpage.command_page(group, "weird", weird, root_ctx, "2000-01-01")
    path = tmp_path / page.filename
    path.write_text(page.text)
    assert groff_warnings(path) == ""
    text = render(path)
    for expected in (".TH not a request", "'also not one; -x and --y-z are options.",
                     ".starts with a dot", "'starts with a quote", "back\\slash",
                     "\u2264 and \u2014", "--dry-run-now"):  # fmt: skip
        assert expected in text, expected
