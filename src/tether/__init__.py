"""tether: run jobs so that nothing they start can outlive them.

A job's processes — children, double-forked daemons, processes that left its
session — are tracked (cgroup v2, subreaper, session, environment cookie,
descendant walk) and terminated politely first, then by force, with a report
of what was killed::

    import tether

    done = tether.run(["make", "test"], timeout=600, policy="TERM,10s,KILL")
    print(done.returncode, done.report.render_text())

    with tether.start(["./launcher.sh"]) as job:
        ...
        report = job.cancel()
"""

from tether.errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    NoSuchProcessError,
    PolicyError,
    TetherError,
    TrackerError,
    UnsafeTargetError,
    UsageError,
)
from tether.job import CompletedJob, Job, kill_tree, run, start
from tether.policy import KillScript, Policy, Step, parse_duration, parse_signal
from tether.report import MemberRecord, Report, StepRecord, Survivor
from tether.tracking.base import TrackerStatus

__version__ = "0.1.0"

__all__ = [
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "CompletedJob",
    "Job",
    "KillScript",
    "MemberRecord",
    "NoSuchProcessError",
    "Policy",
    "PolicyError",
    "Report",
    "Step",
    "StepRecord",
    "Survivor",
    "TetherError",
    "TrackerError",
    "TrackerStatus",
    "UnsafeTargetError",
    "UsageError",
    "__version__",
    "kill_tree",
    "parse_duration",
    "parse_signal",
    "run",
    "start",
]
