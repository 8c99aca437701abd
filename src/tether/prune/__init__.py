"""The stray-process pruner for batch and CI nodes.

Snapshot every process; subtract the legitimate ones (live tether jobs, batch
jobs, interactive sessions, system services, tether itself); what is left of
the user processes (every uid at or above the floor) is a stray. A dry run
only reports and logs; a kill feeds the strays, each by verified identity, to
the one termination engine. See ``tether prune --help``.

::

    from tether.prune import PruneOptions, plan, execute, DecisionLog, default_sources

    p = plan(PruneOptions(min_uid=1000), default_sources())
    outcome = execute(p, kill=False, policy=Policy.default(), log=DecisionLog(enabled=False))
    print(outcome.render_text())
"""

from __future__ import annotations

from tether.prune.classify import EndedJob, Exempt, Plan, PruneOptions, SourceStatus, Stray, plan
from tether.prune.log import DecisionLog
from tether.prune.outcome import Outcome, StrayView, execute
from tether.prune.scan import uid_min
from tether.prune.sources import (
    Job,
    JobSource,
    Scontrol,
    SessionList,
    SlurmCgroups,
    SourceError,
    TetherJobs,
    TorqueQstat,
    default_sources,
)

__all__ = [
    "DecisionLog",
    "EndedJob",
    "Exempt",
    "Job",
    "JobSource",
    "Outcome",
    "Plan",
    "PruneOptions",
    "Scontrol",
    "SessionList",
    "SlurmCgroups",
    "SourceError",
    "SourceStatus",
    "Stray",
    "StrayView",
    "TetherJobs",
    "TorqueQstat",
    "default_sources",
    "execute",
    "plan",
    "uid_min",
]
