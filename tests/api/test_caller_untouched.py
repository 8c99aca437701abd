"""No side effects on the caller: its resource limits reach the job unchanged,
its signal handlers and its other children stay as they were; an explicit env
gets nothing but the job's marker (no PWD from the shim's shell)."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import textwrap

import pytest

import tether
import tether.aio
from helpers import SRC

TRACKERS = ["auto", "session,cookie,walk"]


@pytest.mark.parametrize("trackers", TRACKERS)
def test_job_inherits_the_callers_fd_limit(trackers: str) -> None:
    # In a fresh interpreter: this one's limit was raised by earlier tests.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(512, hard)
    program = textwrap.dedent(
        f"""
        import resource, tether
        resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
        for _ in range(2):  # the second job starts after tether raised its own
            done = tether.run(["sh", "-c", "ulimit -Sn"], capture_output=True,
                              trackers={trackers!r})
            print(done.stdout.decode().strip())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert out == [str(soft), str(soft)]


@pytest.mark.parametrize("trackers", TRACKERS)
def test_explicit_env_gets_no_pwd(trackers: str) -> None:
    done = tether.run(["env"], env={"FRUIT": "pear"}, capture_output=True, trackers=trackers)
    names = {line.split(b"=", 1)[0] for line in done.stdout.splitlines()}
    assert names == {b"FRUIT", b"TETHER_JOB_ID"}
    done = tether.run(
        ["env"], env={"PWD": "/stale/on/purpose"}, capture_output=True, trackers=trackers
    )
    assert b"PWD=/stale/on/purpose\n" in done.stdout


def test_signal_handlers_stay_as_they_were() -> None:
    def mine(_signum: int, _frame: object) -> None:
        pass

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD)
    old = {s: signal.signal(s, mine) for s in watched}
    try:
        before = {s: signal.getsignal(s) for s in watched}
        wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(wakeup)
        tether.run(["sh", "-c", "sleep 0 & wait"], capture_output=True)
        with tether.start(["true"]) as job:
            job.communicate()
        asyncio.run(tether.aio.run(["true"], capture_output=True))
        assert {s: signal.getsignal(s) for s in watched} == before
        assert signal.set_wakeup_fd(wakeup) == wakeup
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def test_callers_other_children_are_not_reaped() -> None:
    with subprocess.Popen(["sh", "-c", "exit 7"]) as other:
        # It exits while tether runs a job; tether must not collect its status.
        tether.run(["sh", "-c", "sleep 0.2"])
        with tether.start(["true"]) as job:
            job.wait()
        assert other.wait(timeout=60) == 7
