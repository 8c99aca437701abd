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

from tether.prune.scan import PROC, parse_status
from tether.tracking.base import Table


def processes_with_supplementary_gid(gid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live process with ``gid`` on its ``Groups:`` line.

    Each process is read through a ``/proc/PID`` directory fd, so the start
    time and the groups describe the same process.
    """
    from tether.linux import procfs

    if gid < 0:
        raise ValueError(f"not a gid: {gid}")
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
