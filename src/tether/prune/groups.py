"""Supplementary-group tagging: find every process that carries a job's tag gid.

``tether run --tag-gid GID`` (root) gives the job's processes one extra
supplementary group, as SGE's ENABLE_ADDGRP_KILL does. The group survives
``setsid``, double forks, re-parenting to init and a cleared environment, and
only a process with CAP_SETGID can drop or add it, so it finds processes that
escaped their session on hosts without cgroups. It is unforgeable only if the
gid is used for nothing else: pick gids from a range that no user is a member
of in /etc/group (a member could add it with ``newgrp``/``sg``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tether.errors import UsageError
from tether.prune.scan import PROC, parse_status
from tether.tracking.base import Table

if TYPE_CHECKING:
    from tether.membership import Membership
    from tether.policy import Policy
    from tether.report import Report


def processes_with_supplementary_gid(gid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live process with ``gid`` on its ``Groups:`` line.

    Each process is read through a ``/proc/PID`` directory fd, so the start
    time and the groups describe the same process.
    """
    from tether.linux import procfs

    if gid < 0:
        raise UsageError(f"not a group id: {gid}")
    out: list[tuple[int, int]] = []
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        try:
            with procfs.ProcDir(int(name)) as d:
                _uids, groups = parse_status(d.read("status"))
                if gid not in groups:
                    continue
                st = d.stat()
        except (procfs.ProcessGone, OSError, ValueError):
            continue
        if st.state not in ("Z", "X") and not st.is_kernel_thread:
            out.append((st.pid, st.starttime))
    return sorted(out)


class GidTracker:
    """Tracker (for a :class:`~tether.membership.Membership`): processes carrying a gid.

    For ``tether kill --gid GID``: ``Membership([GidTracker(gid)], ...)``.
    """

    name = "gid"

    def __init__(self, gid: int) -> None:
        self.gid = gid

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        found = []
        for pid, starttime in processes_with_supplementary_gid(self.gid):
            info = table.get(pid)
            # Started after the table was taken: the caller reads it itself.
            if info is None or info.starttime == starttime:
                found.append(pid)
        return found


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
