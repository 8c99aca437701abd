"""Issue 17, item 9: an unexpected exception in the CLI is one line and a documented status.

Each case runs the real CLI in a subprocess with one function made to raise
(as a bug or a broken environment would), and checks that stderr is a single
``tether: internal error: ...`` line, that no traceback is printed, and the
status each command's EXIT STATUS block allows — the epilog's is 0 (2 with
--strict): a failing epilog drains a Slurm node, and nothing survived.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import SRC

#: A click leaf command's invoke raising: the command's body is a bug.
_BREAK_INVOKE = """
import sys, click
def broken(self, ctx):
    raise {exc}
click.Command.invoke = broken
from tether.cli import main
main(sys.argv[1:])
"""

#: The documented status of an internal error, per command (see cli/__init__.py).
STATUS = {
    ("run", "--", "true"): 125,
    ("kill", "1"): 1,
    ("ps",): 1,
    ("reap",): 1,
    ("prune", "--dry-run"): 1,
    ("cancel", "--host", "h", "j"): 1,
    ("config",): 2,
    ("schema",): 2,
    ("completion", "bash"): 2,
    ("epilog",): 0,
    ("epilog", "--strict"): 2,
}


def _tether(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TETHER_TRACEBACK"}
    env["PYTHONPATH"] = SRC
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    # click ends the terminal's "^C" line with an empty one on an interrupt.
    lines = [line for line in stderr.splitlines() if line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("args", list(STATUS), ids=" ".join)
def test_a_bug_in_a_command_is_one_line_and_a_documented_status(args: tuple[str, ...]) -> None:
    done = _tether(_BREAK_INVOKE.format(exc='ValueError("boom\\x1b]0;x\\x07\\nforged")'), *args)
    line = _one_line(done.stderr)
    # Escaped (the message may carry outside text), named, one line.
    assert line.startswith("tether: internal error: ValueError: boom\\x1b]0;x\\x07\\nforged"), line
    assert done.returncode == STATUS[args], (done.returncode, line)


@pytest.mark.parametrize(
    ("args", "status"), [(("ps",), 130), (("run", "--", "true"), 130), (("epilog",), 0)]
)
def test_an_interrupt_before_the_command_took_over_is_130_never_a_drain(
    args: tuple[str, ...], status: int
) -> None:
    done = _tether(_BREAK_INVOKE.format(exc="KeyboardInterrupt"), *args)
    assert _one_line(done.stderr) == "tether: interrupted"
    assert done.returncode == status


def test_a_failing_helper_inside_a_command_is_one_line() -> None:
    code = (
        "import sys, tether.cli.ps as m\n"
        "def boom(*a, **k): raise RecursionError('maximum recursion depth exceeded')\n"
        "m.parse_pid = boom\n"
        "from tether.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    done = _tether(code, "ps", "1")
    assert _one_line(done.stderr).startswith("tether: internal error: RecursionError: maximum")
    assert done.returncode == 1


def test_traceback_on_request_for_bug_reports() -> None:
    env_code = "import os; os.environ['TETHER_TRACEBACK'] = '1'\n" + _BREAK_INVOKE
    done = _tether(env_code.format(exc='ValueError("boom")'), "ps")
    assert "Traceback" in done.stderr
    assert done.stderr.rstrip().endswith("(a bug in tether; please report it)")
    assert done.returncode == 1


@pytest.mark.parametrize(("strict", "status"), [((), 0), (("--strict",), 2)])
def test_a_bad_epilog_option_never_drains_the_node(strict: tuple[str, ...], status: int) -> None:
    done = _tether("import sys; from tether.cli import main; main(sys.argv[1:])",
                   "epilog", *strict, "--no-such-option")  # fmt: skip
    assert _one_line(done.stderr).endswith("(nothing was killed)")
    assert done.returncode == status


@pytest.mark.parametrize("args", list(STATUS), ids=" ".join)
def test_out_of_descriptors_in_a_command_is_one_line_and_its_unfinished_status(
    args: tuple[str, ...],
) -> None:
    """EMFILE mid-command is neither bad input nor a bug: one line that says
    to raise the limit, and the status the command gives work it may not
    have finished (as an internal error's)."""
    done = _tether(_BREAK_INVOKE.format(exc="OSError(24, 'Too many open files')"), *args)
    line = _one_line(done.stderr)
    assert line.startswith("tether: Too many open files (out of file descriptors: raise the limit")
    assert done.returncode == STATUS[args], (done.returncode, line)
