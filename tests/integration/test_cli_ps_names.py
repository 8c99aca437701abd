"""Issue 15: `tether ps PID` reads command lines once (when the scan adopts a
member) and its table is stat only; the "command line unreadable" warning
still tells an empty command line from one that reads ``[comm]``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import tether_cmd, wait_for_exec

# exec /bin/cat with the argv given (none at all: argc 0, an empty cmdline);
# cat then waits on its stdin, a pipe the test holds.
EXEC = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
args = [a.encode() for a in sys.argv[1:]]
argv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
envp = (ctypes.c_char_p * 1)(None)
libc.execve(b"/bin/cat", argv, envp)
os._exit(127)
"""


@pytest.fixture
def cats() -> Iterator[tuple[int, int]]:
    """(pid of a cat with no argv, pid of a cat whose argv is just "[cat]")."""
    procs = [
        subprocess.Popen([sys.executable, "-c", EXEC, *argv], stdin=subprocess.PIPE)
        for argv in ([], ["[cat]"])
    ]
    try:
        for p in procs:
            wait_for_exec(p.pid, "cat")
        yield procs[0].pid, procs[1].pid
    finally:
        for p in procs:  # our own unreaped children: their pids cannot be reused
            assert p.stdin is not None
            p.stdin.close()
            p.wait(timeout=10)
        assert all(p.returncode == 0 for p in procs)


def test_an_empty_command_line_is_reported_and_a_bracketed_one_is_not(
    cats: tuple[int, int],
) -> None:
    empty, bracketed = cats
    assert Path(f"/proc/{empty}/cmdline").read_bytes() in (b"", b"\0")
    assert Path(f"/proc/{bracketed}/cmdline").read_bytes() == b"[cat]\0"
    for pid in cats:
        done = subprocess.run(
            tether_cmd("ps", str(pid)), capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert f"{pid} " in done.stdout and "[cat]" in done.stdout, done.stdout
        warned = "command line unreadable for 1 process(es)" in done.stderr
        assert warned == (pid == empty), (pid, done.stderr)


def test_a_pid_longer_than_int_takes_is_bad_input() -> None:
    # int() refuses more than 4300 digits (found by the CLI fuzz test).
    done = subprocess.run(
        tether_cmd("ps", "9" * 5000), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("tether: not a pid: '999") and "Traceback" not in done.stderr
    assert "internal error" not in done.stderr


def test_pid_0_is_no_such_process_not_a_refusal_to_kill() -> None:
    done = subprocess.run(
        tether_cmd("ps", "0"), capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stderr) == (2, "tether: no such process: 0\n")


def test_a_name_stdout_cannot_encode_is_escaped_not_an_error() -> None:
    """PYTHONIOENCODING=ascii (or a C locale) and a non-ASCII command line."""
    # cat with argv ["héllo"]: argv[0] is no operand, so it waits on its stdin.
    child = subprocess.Popen([sys.executable, "-c", EXEC, "héllo"], stdin=subprocess.PIPE)
    try:
        wait_for_exec(child.pid, "cat")
        done = subprocess.run(
            tether_cmd("ps", str(child.pid)), capture_output=True, text=True, timeout=60,
            check=False, env={**os.environ, "PYTHONIOENCODING": "ascii"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert " h\\xe9llo\n" in done.stdout, done.stdout
    finally:
        assert child.stdin is not None
        child.stdin.close()  # our own child, not yet reaped: it exits at EOF
        child.wait(timeout=10)
