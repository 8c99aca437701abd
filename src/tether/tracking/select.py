"""Choosing trackers: probe each capability once, record why others were not used."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field

from tether.errors import UsageError
from tether.linux import cgroupfs, prctl
from tether.linux.cgroupfs import JobCgroup
from tether.process import IS_LINUX
from tether.tracking.base import TRACKER_NAMES, TrackerStatus


def parse_tracker_names(spec: str | Collection[str] | None) -> frozenset[str]:
    """``"auto"``/None -> all; ``"cgroup,session"`` or a list -> those (validated)."""
    if spec is None or spec == "auto":
        return frozenset(TRACKER_NAMES)
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in TRACKER_NAMES]
    if unknown or not names:
        given = ", ".join(unknown) or "(none)"
        raise UsageError(f"unknown tracker {given}; choose from {', '.join(TRACKER_NAMES)}")
    return frozenset(names)


@dataclass
class Selection:
    """What a job will use: its cgroup (if any), subreaper, and every status line."""

    wanted: frozenset[str]
    cgroup: JobCgroup | None = None
    subreaper: bool = False
    statuses: list[TrackerStatus] = field(default_factory=list)

    def used(self, name: str) -> bool:
        return any(s.name == name and s.used for s in self.statuses)

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


def select_trackers(wanted: frozenset[str], job_id: str, *, dedicated: bool) -> Selection:
    """Probe and set up the trackers for a new job, strongest first."""
    sel = Selection(wanted)

    def status(name: str, used: bool, reason: str) -> None:
        sel.statuses.append(TrackerStatus(name, used, reason))

    if "cgroup" not in wanted:
        status("cgroup", False, "not requested")
    elif not IS_LINUX:
        status("cgroup", False, "cgroups exist only on Linux")
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
    elif not IS_LINUX:
        status("subreaper", False, "PR_SET_CHILD_SUBREAPER exists only on Linux")
    elif not dedicated:
        status(
            "subreaper",
            False,
            "the supervising process has children of its own; "
            "pass dedicated_supervisor=True if it runs nothing but this job",
        )
    else:
        try:
            prctl.set_child_subreaper(True)
            sel.subreaper = True
            status("subreaper", True, f"orphans re-parent to tether (pid {os.getpid()})")
        except OSError as err:
            status("subreaper", False, f"prctl failed: {err.strerror}")

    for name, reason in (
        ("session", "own session and process group"),
        ("cookie", "TETHER_JOB_ID in the job's environment"),
        ("walk", "children of every process seen as a member"),
    ):
        if name not in wanted:
            status(name, False, "not requested")
        elif name == "cookie" and not IS_LINUX:
            status(name, False, "process environments are readable only on Linux")
        else:
            status(name, True, reason)
    return sel
