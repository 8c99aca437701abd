"""CPython's Lib/test/test_subprocess.py cases (run, Popen, communicate, timeout,
check, text, encoding, input, large output, pass_fds), ported to tether's API:
tether.run for subprocess.run/check_call/check_output, tether.start for Popen."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from helpers import alive, wait_for_file
from tether.process import read_process

PY = sys.executable
FAST = "TERM,2s,KILL"


# -- run(): call / check_call / check_output ----------------------------------


def test_call_seq() -> None:
    assert tether.run([PY, "-c", "import sys; sys.exit(47)"]).returncode == 47


def test_check_call_nonzero() -> None:
    with pytest.raises(subprocess.CalledProcessError) as c:
        tether.run([PY, "-c", "import sys; sys.exit(47)"], check=True)
    assert c.value.returncode == 47
    assert isinstance(c.value, tether.JobFailedError)
    assert c.value.report is not None and c.value.report.complete


def test_check_output() -> None:
    done = tether.run([PY, "-c", "print('BDFL')"], check=True, capture_output=True)
    assert b"BDFL" in done.stdout


def test_check_output_stderr() -> None:
    done = tether.run([PY, "-c", "import sys; sys.stderr.write('BDFL')"], stderr=subprocess.PIPE)
    assert done.stderr == b"BDFL"
    assert done.stdout is None


def test_check_output_input_arg() -> None:
    done = tether.run(
        [PY, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"],
        input=b"pear",
        capture_output=True,
    )
    assert done.stdout == b"PEAR"


def test_check_output_input_none_closes_stdin() -> None:
    done = tether.run(
        [PY, "-c", "import sys; print('XX' if sys.stdin.read() else '')"],
        input=None,
        stdin=subprocess.PIPE,
        capture_output=True,
    )
    assert done.stdout.strip() == b""


def test_check_output_input_text() -> None:
    done = tether.run(
        [PY, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"],
        input="pear",
        capture_output=True,
        text=True,
    )
    assert done.stdout == "PEAR"


def test_check_output_timeout_carries_output_and_report() -> None:
    script = "import sys, time\nsys.stdout.write('BDFL')\nsys.stdout.flush()\ntime.sleep(3600)"
    with pytest.raises(subprocess.TimeoutExpired) as c:
        tether.run([PY, "-c", script], capture_output=True, check=True, timeout=0.5, policy=FAST)
    assert c.value.output == b"BDFL"
    assert isinstance(c.value, tether.JobTimeoutError)
    assert c.value.report is not None
    assert c.value.report.reason == "timeout"
    assert c.value.report.complete


def test_timeout_without_check_returns_timed_out() -> None:
    done = tether.run(["sleep", "3600"], timeout=0.2, policy=FAST)
    assert done.timed_out
    assert done.returncode == -signal.SIGTERM


def test_stdin_and_input_refused() -> None:
    with pytest.raises(ValueError, match="stdin and input"):
        tether.run(["cat"], stdin=subprocess.PIPE, input=b"x")


def test_capture_output_and_stdout_refused() -> None:
    with pytest.raises(ValueError, match="capture_output"):
        tether.run(["true"], capture_output=True, stdout=subprocess.PIPE)


def test_large_output_in_both_directions_never_blocks() -> None:
    # CPython's test_communicate_pipe_buf: more than a pipe holds each way.
    data = b"a" * (1 << 20)
    done = tether.run(
        [PY, "-c", "import sys; d=sys.stdin.buffer.read(); sys.stdout.buffer.write(d); "
         "sys.stderr.buffer.write(d[:70000])"],
        input=data,
        capture_output=True,
    )  # fmt: skip
    assert done.stdout == data
    assert len(done.stderr) == 70000


def test_leftover_holding_the_pipe_is_terminated_and_named(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    done = tether.run(
        # The leader waits for the sleep's exec: a leftover caught still in
        # the forked shell is named by the shell's command line.
        [
            "sh",
            "-c",
            "sleep 3600 & p=$!; until [ \"$(tr '\\0' ' ' </proc/$p/cmdline)\" = 'sleep 3600 ' ]; "
            "do :; done; "
            f"echo $p >{pidfile}; echo leader-done",
        ],
        capture_output=True,
        policy=FAST,
    )
    assert done.stdout == b"leader-done\n"
    pid = int(pidfile.read_text())
    named = [m for m in done.report.members if m.pid == pid]
    assert [m.outcome for m in named] == ["killed"]
    assert named[0].cmdline == "sleep 3600"


# -- text, encodings, newlines ----------------------------------------------


def test_universal_newlines_communicate() -> None:
    script = "import sys; sys.stdout.buffer.write(b'line1\\r\\nline2\\rline3\\n')"
    done = tether.run([PY, "-c", script], capture_output=True, text=True)
    assert done.stdout == "line1\nline2\nline3\n"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32-be"])
def test_communicate_encodings(encoding: str) -> None:
    script = (
        "import sys; sys.stdout.buffer.write("
        f"sys.stdin.buffer.read().decode('{encoding}').upper().encode('{encoding}'))"
    )
    done = tether.run([PY, "-c", script], input="1\n2\n", capture_output=True, encoding=encoding)
    assert done.stdout == "1\n2\n".upper()


def test_communicate_errors() -> None:
    script = "import sys; sys.stdout.buffer.write(b'[\\x80\\x80]')"
    done = tether.run(
        [PY, "-c", script], capture_output=True, encoding="utf-8", errors="surrogateescape"
    )
    assert done.stdout == "[\udc80\udc80]"


# -- the command ------------------------------------------------------------


def test_str_command_is_an_error_with_a_hint() -> None:
    with pytest.raises(tether.UsageError, match="shell=True"):
        tether.run("true")  # type: ignore[arg-type]


def test_shell_true_runs_a_script_with_positional_args() -> None:
    done = tether.run("echo $0-$1", shell=True, capture_output=True)
    assert done.stdout == b"/bin/sh-\n"
    done = tether.run(["echo $0-$1", "zero", "one"], shell=True, capture_output=True)
    assert done.stdout == b"zero-one\n"


def test_pathlike_and_bytes_arguments(tmp_path: Path) -> None:
    script = tmp_path / "echo.sh"
    script.write_text('#!/bin/sh\nprintf "%s|" "$@"\n')
    script.chmod(0o755)
    done = tether.run([script, b"b\xffytes", tmp_path], capture_output=True)
    assert done.stdout == b"b\xffytes|" + os.fsencode(tmp_path) + b"|"
    assert done.args == [script, b"b\xffytes", tmp_path]


def test_cwd_and_env(tmp_path: Path) -> None:
    done = tether.run(
        ["sh", "-c", 'pwd; echo "$FRUIT"'], cwd=tmp_path, env={"FRUIT": "orange",
                                                             "PATH": os.defpath},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.stdout == f"{tmp_path}\norange\n"


# -- Popen --------------------------------------------------------------------


def test_popen_args_pid_and_poll() -> None:
    argv = [PY, "-c", "import sys; sys.stdin.read()"]
    with tether.start(argv, stdin=subprocess.PIPE) as job:
        assert job.args == argv
        assert job.poll() is None
        assert read_process(job.pid) is not None
        assert job.stdin is not None
        job.stdin.close()
        assert job.wait() == 0
        assert job.poll() == 0


def test_wait_timeout_raises_and_job_goes_on() -> None:
    with tether.start(["sleep", "3600"], policy=FAST) as job:
        with pytest.raises(subprocess.TimeoutExpired):
            job.wait(timeout=0.01)
        assert job.poll() is None
        job.kill()
        assert job.wait() == -signal.SIGKILL


def test_terminate_and_send_signal_reach_the_leader() -> None:
    with tether.start(["sleep", "3600"]) as job:
        job.terminate()
        assert job.wait() == -signal.SIGTERM
        job.send_signal(signal.SIGKILL)  # exited already: nothing happens
    with tether.start(["sleep", "3600"]) as job:
        job.send_signal(signal.SIGUSR1)
        assert job.wait() == -signal.SIGUSR1


def test_popen_streams_read_directly() -> None:
    with tether.start(
        [PY, "-c", "import sys; print(sys.stdin.readline().strip()[::-1], flush=True)"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as job:
        assert job.stdin is not None and job.stdout is not None
        job.stdin.write("pear\n")
        job.stdin.flush()
        assert job.stdout.readline() == "raep\n"
        assert job.wait() == 0


def test_communicate() -> None:
    script = "import sys,os; sys.stderr.write('pineapple'); sys.stdout.write(sys.stdin.read())"
    with tether.start(
        [PY, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as job:
        assert job.communicate(b"banana") == (b"banana", b"pineapple")
        assert job.returncode == 0


def test_communicate_returns_none_for_non_pipes() -> None:
    with tether.start([PY, "-c", "import sys; sys.exit(3)"]) as job:
        assert job.communicate() == (None, None)
        assert job.returncode == 3


def test_communicate_timeout_then_resume(tmp_path: Path) -> None:
    # CPython's test_communicate_timeout, with a file instead of a sleep.
    go = tmp_path / "go"
    script = (
        "import sys, os, time\n"
        "sys.stderr.write('pineapple\\n'); sys.stderr.flush()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        "sys.stderr.write('pear\\n')\n"
        "sys.stdout.write(sys.stdin.read())\n"
    )
    with tether.start(
        [PY, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        policy=FAST,
    ) as job:
        with pytest.raises(subprocess.TimeoutExpired) as c:
            job.communicate("banana", timeout=0.3)
        assert c.value.stderr in (b"", b"pineapple\n")
        go.touch()
        assert job.communicate() == ("banana", "pineapple\npear\n")


def test_communicate_timeout_large_output_is_kept() -> None:
    script = (
        "import sys, time\nsys.stdout.write('a' * (1 << 20)); sys.stdout.flush()\ntime.sleep(0.3)"
    )
    with tether.start([PY, "-c", script], stdout=subprocess.PIPE, policy=FAST) as job:
        with contextlib.suppress(subprocess.TimeoutExpired):
            job.communicate(timeout=0.05)
        out, err = job.communicate()
    assert err is None
    assert len(out) == 1 << 20


def test_communicate_with_a_leftover_holding_the_pipe(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with tether.start(
        ["sh", "-c", f"sleep 3600 & echo $! >{pidfile}; echo done"],
        stdout=subprocess.PIPE,
        policy=FAST,
    ) as job:
        assert job.communicate(timeout=60) == (b"done\n", None)
        pid = int(wait_for_file(pidfile))
        assert job.report is not None
        assert [m.outcome for m in job.report.members if m.pid == pid] == ["killed"]


def test_pass_fds(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        tether.run([PY, "-c", f"import os; os.write({w}, b'passed\\n')"], pass_fds=[w])
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"passed\n"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_without_pass_fds_the_fd_is_closed() -> None:
    r, w = os.pipe()
    try:
        done = tether.run([PY, "-c", f"import os; os.write({w}, b'x')"], stderr=subprocess.PIPE)
        assert done.returncode != 0
    finally:
        os.close(r)
        os.close(w)


def test_context_exit_terminates_the_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with tether.start(["sh", "-c", f"(setsid sleep 3600 & echo $! >{pidfile}); wait"]) as job:
        pid = int(wait_for_file(pidfile))
        info = read_process(pid)
        assert info is not None
    assert job.report is not None and job.report.complete
    assert not alive(pid, info.starttime)
