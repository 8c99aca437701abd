"""The forked watchdog (tether.job._fork_watchdog): taken only where a fork is
safe, and once forked it holds nothing of its caller's and runs none of it.
The fork is off by default (tether.job._FORK_WATCHDOG: it costs PSS); the
supervisor script here turns it on.

A supervisor script runs one job with ``dedicated_supervisor`` (as `tether
run` and the remote agent do) and prints what the test needs; the job's
leader carries the suite's marker in its environment (conftest's leak check).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import wait_for, wait_for_file

#: argv: MODE OUT_FD ATEXIT_FILE. MODE "thread" starts a threading.Thread,
#: "cthread" a thread threading does not count (as C code would), "plain" none.
#: Prints one JSON line about the job and its watchdog, then waits for the job.
SUPERVISOR = r"""
import _thread, atexit, json, os, signal, subprocess, sys, threading, time
import tether.job
from tether.job import Job
from tether.spec import JobSpec

tether.job._FORK_WATCHDOG = True  # off by default (see its comment)

mode, out_fd, atexit_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "thread":
    threading.Thread(target=threading.Event().wait, daemon=True).start()
elif mode == "cthread":
    _thread.start_new_thread(time.sleep, (300,))
# Dispositions a fresh interpreter must not see (exec resets handled ones).
signal.signal(signal.SIGUSR1, lambda *_: None)
signal.signal(signal.SIGTERM, lambda *_: None)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
atexit.register(lambda: open(atexit_file, "a").write(f"{os.getpid()}\n"))
# sys.stderr writes through; a block-buffered stream on fd 2 (which the
# watchdog keeps) holds this until it is flushed or finalised.
held = open(2, "w", buffering=4096, closefd=False)
held.write("PARTIAL")
with Job(JobSpec(argv=[sys.executable, "-c", os.environ["LEADER"]], policy="TERM,60s,KILL"),
         stdout=out_fd, dedicated_supervisor=True) as job:
    os.close(out_fd)
    wd = job._watchdog_pid
    fresh = subprocess.run([sys.executable, "-S", "-c", "print(open('/proc/self/status').read())"],
                           capture_output=True, text=True, check=True).stdout
    with open(f"/proc/{wd}/cmdline", "rb") as f:
        cmdline = f.read().split(b"\0")[:-1]
    with open(f"/proc/self/cmdline", "rb") as f:
        own = f.read().split(b"\0")[:-1]
    fresh_sigs = {l.split(":")[0]: l.split()[1] for l in fresh.splitlines() if l.startswith("Sig")}
    print(json.dumps({"job": job.pid, "watchdog": wd, "forked": cmdline == own,
                      "spawned": b"tether.watchdog" in b" ".join(cmdline),
                      "fresh": fresh_sigs}), flush=True)
    job.wait()
"""

#: The leader: says ready on its stdout, lets go of it, and ignores TERM
#: (noting that it came), so a watchdog's recovery stays in its 60 s grace.
LEADER_WAITS = r"""
import os, signal
signal.signal(signal.SIGTERM, lambda *_: open(os.environ["MARK"], "w").write("term"))
os.write(1, b"ready\n")
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
os.close(null)
while True:
    signal.pause()
"""


def _supervise(tmp_path: Path, mode: str, leader: str) -> tuple[subprocess.Popen[str], int, dict]:  # type: ignore[type-arg]
    """Start the supervisor with the job's stdout on a pipe (fd >= 3 there); the
    pipe's read end and the supervisor's JSON line."""
    r, w = os.pipe()
    env = {**os.environ, "LEADER": leader, "MARK": str(tmp_path / "term")}
    sup = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, mode, str(w), str(tmp_path / "atexit")],
        pass_fds=[w],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    os.close(w)
    assert sup.stdout is not None
    info = json.loads(sup.stdout.readline())
    return sup, r, info


def _watchdog_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: line.split()[1] for line in lines if line.startswith("Sig")}


def _holds_only_its_own(pid: int) -> bool:
    """The watchdog's fds are its pipe, /dev/null, stderr and the supervisor's pidfd."""
    fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    return fds.get("3") == "anon_inode:[pidfd]" and set(fds) == {"0", "1", "2", "3"}


def test_forked_watchdog_holds_nothing_of_its_caller_and_gets_fresh_dispositions(
    tmp_path: Path,
) -> None:
    sup, r, info = _supervise(tmp_path, "plain", LEADER_WAITS)
    try:
        assert info["forked"], "a single-threaded supervisor forks its watchdog"
        wd = info["watchdog"]
        # Ready once it has its pidfd on the supervisor (after it closed the rest).
        wait_for(lambda: os.path.exists(f"/proc/{wd}/fd/3"), what="the watchdog's pidfd")
        assert _holds_only_its_own(wd)
        assert os.readlink(f"/proc/{wd}/fd/1") == os.devnull
        status = _watchdog_status(wd)
        # As a fresh interpreter: the caller's TERM/USR1 handlers gone, SIGHUP
        # still ignored, SIGINT caught (KeyboardInterrupt), PIPE/XFSZ ignored.
        assert (status["SigIgn"], status["SigCgt"]) == (
            info["fresh"]["SigIgn"],
            info["fresh"]["SigCgt"],
        )
        assert int(status["SigIgn"], 16) & (1 << (signal.SIGHUP - 1))
    finally:
        os.kill(info["job"], signal.SIGKILL)  # our grandchild, not reaped: its pid is the job's
        sup.communicate(timeout=60)
        os.close(r)
    assert sup.returncode == 0


def test_reader_of_the_jobs_output_gets_eof_while_the_watchdog_still_terminates(
    tmp_path: Path,
) -> None:
    """The supervisor is SIGKILLed; the watchdog's recovery sits in the TERM
    grace of a leader that let go of its stdout: the pipe's reader must see
    EOF now (a watchdog holding the supervisor's copy would delay it)."""
    sup, r, info = _supervise(tmp_path, "plain", LEADER_WAITS)
    wd_fd = os.pidfd_open(info["watchdog"])  # the supervisor's unreaped child: not reused
    job_fd = os.pidfd_open(info["job"])
    try:
        assert os.read(r, 6) == b"ready\n"
        sup.send_signal(signal.SIGKILL)
        sup.wait(timeout=60)
        wait_for_file(tmp_path / "term", timeout=60)  # the watchdog's TERM arrived
        assert not select.select([wd_fd], [], [], 0)[0], "the watchdog is in its grace"
        os.set_blocking(r, False)
        assert os.read(r, 64) == b"", "EOF: nobody holds the job's stdout any more"
    finally:
        signal.pidfd_send_signal(job_fd, signal.SIGKILL)
        select.select([wd_fd], [], [], 60)  # the tree is empty: the watchdog leaves
        os.close(job_fd)
        os.close(r)
    assert select.select([wd_fd], [], [], 0)[0], "the watchdog exited"
    os.close(wd_fd)
    _out, err = sup.communicate(timeout=60)  # to EOF: the watchdog was its last writer
    assert "nothing left" in err, err
    # The caller's partial line was neither flushed by the dead caller nor by
    # its forked watchdog; and the watchdog ran none of its atexit handlers.
    assert "PARTIAL" not in err
    assert not (tmp_path / "atexit").exists()


def test_forked_watchdog_leaves_the_callers_atexit_and_buffers_to_the_caller(
    tmp_path: Path,
) -> None:
    sup, r, info = _supervise(tmp_path, "plain", "pass")
    _out, err = sup.communicate(timeout=60)
    os.close(r)
    assert sup.returncode == 0
    assert info["forked"]
    assert err.count("PARTIAL") == 1, err
    assert (tmp_path / "atexit").read_text().split() == [str(sup.pid)]


@pytest.mark.parametrize("mode", ["thread", "cthread"])
def test_a_threaded_supervisor_spawns_its_watchdog(tmp_path: Path, mode: str) -> None:
    """cthread: a thread threading.active_count() does not see; the kernel's
    count (num_threads) must keep the fork away too."""
    sup, r, info = _supervise(tmp_path, mode, "pass")
    sup.communicate(timeout=60)
    os.close(r)
    assert sup.returncode == 0
    assert not info["forked"] and info["spawned"]
