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

from collections.abc import Iterable, Sequence

from tether.identity import Identity
from tether.membership import Membership
from tether.policy import Policy
from tether.process import ProcessInfo, read_process
from tether.prune.classify import Plan, Stray
from tether.report import Report
from tether.terminate import terminate


def stray_membership(
    strays: Sequence[Stray], *, floor: int, exempt: Iterable[int], job_id: str
) -> Membership:
    """A Membership that admits only processes the pruner may touch."""
    exempt = set(exempt)
    checked: dict[tuple[int, int], bool] = {}

    def admit(info: ProcessInfo) -> bool:
        if info.pid in exempt:
            return False
        known: bool | None = checked.get(info.identity)
        if known is None:
            # Re-read through a dirfd pinned to this (pid, start time).
            fresh = read_process(info.pid, ("uids",))
            known = (
                fresh is not None
                and fresh.starttime == info.starttime
                and fresh.uids is not None
                and min(fresh.uids) >= floor
            )
            checked[info.identity] = known
        return known

    return Membership.for_identities(
        [Identity(s.pid, s.starttime) for s in strays],
        name="prune",
        why=f"{len(strays)} stray(s) named by the scan",
        job_id=job_id,
        admit=admit,
        caveats=[
            "strays are whole processes found by one scan of /proc; a stray that "
            "double-forked after the scan is found on the next run",
        ],
    )


def kill_strays(plan: Plan, policy: Policy, *, job_id: str, reason: str) -> Report:
    """Apply ``policy`` to the plan's strays; the engine's report."""
    membership = stray_membership(
        plan.strays, floor=plan.options.min_uid, exempt=plan.legit, job_id=job_id
    )
    try:
        return terminate(membership, policy, job_id=job_id, reason=reason)
    finally:
        membership.close()
