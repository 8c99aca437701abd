"""Shell completion in the real shells: `tether completion SHELL`'s script, loaded
into bash (its completion function called with COMP_WORDS/COMP_CWORD, with
and without bash-completion) and fish (`complete -C`).

Where tether has nothing to offer the shell completes files; the job's
command line after `tether run [--]` is completed as a command line of its
own (commands, then that command's completion or files).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with known files, and a `tether` on PATH for the scripts to call."""
    base = tmp_path_factory.mktemp("completion")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "tether"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tether.cli "$@"\n')
    wrapper.chmod(0o755)
    files = base / "files"
    files.mkdir()
    (files / "report.json").write_text("{}")
    (files / "notes.txt").write_text("")
    (files / "run-me.sh").write_text("")
    return base


def env_for(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{workdir / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = str(workdir)
    return env


def completion_script(workdir: Path, shell: str) -> Path:
    """`tether completion SHELL`'s script, in a file."""
    script = workdir / f"tether.{shell}"
    script.write_text(
        subprocess.run(
            ["tether", "completion", shell], env=env_for(workdir), capture_output=True,
            text=True, check=True, timeout=60,
        ).stdout
    )  # fmt: skip
    return script


def bash_complete(workdir: Path, line: str, *, bash_completion: bool = False) -> list[str]:
    """COMPREPLY of tether's completion function for ``line`` (the cursor at its end)."""
    script = completion_script(workdir, "bash").read_text()
    program = (
        (f"source {BASH_COMPLETION}\n" if bash_completion else "")
        + script
        + '\nread -ra COMP_WORDS <<< "$1"\n'
        + '[[ "$1" == *" " ]] && COMP_WORDS+=("")\n'
        + "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMP_LINE=$1; COMP_POINT=${#1}\n"
        + '_tether_completion tether 2>/dev/null\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program, "bash", line],
        env=env_for(workdir), cwd=workdir / "files", capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return sorted(set(filter(None, done.stdout.splitlines())))


def test_bash_completes_commands_and_options(workdir: Path) -> None:
    assert bash_complete(workdir, "tether ru") == ["run"]
    assert bash_complete(workdir, "tether run --tim") == ["--timeout"]


def test_bash_falls_back_to_files_for_paths(workdir: Path) -> None:
    assert bash_complete(workdir, "tether run --json-file re") == ["report.json"]
    assert bash_complete(workdir, "tether kill --json-file ") == [
        "notes.txt", "report.json", "run-me.sh",
    ]  # fmt: skip


def test_bash_completes_the_jobs_command_then_files(workdir: Path) -> None:
    assert "sleep" in bash_complete(workdir, "tether run -- slee")
    # Without --, past tether's options (and their values).
    assert "sleep" in bash_complete(workdir, "tether run --timeout 5s -q slee")
    # The command's arguments: files.
    assert bash_complete(workdir, "tether run -- cat no") == ["notes.txt"]
    # A path where a command goes: files.
    assert bash_complete(workdir, "tether run -- ./ru") == ["./run-me.sh"]
    # An option of tether's is still one of tether's.
    assert bash_complete(workdir, "tether run --quie") == ["--quiet"]


@pytest.mark.skipif(not BASH_COMPLETION.exists(), reason="needs bash-completion")
def test_bash_hands_the_job_to_the_commands_own_completion(workdir: Path) -> None:
    # kill's completion (bash-completion) offers signal names after -s.
    offered = bash_complete(workdir, "tether run -- kill -s TE", bash_completion=True)
    assert "TERM" in offered or "SIGTERM" in offered, offered
    assert "sleep" in bash_complete(workdir, "tether run -- slee", bash_completion=True)


@pytest.mark.skipif(shutil.which("fish") is None, reason="needs fish")
def test_fish(workdir: Path) -> None:
    script = completion_script(workdir, "fish")

    def complete(line: str) -> list[str]:
        done = subprocess.run(
            ["fish", "-c", f"source {script}; complete -C '{line}'"], env=env_for(workdir),
            cwd=workdir / "files", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return sorted({row.split("\t")[0] for row in done.stdout.splitlines()})

    assert complete("tether ru") == ["run"]
    assert complete("tether run --json-file re") == ["report.json"]
    assert "sleep" in complete("tether run -- slee")
    assert complete("tether run -q -- cat no") == ["notes.txt"]
    # fish's own completion for the job's command (ls's options).
    assert "--color" in complete("tether run -- ls --colo")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_script_parses(workdir: Path) -> None:
    # zsh's completion system needs an interactive line editor; the script's
    # syntax, and the words it is given, are checked here.
    script = completion_script(workdir, "zsh")
    done = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    words = subprocess.run(
        ["tether", "completion", "zsh", "--complete"], capture_output=True, text=True,
        env={**env_for(workdir), "COMP_WORDS": "tether run -q -- slee", "COMP_CWORD": "4"},
        check=True, timeout=60,
    ).stdout.splitlines()  # fmt: skip
    assert words == ["command", "4", "_"]  # _normal completes from word 4 (zsh counts from 1)
