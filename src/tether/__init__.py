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

from __future__ import annotations

# Layout, in reading order: spec (JobSpec: what to run, how to contain it) ->
# job (Job: start it; run/start/kill_tree) -> supervise (the one loop: deadline,
# signals, caller, leftovers) -> terminate (the engine) over membership
# (trackers/ -> members, held by pidfds) -> report. process and _platform are
# the only way to the OS; journal, watchdog and recovery outlive a dead
# supervisor; cli/ is the command line, remote/ the SSH side, prune/ the pruner.
from tether.errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    JournalError,
    NoSuchProcessError,
    PolicyError,
    TetherError,
    TrackerError,
    UnsafeTargetError,
    UsageError,
)

# Not typing.TYPE_CHECKING: importing typing costs the watchdog, which
# imports this package and idles for a job's life, ~2 MB and ~5 ms (mypy
# treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tether.job import (
        CompletedJob,
        Job,
        JobFailedError,
        JobTimeoutError,
        kill_gid,
        kill_tree,
        run,
        start,
    )
    from tether.policy import KillScript, Policy, Step, parse_duration, parse_signal
    from tether.report import MemberRecord, Report, StepRecord, Survivor
    from tether.spec import JobSpec
    from tether.tracking.base import TrackerStatus

# The engine is imported on first use (PEP 562): `import tether` stays cheap
# for the CLI's fast paths and for the watchdog, which idles for a job's life.
_LAZY = {
    "CompletedJob": "tether.job",
    "Job": "tether.job",
    "JobFailedError": "tether._run_errors",
    "JobTimeoutError": "tether._run_errors",
    "kill_gid": "tether.job",
    "kill_tree": "tether.job",
    "run": "tether.job",
    "start": "tether.job",
    "KillScript": "tether.policy",
    "Policy": "tether.policy",
    "Step": "tether.policy",
    "parse_duration": "tether.policy",
    "parse_signal": "tether.policy",
    "MemberRecord": "tether.report",
    "Report": "tether.report",
    "StepRecord": "tether.report",
    "Survivor": "tether.report",
    "TrackerStatus": "tether.tracking.base",
    "JobSpec": "tether.spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "CompletedJob",
    "Job",
    "JobFailedError",
    "JobSpec",
    "JobTimeoutError",
    "JournalError",
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
    "kill_gid",
    "kill_tree",
    "parse_duration",
    "parse_signal",
    "run",
    "start",
]
