"""Session / process-group tracker: members that kept the job's sid or pgid."""

from __future__ import annotations

from tether.evidence import session_is_jobs
from tether.identity import Identity
from tether.tracking.base import Table

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


class SessionTracker:
    name = "session"

    def __init__(
        self,
        leader_pid: int,
        leader_starttime: int,
        sid: int,
        pgid: int,
        recorded: Iterable[Identity] = (),
    ) -> None:
        self.leader_pid = leader_pid
        self.leader_starttime = leader_starttime
        self.sid = sid
        self.pgid = pgid
        # Session members seen while the leader lived, and those a journal
        # recorded: the only ones the ids still vouch for once it is gone.
        self.recorded: set[Identity] = set(recorded)

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        # The kernel keeps a pid allocated while any process uses it as a sid
        # or pgid, so the ids can only be reused once the old session is
        # empty — and then a stranger's setsid() may take them. Whether it has
        # cannot be told from the table alone (tether.evidence.session_is_jobs).
        holder = table.get(self.leader_pid)
        leader_alive = holder is not None and holder.starttime == self.leader_starttime
        in_session = [
            p
            for p in table.values()
            if (p.sid == self.sid and self.sid > 1) or (p.pgid == self.pgid and self.pgid > 1)
        ]
        if session_is_jobs(leader_alive, in_session, self.recorded):
            self.recorded.update(p.identity for p in in_session)
            return [p.pid for p in in_session]
        return [p.pid for p in in_session if p.identity in self.recorded]
