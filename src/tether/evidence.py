"""What counts as evidence that a process belongs to a job (docs/security.md).

Every rule of the evidence table lives here, and the trackers and
:class:`~tether.membership.Membership` ask these functions instead of deciding
for themselves:

- A **cookie** (``TETHER_JOB_ID`` in the environment) is forgeable by anyone
  who can start a process, and readable by anyone who can read the watchdog's
  argv or a cgroup path. It is evidence only for a process whose real *and*
  effective uid are the job owner's, so it never widens a job across uids.
  ``tether kill PID``/``tether ps PID`` follow a foreign target's cookie only
  when it names a job in the caller's own journal or the target sits in that
  job's cgroup, and then only for the target's own uid.
- A **session or process group** id names the job only while the recorded
  leader identity is alive: the kernel frees the pid once the old session is
  empty, and a stranger's ``setsid()`` may get it. With the leader gone and
  no recorded member left in it, only processes recorded by identity count.
- A member only a cookie ties to the job (or a descendant of one) is killed
  with the job but never waited for (``--wait-leftovers``).
"""

from __future__ import annotations

import os

from tether.identity import Identity
from tether.process import ProcessInfo, read_process

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

#: Trackers whose word alone is forgeable: the cookie, and the walk from it.
WEAK_TRACKERS = frozenset({"cookie"})

#: The longest cookie tether writes (new_cookie: 24 hex digits; remote agents
#: prefix it).
COOKIE_MAX = 64


def valid_cookie(value: str) -> bool:
    """Could tether have written this cookie? (Safe as a journal file name.)

    ``[0-9A-Za-z][0-9A-Za-z_-]{0,63}``, checked without re (~5 ms of a
    start): anything else read from an environment is data, not a journal
    name. ASCII first: str.isalnum() alone takes any script's letters."""
    return (
        0 < len(value) <= COOKIE_MAX
        and value.isascii()
        and value[0].isalnum()
        and (len(value) == 1 or value[1:].replace("_", "a").replace("-", "a").isalnum())
    )


def process_uid(info: ProcessInfo) -> int | None:
    """The uid a process runs as: real and effective agree, else None."""
    uids = info.uids
    if uids is None:
        fresh = read_process(info.pid, ("uids",))
        if fresh is None or fresh.starttime != info.starttime or fresh.uids is None:
            return None
        uids = fresh.uids
    return uids[0] if uids[0] == uids[1] else None


def cookie_counts(info: ProcessInfo, owner_uid: int) -> bool:
    """A process carrying a job's cookie is a member only if it runs as the job's owner."""
    return process_uid(info) == owner_uid


def tree_cookie(target: ProcessInfo, cookie: str) -> tuple[int | None, str]:
    """May ``tether kill``/``ps`` of a foreign ``target`` follow its cookie?

    Returns the uid the cookie is evidence for (the target's), or None, and
    why. The cookie must name a job in the caller's own journal, or the
    target must be in that job's cgroup (``tether-<cookie>``).
    """
    uid = process_uid(target)
    if uid is None:
        return None, f"pid {target.pid} runs with differing real and effective uids"
    if not valid_cookie(cookie):
        return None, f"pid {target.pid} carries a malformed cookie: ignored"
    if _in_job_cgroup(target, cookie):
        return uid, f"pid {target.pid} is in the cgroup of job {cookie} (uid {uid} only)"
    from tether.journal import JobRecord, Journal

    journal = Journal.default()
    try:
        record = journal.read(cookie)
    except Exception:  # an unusable journal is no corroboration, never a crash
        record = None
    finally:
        journal.close()
    if isinstance(record, JobRecord) and record.cookie == cookie:
        return uid, f"pid {target.pid} carries the cookie of job {cookie} (uid {uid} only)"
    return None, (
        f"pid {target.pid} carries a cookie that names no job in this user's journal "
        "and no tracker corroborates it: not followed"
    )


def _in_job_cgroup(target: ProcessInfo, cookie: str) -> bool:
    cgroup = target.cgroup
    if cgroup is None:
        fresh = read_process(target.pid, ("cgroup",))
        if fresh is None or fresh.starttime != target.starttime:
            return False
        cgroup = fresh.cgroup
    return cgroup is not None and os.path.basename(cgroup.rstrip("/")) == f"tether-{cookie}"


def session_is_jobs(
    leader_alive: bool, in_session: Collection[ProcessInfo], recorded: Collection[Identity]
) -> bool:
    """Do the job's session/group ids still name the job's session/group?

    The kernel keeps a pid reserved while any process uses it as a sid or
    pgid, so the ids name the job's own session for as long as one process
    known to be the job's (the leader, or a recorded member) is still in it.
    Once none is, the session may have emptied and the pid gone to a
    stranger's setsid(): then only recorded members count.
    """
    return leader_alive or any(p.identity in recorded for p in in_session)
