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

# The names below are imported on first use (PEP 562): importing one module of
# the package (tether prune starts its /proc scan from tether.prune.scan
# before the rest is loaded) does not load them all. Not typing.TYPE_CHECKING:
# typing stays unimported at run time (mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tether.prune.classify import (
        EndedJob,
        Exempt,
        Plan,
        PruneOptions,
        SourceStatus,
        Stray,
        plan,
    )
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

#: Each exported name -> the module that defines it.
_HOME = {
    **dict.fromkeys(
        ["EndedJob", "Exempt", "Plan", "PruneOptions", "SourceStatus", "Stray", "plan"],
        "classify",
    ),
    "DecisionLog": "log",
    **dict.fromkeys(["Outcome", "StrayView", "execute"], "outcome"),
    "uid_min": "scan",
    **dict.fromkeys(
        [
            "Job", "JobSource", "Scontrol", "SessionList", "SlurmCgroups", "SourceError",
            "TetherJobs", "TorqueQstat", "default_sources",
        ],
        "sources",
    ),
}  # fmt: skip


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


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
