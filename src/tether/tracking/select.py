"""Choosing trackers: probe each capability once, record why others were not used."""

from __future__ import annotations

import os

from tether._platform import HAS_CGROUPS, HAS_ENVIRON, HAS_SUBREAPER
from tether._platform import NAME as BACKEND
from tether._platform.linux import cgroupfs
from tether._platform.linux.cgroupfs import JobCgroup
from tether._records import dataclass, field
from tether.errors import TrackerError
from tether.identity import Identity
from tether.tracking.base import TRACKER_NAMES, Tracker, TrackerStatus, parse_tracker_names

__all__ = ["Selection", "parse_tracker_names", "select_trackers"]


@dataclass
class Selection:
    """What a job will use: its cgroup (if any), subreaper, tag gid, and every
    status line. The tracker objects need the leader, so :meth:`trackers`
    builds them once it runs."""

    wanted: frozenset[str]
    cgroup: JobCgroup | None = None
    subreaper: bool = False
    #: The job keeper that is the job's subreaper (library jobs), once it runs;
    #: None while the subreaper is this process (a dedicated supervisor).
    keeper_pid: int | None = None
    keeper_starttime: int | None = None
    #: Scans read the keeper's subtree only (the cookie was not asked for by name).
    subtree_only: bool = False
    tag_gid: int | None = None
    statuses: list[TrackerStatus] = field(default_factory=list)

    def used(self, name: str) -> bool:
        return any(s.name == name and s.used for s in self.statuses)

    def trackers(self, leader: Identity, cookie: str) -> list[Tracker]:
        """The trackers of a job whose leader (session leader too) is ``leader``."""
        from tether.tracking.cgroup import CgroupTracker
        from tether.tracking.cookie import CookieTracker
        from tether.tracking.session import SessionTracker
        from tether.tracking.subreaper import SubreaperTracker

        chosen: list[Tracker] = []
        if self.cgroup is not None:
            chosen.append(CgroupTracker(self.cgroup))
        if self.subreaper:
            if self.keeper_pid is not None:
                chosen.append(SubreaperTracker(self.keeper_pid, self.keeper_starttime))
            else:
                chosen.append(SubreaperTracker(os.getpid()))
        if self.used("session"):
            chosen.append(SessionTracker(leader.pid, leader.starttime, leader.pid, leader.pid))
        if self.used("cookie"):
            chosen.append(CookieTracker(cookie, not_before=leader.starttime))
        if self.tag_gid is not None:
            from tether.tracking.gid import GidTracker

            chosen.append(GidTracker(self.tag_gid))
        return chosen

    def caveats(self) -> list[str]:
        out = []
        if not self.used("cgroup"):
            out.append(
                "without a cgroup, a process that forks and exits faster than a scan "
                "(a pid hopper) cannot be ruled out; completion was judged by pidfds and a rescan"
            )
        if not self.used("subreaper"):
            out.append(
                "without a subreaper, a double-forked process that also left the session and "
                "cleared its environment (env -i) re-parents to init unseen"
            )
        if self.subtree_only:
            out.append(
                "the job keeper (subreaper) holds every process the job forks; a process "
                "started for it by a daemon outside its tree (at, systemd-run) is not looked "
                "for: name the cookie tracker to search every environment"
            )
        if self.used("cookie") and os.geteuid() != 0:
            out.append(
                "as a non-root user, environments of other users' processes are unreadable: "
                "a member that changed uid (setuid) is found only by its session or parent"
            )
        return out


_cgroup_probe: list[cgroupfs.CgroupProbe] = []


def cgroup_probe() -> cgroupfs.CgroupProbe:
    if not _cgroup_probe:
        _cgroup_probe.append(cgroupfs.probe())
    return _cgroup_probe[0]


def select_trackers(
    asked: frozenset[str] | None,
    job_id: str,
    *,
    dedicated: bool,
    tag_gid: int | None = None,
    keeper: bool = False,
) -> Selection:
    """Probe and set up the trackers for a new job, strongest first.

    ``asked`` None (auto) takes what can be used and records why the rest
    cannot; a set names trackers that must all work: one that cannot is a
    :class:`TrackerError` (nothing was started, the cgroup is removed).
    """
    wanted = frozenset(TRACKER_NAMES) if asked is None else asked
    # auto (None) with a keeper: scans may read the keeper's subtree only.
    sel = Selection(wanted, tag_gid=tag_gid, subtree_only=keeper and asked is None)
    try:
        _probe(sel, job_id, dedicated=dedicated, keeper=keeper)
    except BaseException:
        if sel.cgroup is not None:
            sel.cgroup.remove()
        raise
    if asked is not None:
        refused = [s for s in sel.statuses if s.name in asked and not s.used]
        if refused:
            if sel.cgroup is not None:
                sel.cgroup.remove()
            raise TrackerError(
                "tracker "
                + "; ".join(
                    f"{s.name} was asked for but cannot be used: {s.reason}" for s in refused
                )
                + " (use --trackers auto to run with what is available, said in the report)"
            )
    if tag_gid is not None:
        sel.statuses.append(
            TrackerStatus("gid", True, f"supplementary group {tag_gid} on every process")
        )
    return sel


def _probe(sel: Selection, job_id: str, *, dedicated: bool, keeper: bool = False) -> None:
    wanted = sel.wanted

    def status(name: str, used: bool, reason: str) -> None:
        sel.statuses.append(TrackerStatus(name, used, reason))

    if "cgroup" not in wanted:
        status("cgroup", False, "not requested")
    elif not HAS_CGROUPS:
        status("cgroup", False, f"the {BACKEND} process backend has no cgroups")
    else:
        probe = cgroup_probe()
        if probe.parent is None:
            status("cgroup", False, probe.reason)
        else:
            try:
                sel.cgroup = JobCgroup.create(probe.parent, f"tether-{job_id}")
                status("cgroup", True, sel.cgroup.path)
            except OSError as err:
                status("cgroup", False, f"cannot create a cgroup in {probe.parent}: {err.strerror}")

    if "subreaper" not in wanted:
        status("subreaper", False, "not requested")
    elif not HAS_SUBREAPER:
        status("subreaper", False, f"the {BACKEND} process backend has no subreaper")
    elif keeper:
        # tether.keeper: the job's parent is a job keeper that runs nothing
        # but this job and sets PR_SET_CHILD_SUBREAPER before starting it.
        sel.subreaper = True
        status("subreaper", True, "orphans re-parent to the job's keeper process (its parent)")
    elif not dedicated:
        status(
            "subreaper",
            False,
            "the supervising process has children of its own; "
            "pass dedicated_supervisor=True if it runs nothing but this job",
        )
    else:
        # ctypes (~2 ms of imports) only for the process that becomes a subreaper.
        from tether._platform.linux import prctl

        try:
            prctl.set_child_subreaper(True)
            sel.subreaper = True
            status("subreaper", True, f"orphans re-parent to tether (pid {os.getpid()})")
        except OSError as err:
            status("subreaper", False, f"prctl failed: {err.strerror}")

    if keeper and sel.subreaper and sel.subtree_only:
        # auto: the keeper's subtree is the job; reading every environment on
        # the system for a cookie would cost more than the job itself.
        wanted = wanted - {"cookie"}
        status(
            "cookie",
            False,
            "not needed: the job keeper holds every process the job forks "
            "(scans read its subtree; name cookie to search every environment)",
        )
    else:
        sel.subtree_only = False
    for name, reason in (
        ("session", "own session and process group"),
        ("cookie", "TETHER_JOB_ID in the job's environment"),
        ("walk", "children of every process seen as a member"),
    ):
        if name == "cookie" and sel.subtree_only:
            continue
        if name not in wanted:
            status(name, False, "not requested")
        elif name == "cookie" and not HAS_ENVIRON:
            status(name, False, f"the {BACKEND} process backend cannot read environments")
        else:
            status(name, True, reason)
