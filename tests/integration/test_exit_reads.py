"""The exit path of a job whose leader exited: how many process-table reads
prove the tree empty, and what may settle it.

The scan that records the leader's session while it is a zombie
(Job._poll_leader) may settle the tree for terminate: the leader, though
found only then, was seen exiting (its pidfd) before the table was read, so
it cannot have forked a successor that read missed. Any other member found
already exited (a possible pid hopper) still costs terminate a fresh scan.
A script runs the job with a dedicated supervisor, as `tether run` does,
counting full table reads.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import cgroup_writable

SCRIPT = r"""
import json, select, sys
import tether.membership as membership
reads = []
table = membership.snapshot
membership.snapshot = lambda *a, **k: (reads.append(1), table(*a, **k))[1]
from tether.job import Job
from tether.spec import JobSpec

mode, trackers, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
job = Job(JobSpec(argv=argv, trackers=None if trackers == "auto" else trackers),
          dedicated_supervisor=True)
select.select([job.leader_fileno], [], [], 60)
if mode == "plain-scan":
    job._membership.scan()  # the leader found exited, without the caller's word for it
assert job.returncode is not None  # the session-recording scan, as supervise() does
settled = job._membership._settled
report = job.cancel("leftovers after the leader exited")
said = {"complete": report.complete, "confirmed_by": report.confirmed_by,
        "caveats": report.caveats, "survivors": len(report.survivors),
        "members": sorted((m.cmdline, m.outcome, m.ended_by, m.found_by) for m in report.members)}
print(json.dumps({"reads": len(reads), "settled": settled, "complete": report.complete,
                  "killed": [m.cmdline for m in report.killed], "said": said,
                  "cgroup": job.cgroup_path}))
"""

#: A leader whose child exits unreaped before it: the child, found already a
#: zombie by the session-recording scan, is not the leader.
ZOMBIE_CHILD = (
    "import os; pid = os.fork()\n"
    "if pid == 0: os._exit(0)\n"
    "os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)"
)

TRACKERS = [
    pytest.param("auto", id="auto"),
    pytest.param("subreaper,session,cookie,walk", id="no-cgroup"),
]


def _run(mode: str, trackers: str, *argv: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, trackers, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out: dict = json.loads(done.stdout)  # type: ignore[type-arg]
    if trackers == "auto":
        assert (out["cgroup"] is not None) == cgroup_writable()
    return out


@pytest.mark.parametrize("trackers", TRACKERS)
def test_leader_alone_is_proven_gone_with_one_table_read(trackers: str) -> None:
    out = _run("normal", trackers, "true")
    assert out["settled"]
    assert out["reads"] == 1
    assert out["complete"] and out["killed"] == []


@pytest.mark.parametrize("trackers", TRACKERS)
def test_a_leftover_is_still_found_and_killed(trackers: str) -> None:
    # The leader waits for the sleep's exec: a leftover caught still in the
    # forked shell would be named by the shell's command line.
    script = "sleep 30 & until [ \"$(tr '\\0' ' ' </proc/$!/cmdline)\" = 'sleep 30 ' ]; do :; done"
    out = _run("normal", trackers, "sh", "-c", script)
    assert not out["settled"]
    assert out["complete"] and out["killed"] == ["sleep 30"]


@pytest.mark.parametrize("trackers", TRACKERS)
def test_an_exited_member_other_than_the_leader_does_not_settle(trackers: str) -> None:
    out = _run("normal", trackers, sys.executable, "-c", ZOMBIE_CHILD)
    assert not out["settled"]
    assert out["reads"] >= 2
    assert out["complete"]


@pytest.mark.parametrize("trackers", TRACKERS)
def test_a_leader_found_exited_without_the_callers_word_does_not_settle(trackers: str) -> None:
    """Also the reference: the report after two reads (the path before the
    shortcut) says what the one-read report says."""
    slow = _run("plain-scan", trackers, "true")
    assert not slow["settled"]
    assert slow["reads"] >= 2
    fast = _run("normal", trackers, "true")
    assert fast["reads"] == 1
    assert fast["said"] == slow["said"]
