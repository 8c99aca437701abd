"""The Python API: context manager, asyncio adapter, kill script, leader signal."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

import tether
import tether.aio
from helpers import alive, wait_for, wait_for_file
from tether.policy import KillScript, Policy
from tether.process import read_process


def _pids(path: Path, count: int) -> list[tuple[int, int]]:
    wait_for_file(path)
    out = []
    for line in path.read_text().split()[:count]:
        info = read_process(int(line))
        assert info is not None
        out.append(info.identity)
    return out


def test_context_exit_by_exception_terminates_tree(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 100 & echo $! >>{pids}; (setsid sleep 100 & echo $! >>{pids}); wait"
    with (
        pytest.raises(RuntimeError),
        tether.start(["sh", "-c", script], policy="TERM,1s,KILL") as job,
    ):
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="2 pids")
        members = _pids(pids, 2)
        raise RuntimeError("caller failed")
    assert job.report is not None
    assert job.report.reason == "context exited by RuntimeError"
    assert job.report.complete
    assert not any(alive(*m) for m in members)


def test_asyncio_adapter_cancels_whole_tree(tmp_path: Path) -> None:
    ready = tmp_path / "ready"

    async def main() -> tether.Report:
        async with await tether.aio.start(
            ["sh", "-c", f"sleep 100 & echo $! >{ready}; wait"], policy="TERM,1s,KILL"
        ) as job:
            await asyncio.to_thread(wait_for_file, ready)
            members = await job.members()
            assert len(members) == 2
            identities.extend(m.identity for m in members)
            return await job.cancel()

    identities: list[tuple[int, int]] = []
    report = asyncio.run(main())
    assert report.complete
    assert {m.outcome for m in report.members} == {"killed"}
    assert not any(alive(*i) for i in identities)


def test_asyncio_run_times_out() -> None:
    done = asyncio.run(tether.aio.run(["sleep", "100"], timeout=0.2, policy="TERM,1s,KILL"))
    assert done.timed_out
    assert done.returncode == -signal.SIGTERM


def test_kill_script_precedes_signals(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$TETHER_LEADER_PID $TETHER_MEMBER_PIDS" >{seen}\n')
    hook.chmod(0o755)
    policy = Policy.parse("TERM,1s,KILL", kill_script=KillScript((str(hook),), mode="precede"))
    with tether.start(["sleep", "100"], policy=policy) as job:
        report = job.cancel()
    leader, *members = seen.read_text().split()
    assert int(leader) == job.pid
    assert str(job.pid) in members
    assert report.kill_script is not None and "status 0" in report.kill_script
    assert report.complete


def test_kill_script_replace_mode_lets_the_hook_do_the_killing(tmp_path: Path) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text('#!/bin/sh\nkill -TERM "$TETHER_LEADER_PID"\n')
    hook.chmod(0o755)
    policy = Policy.parse("KILL,2s", kill_script=KillScript((str(hook),), mode="replace"))
    with tether.start(["sleep", "100"], policy=policy) as job:
        report = job.cancel()
    assert report.complete
    assert report.steps == ()  # no built-in signalling ran
    assert job.returncode == -signal.SIGTERM


def test_leader_signal_and_tree_delay(tmp_path: Path) -> None:
    got = tmp_path / "got"
    ready = tmp_path / "ready"
    # The leader handles INT itself and exits; its worker only gets the
    # tree's TERM after the delay.
    script = (
        f"trap 'echo INT >>{got}; exit 0' INT; "
        f'sh -c \'trap "echo TERM >>{got}; exit 0" TERM; echo x >{ready}; '
        "while :; do sleep 0.05; done' & wait"
    )
    # The delay is the margin the leader's trap has to run before the worker's
    # TERM (1 s: room for a loaded machine).
    policy = Policy.parse("TERM,2s,KILL", leader_signal=signal.SIGINT, tree_delay=1.0)
    with tether.start(["sh", "-c", script], policy=policy) as job:
        wait_for_file(ready)
        report = job.cancel()
    assert report.complete
    lines = got.read_text().split()
    assert lines[0] == "INT"
    assert "TERM" in lines
    leader = next(m for m in report.members if m.pid == job.pid)
    assert leader.signals[0] == "INT"


def test_run_reaps_leftovers_after_leader_exits(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    done = tether.run(
        ["sh", "-c", f"(sleep 100 & echo $! >{pidfile}); exit 7"], policy="TERM,1s,KILL"
    )
    assert done.returncode == 7
    assert not done.timed_out
    assert done.report.reason == "leftovers after the leader exited"
    leftover = int(pidfile.read_text())
    assert [m.outcome for m in done.report.members if m.pid == leftover] == ["killed"]


def test_kill_tree_refuses_self_and_ancestors() -> None:
    with pytest.raises(tether.UnsafeTargetError):
        tether.kill_tree(os.getpid())
    with pytest.raises(tether.UnsafeTargetError):
        tether.kill_tree(os.getppid())
    with pytest.raises(tether.UnsafeTargetError):
        tether.kill_tree(1)


def test_bad_input_leaves_nothing_running() -> None:
    with pytest.raises(tether.CommandNotFoundError):
        tether.start(["/nonexistent/tether-test-cmd"])
    with pytest.raises(tether.PolicyError):
        tether.run(["true"], policy="TERM,10x")
    with pytest.raises(tether.UsageError):
        tether.start(["true"], trackers="bogus")


@pytest.mark.parametrize("trackers", ["auto", "session,cookie,walk"])
def test_cancel_at_once_after_start_is_complete(trackers: str) -> None:
    """A leader cancelled within moments of its start may still be in the shim
    that moves it into the cgroup: an empty cgroup must not end the
    termination while it runs outside (it was once reported a survivor,
    signalled by nothing)."""
    for _ in range(15):
        job = tether.start(["sleep", "60"], policy=Policy.parse("TERM,5s,KILL"), trackers=trackers)
        leader = read_process(job.pid)
        report = job.cancel("at once")
        assert report.complete, report.render_text()
        assert report.survivors == ()
        assert leader is None or not alive(leader.pid, leader.starttime)


_GID_OUTER = r"""
import json, os, subprocess, sys
gid = int(sys.argv[1])
sleeper = subprocess.Popen(["sleep", "60"])  # carries the gid too: a member
inner = subprocess.run(
    [sys.executable, "-c", "import json, sys, tether; r = tether.kill_gid(int(sys.argv[1]), "
     "policy='KILL'); print(json.dumps([m.pid for m in r.members]))", str(gid)],
    capture_output=True, text=True, timeout=60,
)
sleeper.wait(timeout=10)
print(json.dumps({"me": os.getpid(), "sleeper": sleeper.pid, "killed": json.loads(inner.stdout),
                  "sleeper_rc": sleeper.returncode, "err": inner.stderr}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv --groups needs root")
def test_kill_gid_never_takes_in_an_ancestor_that_carries_the_gid() -> None:
    """The tag's holders are members, but never tether's own ancestors (here the
    process that ran it, which holds the group too)."""
    import json
    import subprocess
    import sys

    gid = 48000 + os.getpid() % 1000
    out = subprocess.run(
        ["setpriv", f"--groups={gid}", "--", sys.executable, "-c", _GID_OUTER, str(gid)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    assert got["sleeper"] in got["killed"], got
    assert got["me"] not in got["killed"], got
    assert got["sleeper_rc"] == -signal.SIGKILL, got
