"""tether.job._SpawnedLeader: the leader without a Popen keeps Popen's rules.

`tether run` and the remote agent start their leader by clone3 without
subprocess (~10 ms of imports, issue 15); Job reads it as it reads a Popen,
so poll(), wait() and returncode must say what Popen's say, on the same
events: a status, a signal's -N, a timeout, and ECHILD (0, Popen's rule).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from helpers import cgroup_writable, is_root
from tether._platform.linux import spawn
from tether.job import _SpawnedLeader


def _leader(*argv: str) -> _SpawnedLeader:
    pid = os.posix_spawn(argv[0], list(argv), dict(os.environ))
    return _SpawnedLeader(list(argv), pid, None)


def test_a_status_and_a_signal_read_as_popens() -> None:
    done = _leader("/bin/sh", "-c", "exit 7")
    assert done.wait() == 7 and done.returncode == 7 and done.poll() == 7
    killed = _leader("/bin/sleep", "60")
    try:
        assert killed.poll() is None and killed.returncode is None
        with pytest.raises(subprocess.TimeoutExpired) as timeout:
            killed.wait(timeout=0.05)
        assert timeout.value.cmd == ["/bin/sleep", "60"] and timeout.value.timeout == 0.05
        os.kill(killed.pid, signal.SIGTERM)
    finally:
        if killed.returncode is None:
            os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGTERM
    with subprocess.Popen(["/bin/sh", "-c", "kill -TERM $$"]) as popen:
        assert popen.wait() == killed.returncode  # the same -N


def test_reaped_by_another_waiter_reads_as_zero_as_popen() -> None:
    """ECHILD: a waitpid(-1) elsewhere took the status; Popen says 0."""
    gone = _leader("/bin/sh", "-c", "exit 5")
    os.waitpid(gone.pid, 0)
    assert gone.poll() == 0
    blocking = _leader("/bin/sh", "-c", "exit 5")
    os.waitpid(blocking.pid, 0)
    assert blocking.wait() == 0


_WHICH = """
import sys
from tether.job import Job
from tether.spec import JobSpec

audited = []
sys.addaudithook(lambda event, args: audited.append(args) if event == "subprocess.Popen" else None)
with Job(JobSpec(argv=["sh", "-c", "exit 3"]), dedicated_supervisor=True) as job:
    kind = type(job._popen).__name__
    rc = job.wait()
seen = [a for a in audited if list(a[1]) == ["sh", "-c", "exit 3"]]
print(kind, rc, "subprocess" in sys.modules, len(seen))
"""


@pytest.mark.skipif(
    not (is_root() and cgroup_writable() and spawn.usable()),
    reason="needs cgroup v2 write access (root) and clone3",
)
def test_a_dedicated_job_in_a_cgroup_gets_the_spawned_leader() -> None:
    """A single-threaded process (as `tether run`) whose job has a cgroup
    starts the leader without subprocess, reads its status, and raises
    Popen's audit event for it (PEP 578 hooks see every spawn)."""
    out = subprocess.run(
        [sys.executable, "-c", _WHICH], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["_SpawnedLeader", "3", "False", "1"], out
