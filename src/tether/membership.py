"""The real :class:`~tether.terminate.Target`: trackers over the live process table.

Membership combines the active trackers on each scan, opens a verified
handle (pidfd) for every new member, and judges completion by the kernel:
cgroup ``populated 0`` and every member's pidfd readable.
"""

from __future__ import annotations

import os
import resource
import select
import time

from tether import _signals
from tether._once import once
from tether._platform import HAS_PIDFD
from tether._platform.linux import (
    capture,
    exited_pidfds,
    open_process_info,
    parse_captured,
)
from tether._platform.linux.cgroupfs import JobCgroup
from tether._platform.linux.procfs import (
    OUT_OF_DESCRIPTORS,
    kernel_thread,
    parse_cmdline,
    split_stat,
)
from tether._records import NamedTuple
from tether.errors import NoSuchProcessError, UnsafeTargetError, UsageError
from tether.evidence import WEAK_TRACKERS, tree_cookie
from tether.identity import Identity
from tether.process import (
    Delivery,
    ProcessHandle,
    ProcessInfo,
    ancestors,
    read_environ,
    read_process,
    snapshot,
    starttime_to_epoch,
)
from tether.tracking.base import Table, Tracker, TrackerStatus
from tether.tracking.cgroup import CgroupTracker
from tether.tracking.cookie import COOKIE_VAR, CookieTracker
from tether.tracking.session import SessionTracker
from tether.tracking.walk import WalkTracker

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from tether.journal import JobRecord
    from tether.report import Survivor
    from tether.terminate import Member
    from tether.tracking.select import Selection

#: Rounds of the SIGSTOP sweep before giving up on a tree that keeps growing.
STOP_SWEEP_ROUNDS = 30
#: Longest wait, after cgroup.kill, for the cgroup to empty before the scan
#: for members outside it.
KILL_SETTLE = 0.25
#: Rounds of the kill's wait on the youngest new member's pidfd before it
#: waits on every pidfd left (Membership._wait_killed).
KILL_WAIT_LAST_ROUNDS = 4


class Membership:
    """Members of one job (or one tree), found by trackers, held by pidfds."""

    def __init__(
        self,
        trackers: Sequence[Tracker],
        statuses: Sequence[TrackerStatus],
        *,
        not_before: int,
        leader: tuple[int, int] | None,
        cgroup: JobCgroup | None = None,
        walk_roots: Sequence[tuple[int, int]] = (),
        cookie: str | None = None,
        job_id: str = "",
        caveats: Sequence[str] = (),
        reap_all_children: bool = False,
        reap_leader: Callable[[], None] | None = None,
        wake_fd: int | None = None,
        on_new_members: Callable[[Sequence[Member]], None] | None = None,
        admit: Callable[[ProcessInfo], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        subtree_root: tuple[int, int] | None = None,
    ) -> None:
        _raise_fd_limit()
        # Every member is a descendant of this subreaper (a job keeper), so a
        # scan reads its subtree, not the whole process table.
        self._subtree_root = subtree_root
        self._admit = admit
        self._trackers = list(trackers)
        self._walk = WalkTracker(walk_roots)
        self._statuses = tuple(statuses)
        self._caveats = tuple(caveats)
        #: Pids of the frozen cgroup that a capture could not read, each with
        #: the start times of the members known by that pid then (see
        #: :meth:`_note_unread`).
        self._unread: dict[int, frozenset[int]] = {}
        self.not_before = not_before
        self.leader = leader
        self.cgroup = cgroup
        self.cookie = cookie
        self.job_id = job_id
        self._reap_all = reap_all_children
        self._reap_leader = reap_leader
        self._wake_fd = wake_fd
        self._on_new_members = on_new_members
        self._clock = clock
        self._me = os.getpid()
        # Never a member: tether itself and every ancestor (they may share the
        # job's uid, or even its session when `tether kill` runs from a shell).
        self._protected = {0, 1, self._me}
        # Read at the first candidate other than the leader (whom tether
        # started, so no ancestor): a job that forks nothing never reads them.
        self._ancestors: set[int] | None = None
        #: for_job: this process (or its keeper) started the leader, so the
        #: leader is no ancestor of it (for a record or a tree, it may be).
        self._leader_started_here = False
        # Whether the cgroup holds none of tether and its ancestors (asked at
        # the first freeze, kill or emptiness check that needs the answer).
        self._cgroup_spares_us: bool | None = None
        self._by_identity: dict[tuple[int, int], Member] = {}
        self._handles: dict[Member, ProcessHandle] = {}
        self._ppid: dict[Member, int] = {}
        self._weak: set[Member] = set()
        self._in_cgroup: set[int] = set()
        self._stopped: list[Member] = []
        self._frozen = False
        # The last scan began with every member already exited and found no
        # new one: the proof wait_empty needs, until something new is learnt.
        self._settled = False
        # Frozen by a SIGSTOP sweep whose last scan found no new member (and,
        # after the thaw, every member killed while stopped): that scan stands.
        self._swept = False
        self._ns_init: dict[Member, bool] = {}

    # -- constructors: every Membership is built by one of these -----------

    @classmethod
    def for_job(
        cls,
        selection: Selection,
        leader: Identity,
        *,
        job_id: str,
        reap_leader: Callable[[], None] | None = None,
        wake_fd: int | None = None,
        on_new_members: Callable[[Sequence[Member]], None] | None = None,
    ) -> Membership:
        """A job tether started: the trackers ``selection`` chose, from ``leader`` on."""
        membership = cls(
            selection.trackers(leader, cookie=job_id),
            selection.statuses,
            not_before=leader.starttime,
            leader=leader,
            cgroup=selection.cgroup,
            walk_roots=[leader] if "walk" in selection.wanted else [],
            cookie=job_id,
            job_id=job_id,
            caveats=selection.caveats(),
            # A job keeper reaps its own children; this process has others.
            reap_all_children=selection.subreaper and selection.keeper_pid is None,
            reap_leader=reap_leader,
            wake_fd=wake_fd,
            on_new_members=on_new_members,
            subtree_root=(
                (selection.keeper_pid, selection.keeper_starttime)
                if selection.subtree_only
                and selection.keeper_pid is not None
                and selection.keeper_starttime is not None
                else None
            ),
        )
        membership._leader_started_here = True
        return membership

    @classmethod
    def for_tree(cls, pid: int) -> tuple[Membership, ProcessInfo]:
        """The tree rooted at ``pid``, a process tether did not start (best effort).

        Raises:
            UnsafeTargetError: pid <= 1, tether itself, an ancestor, a kernel thread.
            NoSuchProcessError: no such process.
        """
        info = check_target(pid)
        me = read_process(os.getpid())
        assert me is not None
        statuses: list[TrackerStatus] = [
            TrackerStatus("cgroup", False, f"pid {pid} was not started by tether in a cgroup"),
            TrackerStatus("subreaper", False, f"pid {pid} is not a child of tether"),
        ]
        trackers: list[Tracker] = []
        sid = info.sid if info.sid == pid and info.sid != me.sid else 0
        pgid = info.pgid if info.pgid == pid and info.pgid != me.pgid else 0
        if sid or pgid:
            trackers.append(SessionTracker(pid, info.starttime, sid, pgid))
            what = " and ".join(
                w for w, on in ((f"session {sid}", sid), (f"process group {pgid}", pgid)) if on
            )
            statuses.append(TrackerStatus("session", True, f"pid {pid} leads {what}"))
        else:
            statuses.append(
                TrackerStatus("session", False, f"pid {pid} leads no session or group of its own")
            )
        env = read_environ(pid, info.starttime)
        cookie = None
        if env is not None:
            for entry in env.split(b"\0"):
                if entry.startswith(COOKIE_VAR.encode() + b"="):
                    cookie = entry.split(b"=", 1)[1].decode(errors="replace")
        # The target's cookie is its own claim: followed only as
        # tether.evidence.tree_cookie allows, and only for the target's uid.
        cookie_uid, why = tree_cookie(info, cookie) if cookie else (None, "")
        if cookie and cookie_uid is not None:
            trackers.append(CookieTracker(cookie, not_before=info.starttime, owner_uid=cookie_uid))
            statuses.append(TrackerStatus("cookie", True, why))
        else:
            if not cookie:
                why = f"no {COOKIE_VAR} in its environment"
                why = f"pid {pid}: {'environment unreadable' if env is None else why}"
            statuses.append(TrackerStatus("cookie", False, why))
        statuses.append(TrackerStatus("walk", True, f"descendants of pid {pid}"))
        membership = cls(
            trackers,
            statuses,
            not_before=info.starttime,
            leader=info.identity,
            walk_roots=[info.identity],
            job_id=f"pid-{pid}",
            caveats=[
                "a tree tether did not start has no cgroup or subreaper: descendants that were "
                "re-parented to init before this call, left the session and carry no cookie "
                "cannot be found",
            ],
        )
        return membership, info

    @classmethod
    def for_identities(
        cls,
        identities: Sequence[Identity],
        *,
        name: str,
        why: str,
        job_id: str,
        admit: Callable[[ProcessInfo], bool],
        caveats: Sequence[str] = (),
    ) -> Membership:
        """Exactly these processes (and what they fork while being terminated),
        each admitted only if ``admit`` says so (the pruner's uid floor)."""
        return cls(
            [_IdentityTracker(name, identities)],
            [
                TrackerStatus(name, True, why),
                TrackerStatus("walk", True, "children they fork while being terminated"),
            ],
            not_before=0,
            leader=None,
            walk_roots=identities,
            job_id=job_id,
            caveats=caveats,
            admit=admit,
        )

    @classmethod
    def for_gid(cls, gid: int) -> Membership:
        """Every process carrying supplementary group ``gid`` (``tether kill --gid``).

        tether itself, its ancestors, pid 1 and kernel threads are never members.
        """
        from tether.tracking.gid import GidTracker

        if gid < 0:
            raise UsageError(f"not a group id: {gid}")
        return cls(
            [GidTracker(gid)],
            [
                TrackerStatus("gid", True, f"processes with supplementary group {gid}"),
                TrackerStatus("walk", True, "children they fork while being terminated"),
            ],
            not_before=0,
            leader=None,
            job_id=f"gid-{gid}",
            caveats=[
                f"group {gid} finds only processes that kept it: a process that dropped its "
                "supplementary groups (with CAP_SETGID) is not found",
            ],
        )

    @classmethod
    def for_record(
        cls,
        record: JobRecord,
        *,
        cgroup: JobCgroup | None,
        cgroup_status: str,
        protected: Sequence[int] = (),
        keeper: int | None = None,
    ) -> Membership:
        """A journaled job whose supervisor is gone: trackers rebuilt from its
        record (no subreaper: its holder is gone — unless this process is the
        job's ``keeper``, the subreaper that holds its orphans still). ``cgroup``
        is the record's cgroup once verified (see
        :func:`tether.recovery.membership_for`)."""
        trackers: list[Tracker] = []
        statuses: list[TrackerStatus] = []
        if cgroup is not None:
            trackers.append(CgroupTracker(cgroup))
        statuses.append(TrackerStatus("cgroup", cgroup is not None, cgroup_status))
        if keeper is not None:
            from tether.tracking.subreaper import SubreaperTracker

            trackers.append(SubreaperTracker(keeper))
            why = f"orphans re-parented to the job's keeper (pid {keeper}), which recovers it"
            statuses.append(TrackerStatus("subreaper", True, why))
        else:
            statuses.append(
                TrackerStatus("subreaper", False, "the supervisor that held orphans is gone")
            )
        if record.leader is not None and record.sid is not None:
            leader = record.leader
            trackers.append(
                SessionTracker(
                    leader.pid, leader.starttime, record.sid, leader.pid, recorded=record.members
                )
            )
            why = f"session {record.sid} (while a recorded member is in it)"
            statuses.append(TrackerStatus("session", True, why))
        else:
            statuses.append(TrackerStatus("session", False, "the leader was never recorded"))
        if record.tag_gid is not None:
            from tether.tracking.gid import GidTracker

            trackers.append(GidTracker(record.tag_gid))
            statuses.append(TrackerStatus("gid", True, f"supplementary group {record.tag_gid}"))
        trackers.append(
            CookieTracker(record.cookie, not_before=record.not_before, owner_uid=record.owner_uid)
        )
        statuses.append(
            TrackerStatus(
                "cookie", True, f"TETHER_JOB_ID in the environment of uid {record.owner_uid}"
            )
        )
        roots = [*([record.leader] if record.leader else []), *record.members]
        statuses.append(
            TrackerStatus("walk", True, f"descendants of {len(roots)} recorded members")
        )
        caveats = [
            "recovered from the journal after the supervisor died: orphans it held as "
            "subreaper were re-parented; members are found by cgroup, session, cookie "
            "and recorded identities"
        ]
        if cgroup is None:
            caveats.append(
                "without a cgroup, a member that left the session, cleared its environment "
                "and was never recorded by a scan cannot be found"
            )
        membership = cls(
            trackers,
            statuses,
            not_before=record.not_before,
            leader=record.leader,
            cgroup=cgroup,
            walk_roots=roots,
            cookie=record.cookie,
            job_id=record.job_id,
            caveats=caveats,
            # The keeper runs nothing but this job: every child it has is one.
            reap_all_children=keeper is not None,
        )
        membership.protect(protected)
        return membership

    def protect(self, pids: Iterable[int]) -> None:
        """Never treat these as members (tether's own helpers, e.g. the watchdog)."""
        self._protected.update(pids)

    # -- finding members -------------------------------------------------

    def _cgroup_acts_alone(self) -> bool:
        """cgroup.freeze, cgroup.kill and "populated" speak for the whole
        cgroup: they stand for the job only if neither tether nor one of its
        ancestors is inside. `tether reap` run from within the job it reaps
        would otherwise freeze itself for ever, or kill its own shell; its
        members are then stopped and killed one by one, as without a cgroup."""
        if self.cgroup is None:
            return False
        if self._cgroup_spares_us is None:
            # Raised, not taken for "none of us inside" (and kept): an
            # unlisted cgroup that held our shell would be frozen or killed
            # whole. (A removed cgroup lists empty.)
            inside = set(self.cgroup.procs())
            if self._ancestors is None:
                self._ancestors = set(ancestors(self._me))
            self._cgroup_spares_us = not inside & (self._protected | self._ancestors)
        return self._cgroup_spares_us

    def _is_protected(self, pid: int, starttime: int) -> bool:
        if pid in self._protected:
            return True
        if self._leader_started_here and (pid, starttime) == self.leader:
            return False
        if self._ancestors is None:
            self._ancestors = set(ancestors(self._me))
        return pid in self._ancestors

    def _allowed(self, info: ProcessInfo) -> bool:
        return (
            not self._is_protected(info.pid, info.starttime)
            and not info.kernel_thread
            and info.starttime >= self.not_before
            and (self._admit is None or self._admit(info))
        )

    def scan(self, *, leader_exited: bool = False) -> Sequence[Member]:
        """Read the table and take in new members; every member so far.

        ``leader_exited``: the caller saw the leader exit (its pidfd) before
        this call. Found only now, the leader is still no pid hopper this scan
        could miss the successor of: it exited before the table was read, as a
        member known earlier would have (so this scan can settle the tree).
        """
        if self._swept:
            self._mark_exits()
            return self.known()
        # Judged before the table is read: a member that exits afterwards may
        # have forked a successor the table does not hold (a pid hopper). No
        # reaping here: a zombie leader still vouches for its session.
        settled = not self._mark_exits()
        table = self._table()
        found = self._find(table)
        self._in_cgroup = {pid for pid, names in found.items() if "cgroup" in names}
        new: list[Member] = []
        weak_pids = {m.pid for m in self._weak}
        # Oldest first, so a parent's weakness is known before its children's.
        for pid, names in sorted(found.items(), key=lambda kv: table[kv[0]].starttime):
            info = table[pid]
            member = self._by_identity.get(info.identity)
            if member is None:
                member = self._adopt(info, names)
                if member is None:
                    continue
                new.append(member)
                # Only a cookie (or the walk from such a member) ties it to
                # the job: killed with it, never waited for (evidence.py).
                if (
                    names <= WEAK_TRACKERS | {"walk"}
                    and (names & WEAK_TRACKERS or info.ppid in weak_pids)
                    and info.identity not in self._walk.roots
                ):
                    self._weak.add(member)
                    weak_pids.add(pid)
            else:
                member.found_by |= names
                if names - WEAK_TRACKERS - {"walk"}:
                    self._weak.discard(member)
            self._ppid[member] = info.ppid
        self._walk.remember(self._by_identity)
        if new and self._on_new_members is not None:
            self._on_new_members(new)
        self._settled = settled and all(leader_exited and m.is_leader for m in new)
        self._poll_exits(0)
        return list(self._by_identity.values())

    def _table(self) -> Table:
        if self._subtree_root is not None:
            from tether._platform.linux import subtree

            pid, starttime = self._subtree_root
            table = subtree(pid, root_starttime=starttime, root_single_threaded=True)
            if table is not None:
                return table
            # Whole-table scans from now on. If the job keeper is gone
            # (killed), what it had adopted went to the keeper or init, out
            # of its subtree, and its pid may be a stranger's: said.
            self._subtree_root = None
            root = read_process(pid, ())
            if root is None or not root.is_alive_as(starttime):
                self._caveats = (
                    *self._caveats,
                    f"the job keeper (pid {pid}) exited while the job ran: processes it "
                    "had adopted (double-forked, out of the job's session and "
                    "environment) re-parented out of its subtree and cannot be ruled out",
                )
        return snapshot()

    def _find(self, table: Table) -> dict[int, set[str]]:
        """What each tracker (and the walk) finds in ``table``: pid -> tracker names."""
        found: dict[int, set[str]] = {}
        for tracker in self._trackers:
            for pid in tracker.find(table, set(found)):
                info = table.get(pid)
                if info is None:
                    # Started after the snapshot (cgroup.procs is read later).
                    info = read_process(pid)
                    if info is None:
                        continue
                    table[pid] = info
                if self._allowed(info):
                    found.setdefault(pid, set()).add(tracker.name)
        for pid in self._walk.find(table, set(found)):
            if pid in found or self._allowed(table[pid]):
                found.setdefault(pid, set()).add("walk")
        for pid in self._walk.alive_roots(table):
            if pid not in found and self._allowed(table[pid]):
                found[pid] = {"walk"}
        return found

    def known(self) -> list[Member]:
        """Every member found so far (live or not), without a rescan."""
        return list(self._by_identity.values())

    def _adopt(self, info: ProcessInfo, names: set[str]) -> Member | None:
        full: ProcessInfo | None
        if HAS_PIDFD:
            # One /proc/PID dirfd for the start time, the pidfd and the cmdline.
            opened = open_process_info(info.pid, info.starttime, ("cmdline",))
            if opened is None:
                return None
            full, fd = opened
            handle = ProcessHandle(info.pid, info.starttime, fd)
        else:
            maybe = ProcessHandle.open(info.pid, info.starttime)
            if maybe is None:
                return None
            handle = maybe
            full = handle.read(("cmdline",))
        return self._member(info, full, handle, names)

    def _member(
        self, info: ProcessInfo, full: ProcessInfo | None, handle: ProcessHandle, names: set[str]
    ) -> Member:
        identity = info.identity
        from tether.terminate import Member

        member = Member(
            pid=info.pid,
            starttime=info.starttime,
            start_time=starttime_to_epoch(info.starttime),
            cmdline=full.describe() if full is not None else f"[{info.comm}]",
            found_by=set(names),
            is_leader=self.leader == identity,
        )
        self._by_identity[identity] = member
        self._handles[member] = handle
        return member

    def namespace_inits(self, members: Sequence[Member]) -> list[Member]:
        from tether._platform import is_pid_namespace_init

        # Asked once per member: whether a process is the init of a PID
        # namespace is fixed at its creation (its pid there is 1 or not).
        for m in members:
            if m not in self._ns_init:
                self._ns_init[m] = is_pid_namespace_init(m.pid, m.starttime)
        return [m for m in members if self._ns_init[m]]

    def live(self) -> list[Member]:
        # exited_at rather than the alive property: asked of every member
        # several times a termination (a property call per member costs more).
        return [m for m in self._by_identity.values() if m.exited_at is None]

    # -- exits and reaping -----------------------------------------------

    def _mark_exits(self) -> list[Member]:
        """Mark members whose handle says exited (one poll); the live ones left."""
        live = self.live()
        fds = {self._handles[m].fileno: m for m in live}
        fds.pop(-1, None)
        for fd in exited_pidfds(fds) if fds else ():
            fds[fd].exited_at = self._clock()
        for m in live:
            if self._handles[m].fileno < 0 and self._handles[m].has_exited():
                m.exited_at = self._clock()
        return [m for m in live if m.alive]

    def _poll_exits(self, timeout: float) -> bool:
        """Mark members whose pidfd says exited; True if the wake fd fired."""
        self.reap()
        poller = select.poll()
        fds: dict[int, Member] = {}
        unpollable = []
        for m in self.live():
            fd = self._handles[m].fileno
            if fd >= 0:
                fds[fd] = m
                poller.register(fd, select.POLLIN)
            else:
                unpollable.append(m)
        if self.cgroup is not None and self.cgroup.events_fd >= 0:
            poller.register(self.cgroup.events_fd, select.POLLPRI)
        if self._wake_fd is not None:
            poller.register(self._wake_fd, select.POLLIN)
        if unpollable:
            # No pidfds (psutil backend): check identities, and poll briefly.
            for m in unpollable:
                if self._handles[m].has_exited():
                    m.exited_at = self._clock()
            timeout = min(timeout, 0.05)
        woke = False
        if fds or timeout > 0:
            for fd, _ev in poller.poll(max(0, int(timeout * 1000))):
                if fd in fds:
                    fds[fd].exited_at = self._clock()
                elif self.cgroup is not None and fd == self.cgroup.events_fd:
                    # kernfs keeps POLLPRI raised until the file is read again.
                    self.cgroup.events()
                elif fd == self._wake_fd:
                    # Drained here, or every later wait would return at once
                    # and the grace would turn into a busy rescan loop.
                    self._drain_wake()
                    woke = True
        self.reap()
        return woke

    def reap(self) -> None:
        """Reap exited children so no zombie of the job outlives it."""
        if self._reap_leader is not None:
            self._reap_leader()
        if self._reap_all:
            # Only in a supervisor that runs nothing but this job: every child
            # it has is the leader or an orphan the subreaper adopted.
            leader_pid = self.leader[0] if self.leader is not None else None
            tried_leader = False
            while True:
                try:
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    return
                if info is None or info.si_pid == 0:
                    return
                if info.si_pid == leader_pid:
                    # Popen reaps its own child so it keeps the exit status;
                    # if it cannot right now (another thread is waiting), stop.
                    if tried_leader or self._reap_leader is None:
                        return
                    self._reap_leader()
                    tried_leader = True
                    continue
                try:
                    os.waitpid(info.si_pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        else:
            for m, ppid in list(self._ppid.items()):
                # A zombie's pid cannot be reused until it is reaped, so
                # waiting for this exact pid can only collect this member.
                if ppid == self._me and not m.alive and not m.is_leader:
                    try:
                        os.waitpid(m.pid, os.WNOHANG)
                    except ChildProcessError:
                        pass

    def _confirmed_empty(self, strong_only: bool = False) -> bool:
        weak = self._weak if strong_only else ()
        for m in self._by_identity.values():
            if m.exited_at is None and m not in weak:
                return False
        # An empty cgroup is not proof alone: a leader cancelled within
        # moments of its start may still be in the shim that moves it into
        # the cgroup (outside it, but in the job's session).
        if self.cgroup is not None and self.cgroup.populated() and self._cgroup_acts_alone():
            return False
        # Every known member has exited: a fresh scan must find no new one,
        # not even one that has exited already — a pid hopper found this way
        # has always just forked its successor. The last scan is that scan if
        # it began after the last exit (nothing of the job was left to fork),
        # or if the tree was sealed (killed while stopped after it).
        if self._settled or self._swept:
            return True
        before = len(self._by_identity)
        self.scan()
        return len(self._by_identity) == before

    @property
    def confirmation(self) -> str:
        """What :meth:`wait_empty` takes as proof of an empty tree."""
        from tether._platform import HAS_PIDFD

        if self.cgroup is not None:
            return "the kernel (cgroup populated 0, every member's pidfd exited)"
        if HAS_PIDFD:
            return "the kernel (every member's pidfd exited; a fresh scan found no other)"
        return "a process-table rescan (no pidfds: exits were seen by polling)"

    def wait_empty(self, timeout: float, *, strong_only: bool = False) -> bool:
        """Wait for every member to exit; ``strong_only``: every member more
        than a cookie ties to the job (the leftovers a job may wait for)."""
        deadline = self._clock() + timeout
        woke = self._poll_exits(0)
        while True:
            if self._confirmed_empty(strong_only):
                return True
            left = deadline - self._clock()
            if left <= 0 or woke:
                return False
            # This poll marks the exits it wakes for (a tree killed without a
            # cgroup wakes it dozens of times): no second poll before the check.
            if self._poll_exits(min(left, 1.0)):
                return False

    def _drain_wake(self) -> None:
        if self._wake_fd is None:
            return
        try:
            os.read(self._wake_fd, 4096)
        except (BlockingIOError, InterruptedError):
            pass

    # -- signalling ------------------------------------------------------

    def send(self, member: Member, sig: int) -> Delivery:
        handle = self._handles.get(member)
        if handle is None or not member.alive:
            return Delivery.GONE
        result = handle.send_signal(sig)
        if result is Delivery.GONE:
            member.exited_at = self._clock()
        return result

    def kill_all(self) -> set[Member]:
        if self.cgroup is None or not self.cgroup.has_kill() or not self._cgroup_acts_alone():
            return set()
        # Kill first, identify after: what the report needs of the frozen
        # cgroup's members (start time, command line, a pidfd) is read raw
        # now, with three syscalls a file, and parsed into members after the
        # kill. (A zombie keeps no command line, so the reads themselves
        # cannot wait for it.)
        captured = self._capture_cgroup()
        try:
            self.cgroup.kill()
        except OSError:
            self._tell_new(self._adopt_captured(captured))
            return set()
        new = self._adopt_captured(captured)
        candidates = [*captured.known, *new]
        # Let the kernel finish the teardown before the engine's scan for
        # members outside the cgroup: reading /proc while a thousand
        # processes exit contends with their exit for the same locks and
        # CPUs, and a scan of the emptied table costs a tenth. Bounded: a
        # member stuck in D state must not hold back the KILL of members
        # outside the cgroup.
        emptied = self._wait_killed(candidates, KILL_SETTLE)
        # Reached by cgroup.kill: exited since, or still in the cgroup (in D
        # state). One that is neither left the cgroup between the read and
        # the kill (a root member can move itself): the engine kills it.
        handles = {self._handles[m].fileno: m for m in candidates if m.alive}
        reached = {handles[fd] for fd in exited_pidfds(fd for fd in handles if fd >= 0)}
        if not emptied:
            try:
                inside = set(self.cgroup.procs())
            except OSError:
                inside = set()
            reached.update(m for m in candidates if m.alive and m.pid in inside)
        # The journal is told only of members the kill may have missed: one
        # it reached leaves nothing for a watchdog to find through it.
        self._tell_new([m for m in new if m not in reached])
        return reached

    def _wait_killed(self, members: Sequence[Member], timeout: float) -> bool:
        """Wait until the cgroup is empty (True), at most ``timeout``.

        The members' pidfds say when to look, not cgroup.events: the kernel
        sends that file's notifications at most once per ~10 ms
        (CGROUP_FILE_NOTIFY_MIN_INTV) and the freeze has just sent one, so
        "populated 0" of a small tree reached a poll ~10 ms after the fact.
        A task leaves its cgroup before its pidfd turns readable (do_exit:
        cgroup_exit, then exit_notify), so once every member's pidfd has,
        one read of cgroup.events tells; the events are waited for only if
        something the reads did not see is still inside.

        The wait is first on one pidfd, the last of ``members`` (the
        youngest the frozen listing added: cgroup.kill signals in the
        cgroup's order, where processes that joined later come later, so it
        is usually among the last to exit), then one poll of the rest, a few rounds:
        the exits of a thousand members cost a few polls, not a thousand
        epoll registrations (~2-4 ms of CPU while the exits compete for it).
        What is still alive then is waited for as before, each pidfd once
        (one-shot): a tree that exits in another order costs a few polls more.
        """
        assert self.cgroup is not None
        deadline = self._clock() + timeout
        fds = [fd for m in members if m.alive and (fd := self._handles[m].fileno) >= 0]
        for _round in range(KILL_WAIT_LAST_ROUNDS):
            if len(fds) <= 1:
                break
            last = select.poll()
            last.register(fds[-1], select.POLLIN)
            if not last.poll(max(0, int((deadline - self._clock()) * 1000))):
                return not self.cgroup.populated()
            gone = exited_pidfds(fds)
            fds = [fd for fd in fds if fd not in gone]
        if fds:
            ep = select.epoll(len(fds))
            try:
                for fd in fds:
                    # One-shot: an exited member is reported once, not at every wake-up.
                    ep.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
                left = len(fds)
                while left:
                    wait = deadline - self._clock()
                    if wait <= 0:
                        return not self.cgroup.populated()
                    left -= len(ep.poll(wait, left))
            finally:
                ep.close()
        return self.cgroup.wait_empty(max(0.0, deadline - self._clock()))

    def _tell_new(self, new: Sequence[Member]) -> None:
        if new and self._on_new_members is not None:
            self._on_new_members(new)

    def _capture_cgroup(self) -> _Captured:
        """Raw rows of the frozen cgroup's processes not yet members."""
        assert self.cgroup is not None
        self._settled = False
        try:
            pids = self.cgroup.procs()
        except OSError as err:
            # Killed with the cgroup all the same; the report must not read
            # as if it named everything it killed.
            self._caveats = (
                *self._caveats,
                f"the job's cgroup could not be listed before cgroup.kill "
                f"({err.strerror}): what it held was killed with it, not named in this report",
            )
            return _Captured([], [], [])
        # A member not seen exited still holds its pid (a zombie's pid is
        # not reused until it is reaped, and a reaped member's pidfd polls
        # readable): the same pid in the cgroup is that member.
        self._poll_exits(0)
        self._in_cgroup.update(pids)
        # Members in this listing only: one an earlier scan saw inside may
        # have been moved out since (a root member can), and cgroup.kill will
        # not reach it (its pidfd would hold the wait to KILL_SETTLE).
        listed = set(pids)
        known = [m for m in self.live() if m.pid in listed]
        known_pids = {m.pid for m in known}
        todo = [p for p in pids if p not in known_pids]
        raw = capture(todo)
        if raw is None:
            # pidfd_open refused (a seccomp filter, or EMFILE in the Python
            # reader): dirfds, parsed at once.
            opened, unopened = self._open_each(todo)
            # Not checked against a new listing, as below: at the fd limit
            # that read fails too (and reads as an empty cgroup). Each was
            # listed frozen, and a frozen process cannot exit by itself.
            self._note_unread(unopened)
            return _Captured([], opened, known)
        try:
            inside = set(self.cgroup.procs())
        except OSError:
            # Nothing captured is proven its listed process's (a pid reused
            # by a stranger in between would be named, and signalled if it
            # outlived the kill): none is adopted. Each was listed frozen,
            # so cgroup.kill takes it; counted in the caveat unless a later
            # scan names it (as the fallback's unopened ones).
            for _pid, fd, _st, _cmd in raw:
                os.close(fd)
            self._note_unread(todo)
            return _Captured([], [], known)
        # Checked after that read: a pidfd not exited means its pid was still
        # its process's when the cgroup listed it, so the reads through the
        # pid described it and it was in the cgroup (not a stranger that got
        # the pid of a member killed from outside meanwhile).
        gone = exited_pidfds(fd for _pid, fd, _st, _cmd in raw)
        rows = []
        for pid, fd, stat, cmdline in raw:
            if pid in inside and fd not in gone:
                rows.append((pid, fd, stat, cmdline))
            else:
                os.close(fd)
        # A frozen process cannot exit by itself: one listed twice but not
        # captured was unreadable (out of fds: each open's EMFILE reads as
        # "gone"), not gone. cgroup.kill still reaches it; the report must
        # not read as if it named everything it killed.
        self._note_unread(set(todo) & inside - {pid for pid, _fd, _st, _cmd in raw})
        return _Captured(rows, [], known)

    def _note_unread(self, pids: Iterable[int]) -> None:
        """Frozen members of the cgroup not read before cgroup.kill: killed
        with it, and said in a caveat (:attr:`caveats`) unless named after
        all. A pid is reused: one an exited member had is named only by a
        member of another start time."""
        pids = set(pids) - self._unread.keys()
        if not pids:
            return  # the usual cancel: every member read (no pass over the members)
        known: dict[int, set[int]] = {pid: set() for pid in pids}
        for pid, starttime in self._by_identity:
            if pid in known:
                known[pid].add(starttime)
        for pid, starttimes in known.items():
            self._unread[pid] = frozenset(starttimes)

    def _adopt_captured(self, captured: _Captured) -> list[Member]:
        """The new members a capture holds, oldest first.

        Parsed after the kill, while the kernel tears the tree down: only
        what a member needs (start time, parent, name, command line as
        shown), without a full table row per process.
        """
        from tether.terminate import Member

        rows: list[tuple[int, int, int, str, ProcessHandle]] = []
        for info, handle in captured.opened:
            if not self._allowed(info):
                handle.close()
                continue
            rows.append((info.starttime, info.pid, info.ppid, info.describe(), handle))
        for _pid, fd, stat, cmdline in captured.rows:
            if self._admit is None:
                row = _stat_row(stat)
            else:
                # Someone to admit (the pruner's uid floor): the full row.
                full = parse_captured(stat, cmdline)
                row = None
                if full is not None and self._admit(full):
                    row = (full.pid, full.ppid, full.starttime, full.comm, full.kernel_thread)
            if row is None or row[4]:  # malformed, or a kernel thread
                os.close(fd)
                continue
            pid, ppid, starttime, comm, _kthread = row
            shown = _shown(cmdline, comm)
            rows.append((starttime, pid, ppid, shown, ProcessHandle(pid, starttime, fd)))
        rows.sort(key=_by_start)
        new: list[Member] = []
        not_before, leader = self.not_before, self.leader
        by_identity, handles, ppids = self._by_identity, self._handles, self._ppid
        for starttime, pid, ppid, shown, handle in rows:
            identity = (pid, starttime)
            if (
                identity in by_identity
                or starttime < not_before
                or self._is_protected(pid, starttime)
            ):
                handle.close()
                continue
            member = Member(
                pid=pid,
                starttime=starttime,
                start_time=starttime_to_epoch(starttime),
                cmdline=shown,
                found_by={"cgroup"},
                is_leader=leader == identity,
            )
            by_identity[identity] = member
            handles[member] = handle
            ppids[member] = ppid
            new.append(member)
        self._walk.remember(by_identity)
        return new

    def _open_each(
        self, pids: Iterable[int]
    ) -> tuple[list[tuple[ProcessInfo, ProcessHandle]], list[int]]:
        """A dirfd per process: its row (with cmdline) and a handle, parsed at
        once; and the pids not opened for want of descriptors (EMFILE,
        ENFILE). Those must not stop the cancel before its cgroup.kill, which
        needs no descriptor per process: the caller says how many it killed
        unnamed."""
        opened: list[tuple[ProcessInfo, ProcessHandle]] = []
        unopened: list[int] = []
        try:
            for pid in pids:
                try:
                    got = open_process_info(pid, None, ("cmdline",))
                except OSError as err:
                    if err.errno not in OUT_OF_DESCRIPTORS:
                        raise
                    unopened.append(pid)
                    continue
                if got is not None:
                    info, fd = got
                    opened.append((info, ProcessHandle(pid, info.starttime, fd)))
        except BaseException:
            for _info, handle in opened:
                handle.close()
            raise
        return opened, unopened

    def freeze(self) -> str | None:
        if self.cgroup is not None and self._cgroup_acts_alone():
            try:
                if self.cgroup.freeze(timeout=1.0):
                    self._frozen = True
                    return "cgroup"
            except OSError:
                pass
            self.cgroup.thaw()
        # SIGSTOP sweep: stop what is found, rescan, until the set stops
        # growing. Members already known are stopped before the first scan:
        # that scan then proves what it would otherwise only find.
        seen = {id(m) for m in self._stopped}
        new = [m for m in self.known() if id(m) not in seen]
        for _round in range(STOP_SWEEP_ROUNDS):
            for m in new:
                seen.add(id(m))
                if m.alive and self.send(m, _signals.SIGSTOP) is Delivery.DELIVERED:
                    self._stopped.append(m)
            # Any member not seen before, even one already dead, means the
            # tree was still forking during the last round.
            new = [m for m in self.scan() if id(m) not in seen]
            if not new:
                # That scan found no other member. If every live one is
                # stopped (none refused SIGSTOP), nothing of the tree can
                # fork until the thaw, so it stays current.
                stopped = {id(m) for m in self._stopped}
                self._swept = all(id(m) in stopped for m in self.live())
                return "sigstop"
        return "sigstop (tree still growing)"

    def thaw(self) -> None:
        # A swept tree whose every live member got SIGKILL while stopped is
        # sealed: nothing of it can run again, so no later scan can find
        # more of it than the sweep's last one (and its exits prove it empty).
        self._swept = self._swept and all(
            any(s == _signals.SIGKILL for s, _t in m.signals) for m in self.live()
        )
        if self._frozen and self.cgroup is not None:
            self.cgroup.thaw()
            self._frozen = False
        for m in self._stopped:
            # A pending SIGKILL ends a stopped process without a SIGCONT.
            if not any(s == _signals.SIGKILL for s, _t in m.signals):
                self.send(m, _signals.SIGCONT)
        self._stopped.clear()

    # -- reporting -------------------------------------------------------

    def survivors(self) -> list[Survivor]:
        from tether.report import Survivor

        out = []
        for m in self.live():
            info = self._handles[m].read(("cmdline", "wchan"))
            if info is None:
                continue
            if m.denied:
                reason = "permission denied: tether may not signal this process"
            elif info.state == "D":
                reason = "in uninterruptible sleep (D state): the kernel delays the kill"
            elif info.state == "Z":
                reason = "zombie not reaped by its parent"
            else:
                reason = "still alive after the last step"
            out.append(
                Survivor(
                    pid=m.pid,
                    start_time=m.start_time,
                    cmdline=m.cmdline,
                    state=info.state,
                    wchan=info.wchan if info.wchan not in (None, "0") else None,
                    reason=reason,
                )
            )
        return out

    def run_kill_script(self, argv: Sequence[str], timeout: float) -> tuple[bool, str]:
        import subprocess

        env = dict(os.environ)
        # The script is part of the job's teardown: it carries the job's id
        # (its cookie), so anything it leaves behind is found and killed too.
        env[COOKIE_VAR] = self.cookie if self.cookie is not None else self.job_id
        if self.leader is not None:
            env["TETHER_LEADER_PID"] = str(self.leader[0])
        env["TETHER_MEMBER_PIDS"] = " ".join(str(m.pid) for m in self.live())
        try:
            done = subprocess.run(list(argv), env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return False, f"kill script {argv[0]} timed out after {timeout:g}s and was killed"
        except OSError as err:
            return False, f"kill script {argv[0]} could not run: {err.strerror}"
        return done.returncode == 0, f"kill script {argv[0]} exited with status {done.returncode}"

    @property
    def trackers(self) -> tuple[TrackerStatus, ...]:
        return self._statuses

    @property
    def caveats(self) -> tuple[str, ...]:
        # Counted when asked: another tracker's scan (the session's, the
        # subreaper's) may name an unread one after the kill, or a later
        # capture read it. An unread one has no start time of its own: a
        # member found since under its pid, with a start time not known
        # for that pid before, names it.
        if not self._unread:
            return self._caveats
        named = {
            pid
            for pid, starttime in self._by_identity
            if pid in self._unread and starttime not in self._unread[pid]
        }
        unread = len(self._unread.keys() - named)
        if not unread:
            return self._caveats
        return (
            *self._caveats,
            f"{unread} process(es) of the job's cgroup could not be read before "
            "cgroup.kill (out of file descriptors?): killed with the cgroup, not "
            "named in this report",
        )

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles.clear()


class Sighting(NamedTuple):
    """A live process a read-only scan found: its table row (stat), what found
    it, its command line as shown (read after the table). It holds no handle."""

    info: ProcessInfo
    found_by: frozenset[str]
    cmdline: str


class ReadOnlyMembership:
    """A :class:`Membership` that can only be looked at (``tether ps``).

    One table read; each process found gets its command line, then its stat
    line, read by path (two opens, as ``pstree -a`` pays), no pidfd, no dirfd,
    nothing adopted. What it returns are :class:`Sighting` rows, not
    members (:class:`~tether.terminate.Member`), and it has no method that signals:
    a caller holding only this type cannot terminate anything (mypy checks),
    nor could a pid it read be signalled safely, as nothing pins it.
    """

    __slots__ = ("_membership",)

    def __init__(self, membership: Membership) -> None:
        self._membership = membership

    @property
    def trackers(self) -> tuple[TrackerStatus, ...]:
        return self._membership.trackers

    def observe(self) -> tuple[list[Sighting], Table]:
        """The live processes the trackers find now (zombies have exited: not
        members, as their pidfds would say), and the table they were found in."""
        from tether._platform.linux import read_shown

        m = self._membership
        table = m._table()
        seen: list[Sighting] = []
        found = m._find(table)
        # Oldest first, as a scan adopts them (the JSON lists rows in this order).
        for pid, names in sorted(found.items(), key=lambda kv: table[kv[0]].starttime):
            row = table[pid]
            argv = read_shown(pid, row.starttime) if row.state not in "ZX" else None
            if argv is not None:
                cmdline = " ".join(argv) if argv else f"[{row.comm}]"  # ProcessInfo.describe
                seen.append(Sighting(row, frozenset(names), cmdline))
        return seen, table

    def close(self) -> None:
        self._membership.close()


def check_target(pid: int) -> ProcessInfo:
    """The process ``pid`` if tether may terminate its tree, else an error."""
    if pid <= 1:
        raise UnsafeTargetError(pid, "pid 1 and below are never signalled")
    me = os.getpid()
    if pid == me:
        raise UnsafeTargetError(pid, "that is tether itself")
    if pid in ancestors(me):
        raise UnsafeTargetError(pid, "that is an ancestor of tether")
    info = read_process(pid, ("cmdline",))
    if info is None:
        raise NoSuchProcessError(pid)
    if info.kernel_thread:
        raise UnsafeTargetError(pid, "that is a kernel thread")
    return info


def _by_start(row: tuple[int, int, int, str, ProcessHandle]) -> int:
    return row[0]


def _stat_row(stat: bytes) -> tuple[int, int, int, str, bool] | None:
    """(pid, ppid, start time, comm, kernel thread) of a /proc/PID/stat line,
    or None if malformed: the fields a member needs, split by the one parser
    of the line (procfs.split_stat) and converted as the table's own parse
    (info_from_stat) converts them, without building the rest of its row
    (a thousand rows are parsed while the kill's exits compete for the CPU)."""
    try:
        pid, comm, f = split_stat(stat)
        ppid = int(f[1])
        starttime = int(f[19])
        kthread = kernel_thread(pid, ppid, int(f[6]))
    except (ValueError, IndexError):
        return None
    return pid, ppid, starttime, comm.decode("utf-8", "replace"), kthread


def _shown(cmdline: bytes, comm: str) -> str:
    """A raw /proc/PID/cmdline as :meth:`ProcessInfo.describe` shows it: the
    arguments joined by spaces (empty ones dropped), or ``[comm]`` if none."""
    data = cmdline.rstrip(b"\0")
    if data[:1] == b"\0" or b"\0\0" in data:
        argv = parse_cmdline(cmdline)
        return " ".join(argv) if argv else f"[{comm}]"
    if not data:
        return f"[{comm}]"
    # NUL is never part of a UTF-8 sequence: replacing it before decoding
    # equals decoding each argument and joining them.
    return data.replace(b"\0", b" ").decode("utf-8", "surrogateescape")


class _Captured(NamedTuple):
    """A frozen cgroup read before its kill: raw rows (pid, pidfd, stat,
    cmdline) of processes new to the membership, and its members already known."""

    rows: list[tuple[int, int, bytes, bytes]]
    opened: list[tuple[ProcessInfo, ProcessHandle]]  # read at once (no pidfds)
    known: list[Member]


class _IdentityTracker:
    """Finds exactly the processes it was given, by pid and start time."""

    def __init__(self, name: str, identities: Iterable[Identity]) -> None:
        self.name = name
        self._identities = {i.pid: i.starttime for i in identities}

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        return [
            pid
            for pid, starttime in self._identities.items()
            if (p := table.get(pid)) is not None and p.starttime == starttime
        ]


@once
def _raise_fd_limit() -> None:
    # Every member is held by a pidfd: a 1000-process tree (or a node's
    # thousands of strays) needs more than the common soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
