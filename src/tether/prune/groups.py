"""``tether kill --gid GID``: terminate every process that carries a tag gid.

The tracker that finds them, and why a tag gid finds escapees, is in
:mod:`tether.tracking.gid` (the job engine uses it for ``--tag-gid`` without
loading the pruner); it is re-exported here for the pruner's callers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.errors import UsageError
from tether.tracking.gid import GidTracker, processes_with_supplementary_gid

if TYPE_CHECKING:
    from tether.membership import Membership
    from tether.policy import Policy
    from tether.report import Report

__all__ = ["GidTracker", "gid_membership", "kill_gid", "processes_with_supplementary_gid"]


def gid_membership(gid: int) -> Membership:
    """A :class:`~tether.membership.Membership` of every process carrying ``gid``.

    tether itself, its ancestors, pid 1 and kernel threads are never members.
    """
    from tether.membership import Membership
    from tether.tracking.base import TrackerStatus

    if gid < 0:
        raise UsageError(f"not a group id: {gid}")
    return Membership(
        [GidTracker(gid)],
        [
            TrackerStatus("gid", True, f"processes with supplementary group {gid}"),
            TrackerStatus("walk", True, "children they fork while being terminated"),
        ],
        not_before=0,
        leader=None,
        job_id=f"gid-{gid}",
        caveats=[
            f"group {gid} finds only processes that kept it: a process that dropped its "
            "supplementary groups (with CAP_SETGID) is not found",
        ],
    )


def kill_gid(gid: int, *, policy: Policy | None = None) -> Report:
    """Terminate every process carrying supplementary group ``gid`` (``tether kill --gid``)."""
    from tether.policy import Policy
    from tether.terminate import terminate

    membership = gid_membership(gid)
    try:
        return terminate(
            membership,
            policy if policy is not None else Policy.default(),
            job_id=f"gid-{gid}",
            reason=f"tether kill --gid {gid}",
        )
    finally:
        membership.close()
