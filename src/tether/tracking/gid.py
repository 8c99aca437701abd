"""Supplementary-group tracker: every process that carries a job's tag gid.

``tether run --tag-gid GID`` (root) gives the job's processes one extra
supplementary group, as SGE's ENABLE_ADDGRP_KILL does. The group survives
``setsid``, double forks, re-parenting to init and a cleared environment, and
only a process with CAP_SETGID can drop or add it, so it finds processes that
escaped their session on hosts without cgroups. It is unforgeable only if the
gid is used for nothing else: pick gids from a range that no user is a member
of in /etc/group (a member could add it with ``newgrp``/``sg``).

Linux only: the groups are read from ``/proc/PID/status``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tether.errors import UsageError
from tether.identity import Identity
from tether.tracking.base import Table


def supplementary_groups(status: bytes) -> tuple[int, ...]:
    """The gids on the ``Groups:`` line of a ``/proc/PID/status``."""
    for line in status.splitlines():
        if line.startswith(b"Groups:"):
            return tuple(int(g) for g in line[len(b"Groups:") :].split())
    return ()


def processes_with_supplementary_gid(gid: int) -> list[Identity]:
    """Every live process with ``gid`` on its ``Groups:`` line, sorted.

    Each process is read through a ``/proc/PID`` directory fd, so the start
    time and the groups describe the same process. Zombies and kernel threads
    are left out.
    """
    from tether._platform.linux import procfs

    if gid < 0:
        raise UsageError(f"not a group id: {gid}")
    out: list[Identity] = []
    for pid in procfs.pids():
        try:
            with procfs.ProcDir(pid) as d:
                if gid not in supplementary_groups(d.read("status")):
                    continue
                st = d.stat()
        except (procfs.ProcessGone, PermissionError, ProcessLookupError, ValueError):
            # Gone, or hidden from us (hidepid). Any other failure (EMFILE)
            # is raised: a process that kept the tag is the job's, and the
            # pruner would take it for a stray.
            continue
        if st.state not in ("Z", "X") and not st.is_kernel_thread:
            out.append(Identity(st.pid, st.starttime))
    return sorted(out)


class GidTracker:
    """Tracker (for a :class:`~tether.membership.Membership`): processes carrying a gid."""

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
