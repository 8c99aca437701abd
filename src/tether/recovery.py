"""Terminating a job whose supervisor is gone, from its journal record.

Used by the watchdog (its supervisor just died) and by ``tether reap`` (both
died, or a reboot left records behind). Without the supervisor there is no
subreaper holding the orphans and no pidfds: members are found again by the
job's cgroup, its session (while the leader's pid is not reused), its cookie,
and the identities the supervisor recorded — every one checked by start time,
so a recorded pid now held by a stranger is never signalled.
"""

from __future__ import annotations

import os
import time

from tether._platform.linux.cgroupfs import JobCgroup, find_cgroup2_mount
from tether._records import dataclass
from tether.journal import JobRecord, Journal
from tether.membership import Membership
from tether.policy import Policy
from tether.process import is_alive
from tether.report import Report
from tether.terminate import terminate

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


@dataclass(frozen=True)
class JobState:
    """Who is looking after a recorded job right now."""

    supervisor_alive: bool
    watchdog_alive: bool
    same_boot: bool
    #: The supervisor applied the whole policy and members survived it (e.g. in
    #: D state): it has given the job up, alive or not.
    given_up: bool = False

    @property
    def orphaned(self) -> bool:
        """Nobody is: ``tether reap`` may terminate it."""
        if not self.same_boot:
            return False
        return self.given_up or (not self.supervisor_alive and not self.watchdog_alive)

    def describe(self) -> str:
        if not self.same_boot:
            return "left by a previous boot"
        if self.given_up:
            return "members survived its policy: given up by its supervisor"
        if self.supervisor_alive:
            return "supervised"
        if self.watchdog_alive:
            return "supervisor gone, watchdog terminating"
        return "orphaned: supervisor and watchdog gone"


def job_state(record: JobRecord) -> JobState:
    same_boot = record.of_this_boot()
    return JobState(
        supervisor_alive=record.supervisor_alive(),
        watchdog_alive=same_boot and is_alive(record.watchdog),
        same_boot=same_boot,
        given_up=record.state == "survivors",
    )


def _job_cgroup(record: JobRecord) -> tuple[JobCgroup | None, str]:
    if record.cgroup is None:
        return None, "the job had no cgroup"
    mount = find_cgroup2_mount()
    path = os.path.realpath(record.cgroup)
    # Only a directory tether itself would have made: under the cgroup2 mount
    # and named after this job.
    if (
        mount is None
        or not path.startswith(mount.rstrip("/") + "/")
        or os.path.basename(path) != f"tether-{record.job_id}"
    ):
        return None, f"recorded cgroup {record.cgroup} is not this job's: ignored"
    if not os.path.exists(os.path.join(path, "cgroup.procs")):
        return None, f"cgroup {path} is gone"
    return JobCgroup(path), path


def membership_for(
    record: JobRecord, protected: Sequence[int] = (), keeper: int | None = None
) -> Membership:
    """The Membership of a recorded job, its cgroup verified first; ``keeper``:
    this process is the job's subreaper (a :mod:`tether.keeper` job keeper)."""
    cgroup, why = _job_cgroup(record)
    return Membership.for_record(
        record, cgroup=cgroup, cgroup_status=why, protected=protected, keeper=keeper
    )


def _resume_point(record: JobRecord) -> tuple[int, float] | None:
    """Where the dead supervisor's termination got to: (step, grace spent).

    Continuing there (not from the first step) keeps a runner's cancel
    sequence short: its KILL of tether must not buy the job a fresh grace.
    """
    if record.step is None:
        return None
    index, started_at = record.step
    return index, max(0.0, time.time() - started_at)


def recover(
    record: JobRecord,
    journal: Journal,
    *,
    reason: str,
    policy: Policy | None = None,
    protected: Sequence[int] = (),
    on_start: Callable[[Membership], None] | None = None,
    keeper: int | None = None,
) -> Report:
    """Terminate what is left of a recorded job; drop the record once it is empty."""
    membership = membership_for(record, protected, keeper)
    try:
        if on_start is not None:
            on_start(membership)
        report = terminate(
            membership,
            policy if policy is not None else record.policy,
            job_id=record.job_id,
            reason=reason,
            resume=_resume_point(record) if policy is None else None,
        )
    finally:
        membership.close()
    if report.complete:
        if membership.cgroup is not None:
            membership.cgroup.remove()
        journal.remove(record.job_id)
    return report
