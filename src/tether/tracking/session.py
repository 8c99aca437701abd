"""Session / process-group tracker: members that kept the job's sid or pgid."""

from __future__ import annotations

from collections.abc import Iterable

from tether.tracking.base import Table


class SessionTracker:
    name = "session"

    def __init__(self, leader_pid: int, leader_starttime: int, sid: int, pgid: int) -> None:
        self.leader_pid = leader_pid
        self.leader_starttime = leader_starttime
        self.sid = sid
        self.pgid = pgid

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        # The kernel keeps a pid allocated while any process uses it as a sid
        # or pgid, so the ids can only be reused once the old session is
        # empty. A process holding the leader's pid with another start time
        # means exactly that: the ids now name a stranger's session.
        holder = table.get(self.leader_pid)
        if holder is not None and holder.starttime != self.leader_starttime:
            return ()
        return [
            p.pid
            for p in table.values()
            if (p.sid == self.sid and self.sid > 1) or (p.pgid == self.pgid and self.pgid > 1)
        ]
