"""Terminating strays through the one engine, each by verified identity.

The strays become the members of a :class:`~tether.membership.Membership`:
found by their (pid, start time) only, each held by a pidfd opened while a
``/proc/PID`` directory fd proved the start time, so a stray that exited and
whose pid was reused is never signalled. Right before the pidfd is opened the
process's uids are read again through that directory fd; a process that now
has a uid below the floor (it ran a setuid program) is dropped.

Descendants of a stray that appear while it is being terminated (a TERM
handler that forks) are strays too and get the same policy, with the same
uid check; they are the stray's own processes, never a new job's.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterable, Sequence

from tether.membership import Membership
from tether.policy import Policy
from tether.process import ProcessInfo, read_process
from tether.prune.classify import Plan, Stray
from tether.report import Report
from tether.terminate import terminate
from tether.tracking.base import Table, TrackerStatus


class StrayTracker:
    """Finds exactly the strays the plan named, by pid and start time."""

    name = "prune"

    def __init__(self, strays: Iterable[Stray]) -> None:
        self.identities = {s.pid: s.starttime for s in strays}

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        return [
            pid
            for pid, starttime in self.identities.items()
            if (p := table.get(pid)) is not None and p.starttime == starttime
        ]


class StrayMembership(Membership):
    """A Membership that admits only processes the pruner may touch."""

    def __init__(
        self,
        strays: Sequence[Stray],
        *,
        floor: int,
        exempt: Iterable[int],
        job_id: str,
    ) -> None:
        super().__init__(
            [StrayTracker(strays)],
            [
                TrackerStatus("prune", True, f"{len(strays)} stray(s) named by the scan"),
                TrackerStatus("walk", True, "children a stray forks while it is terminated"),
            ],
            not_before=0,
            leader=None,
            walk_roots=[s.identity for s in strays],
            job_id=job_id,
            caveats=[
                "strays are whole processes found by one scan of /proc; a stray that "
                "double-forked after the scan is found on the next run",
            ],
        )
        self._floor = floor
        self._exempt = set(exempt)
        self._checked: dict[tuple[int, int], bool] = {}

    def _allowed(self, info: ProcessInfo) -> bool:
        if not super()._allowed(info) or info.pid in self._exempt:
            return False
        known = self._checked.get(info.identity)
        if known is None:
            # Re-read through a dirfd pinned to this (pid, start time).
            fresh = read_process(info.pid, ("uids",))
            known = (
                fresh is not None
                and fresh.starttime == info.starttime
                and fresh.uids is not None
                and min(fresh.uids) >= self._floor
            )
            self._checked[info.identity] = known
        return known


def _raise_fd_limit() -> None:
    # One pidfd per stray: a node with thousands of strays needs more than
    # the common soft limit of 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def kill_strays(plan: Plan, policy: Policy, *, job_id: str, reason: str) -> Report:
    """Apply ``policy`` to the plan's strays; the engine's report."""
    _raise_fd_limit()
    membership = StrayMembership(
        plan.strays, floor=plan.options.min_uid, exempt=plan.legit, job_id=job_id
    )
    try:
        return terminate(membership, policy, job_id=job_id, reason=reason)
    finally:
        membership.close()
