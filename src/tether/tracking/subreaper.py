"""Subreaper tracker: orphans re-parent to the supervisor, not to init.

With PR_SET_CHILD_SUBREAPER set on a supervisor that runs nothing but the job,
every process the job ever starts stays in the supervisor's subtree: a
double-forked daemon is adopted by the supervisor instead of init, so the
parent-link walk from the supervisor stays complete.
"""

from __future__ import annotations

from tether.tracking.base import Table

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


class SubreaperTracker:
    name = "subreaper"

    def __init__(self, supervisor_pid: int, supervisor_starttime: int | None = None) -> None:
        self.supervisor_pid = supervisor_pid
        #: A supervisor other than this process (a job keeper): its children
        #: count only while it is that process, alive (its pid may be reused).
        self.supervisor_starttime = supervisor_starttime

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        if self.supervisor_starttime is not None:
            sup = table.get(self.supervisor_pid)
            if sup is None or not sup.is_alive_as(self.supervisor_starttime):
                return []
        return [p.pid for p in table.values() if p.ppid == self.supervisor_pid]
