"""From a process table and the live jobs to a list of strays, each with its reason.

The rules, in the order they are applied (the first that matches decides):

1. kernel threads are not processes to prune (not counted); zombies have
   exited already (a signal cannot reach them; their parent reaps them);
2. protected: pid 1, tether itself, its ancestors, tether's own session;
3. system services: anything in systemd's ``system.slice``;
4. legitimate: members of a live job (tether, Slurm, Torque, a session list),
   processes of a running Slurm job's owner that carry that job's
   ``SLURM_JOB_ID`` (a double-forked helper ``scontrol listpids`` does not
   list under proctrack/linuxproc or pgid; the id is only believed for the
   job's own uid), and, unless ``include_ssh``, of interactive sessions;
5. younger than ``min_age`` (a job may be starting: its record can lag);
6. any of ruid, euid, suid, fsuid below the floor: system accounts, and
   setuid-style processes (ruid 1000, euid 0) — never candidates;
7. the filters asked for: users, excluded users, excluded comm, orphans
   only, older than, minimum CPU time; in epilog mode, the ended job's user
   (and, when that user still has a job here, only the ended job's processes).

What is left is a stray. Only rules 1-6 are safety rules; a stray is re-checked
against rule 6 and its identity right before it is signalled.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from tether._records import dataclass, field, replace
from tether.prune import sources as src
from tether.prune.scan import Proc, Table, scan

#: A ``systemd --user`` manager is a subreaper: orphans of a login land there.
SUBREAPER_COMMS = frozenset({"systemd"})

EXEMPT_ZOMBIE = "zombie (already exited; its parent reaps it)"
EXEMPT_PROTECTED = "protected (pid 1, tether, its ancestors or its session)"
EXEMPT_SYSTEM = "system service (system.slice)"
EXEMPT_INTERACTIVE = "interactive session"
EXEMPT_YOUNG = "younger than --min-age"
EXEMPT_FLOOR = "a uid below the floor (system account or setuid)"
EXEMPT_UNREADABLE = "unreadable /proc entry"
EXEMPT_NOT_USER = "not a selected user"
EXEMPT_USER = "excluded user"
EXEMPT_COMM = "excluded command name"
EXEMPT_NOT_ORPHAN = "not orphaned (--orphans-only)"
EXEMPT_NEWER = "newer than --older-than"
EXEMPT_CPU = "less CPU time than --min-cputime"
EXEMPT_NO_GID = "not carrying the --gid group"
EXEMPT_OTHER_JOB_USER = "not the ended job's user"
EXEMPT_NOT_JOB = "not the ended job's (its user has another job here)"

#: Sources whose job ids are Slurm's (one job may be seen by both).
_SLURM_SOURCES = frozenset({"slurm-cgroup", "scontrol"})
_SLURM_MARKERS = (b"SLURM_JOB_ID=", b"SLURM_JOBID=")


@dataclass(frozen=True)
class PruneOptions:
    """What the pruner may touch.

    Attributes:
        min_uid: the floor; a process is a candidate only if all four of its
            uids are at or above it (so ruid 1000 with euid 0 is not).
        min_age: never touch a process younger than this (seconds).
        older_than: only processes at least this old (a filter, default 0).
        min_cputime: only processes that used at least this much CPU (seconds).
        orphans_only: only processes whose tree of user processes hangs from
            init or a subreaper (its session's parent is gone).
        users: only these uids (empty: every user).
        exclude_users: never these uids.
        exclude_comm: never a process whose comm matches one of these.
        include_ssh: treat interactive (ssh, console) sessions like anything else.
        gid: only processes carrying this supplementary group (tag gid).
    """

    min_uid: int = 1000
    min_age: float = 60.0
    older_than: float = 0.0
    min_cputime: float = 0.0
    orphans_only: bool = False
    users: frozenset[int] = frozenset()
    exclude_users: frozenset[int] = frozenset()
    exclude_comm: tuple[re.Pattern[str], ...] = ()
    include_ssh: bool = False
    gid: int | None = None

    def __post_init__(self) -> None:
        if self.min_uid < 1:
            raise ValueError("the uid floor must be at least 1: root is never pruned")


@dataclass(frozen=True)
class EndedJob:
    """Epilog mode: the job that just ended on this node.

    Attributes:
        uid: its user.
        job_id: as the batch system names it.
        sids: its sessions (Torque passes the job's session id).
        env: environment entries that mark its processes (``SLURM_JOB_ID=42``).
            They can only *select* among that user's non-legitimate
            processes, never exempt one.
    """

    uid: int
    job_id: str
    sids: frozenset[int] = frozenset()
    env: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Stray:
    """A process the pruner would kill (dry run) or killed, and why."""

    pid: int
    starttime: int
    ppid: int
    sid: int
    uids: tuple[int, int, int, int]
    comm: str
    age: float
    cputime: float
    rule: str
    orphan: bool

    @property
    def identity(self) -> tuple[int, int]:
        return (self.pid, self.starttime)


@dataclass(frozen=True)
class Exempt:
    """A user process the pruner left alone, and why (shown with --verbose)."""

    pid: int
    uids: tuple[int, int, int, int]
    comm: str
    reason: str


@dataclass(frozen=True)
class SourceStatus:
    """Whether a source of legitimate jobs was read, and what it found."""

    name: str
    used: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass(frozen=True)
class Plan:
    """The pruner's decision for every process of one scan."""

    strays: tuple[Stray, ...]
    exempt: Mapping[str, int]  # reason -> how many processes
    exempt_users: tuple[Exempt, ...]
    jobs: tuple[src.Job, ...]
    sources: tuple[SourceStatus, ...]
    unreadable: Mapping[int, str]
    options: PruneOptions
    scanned: int
    seconds: float
    ended: EndedJob | None = None
    whole_user: bool = False  # epilog: the user had no other job here
    legit: Mapping[int, str] = field(default_factory=dict)  # pid -> why (user processes)


def _legitimate(table: Table, jobs: Iterable[src.Job]) -> dict[int, str]:
    """pid -> the job that vouches for it: members, their sessions and descendants."""
    seeds: dict[int, str] = {}
    by_sid: dict[int, str] = {}
    for job in jobs:
        label = job.label
        for pid in job.pids:
            if pid in table.procs:
                seeds.setdefault(pid, label)
        for pid, starttime in job.roots:
            proc = table.procs.get(pid)
            if proc is not None and proc.starttime == starttime:
                seeds.setdefault(pid, label)
        for sid in job.sids:
            if sid > 1:
                by_sid.setdefault(sid, label)
    if by_sid:
        for proc in table.procs.values():
            label_sid = by_sid.get(proc.sid)
            if label_sid is not None:
                seeds.setdefault(proc.pid, label_sid)
    kids = table.children()
    out = dict(seeds)
    stack = list(seeds)
    while stack:
        pid = stack.pop()
        for child in kids.get(pid, ()):
            if child not in out:
                out[child] = out[pid]
                stack.append(child)
    return out


def _protected(table: Table) -> set[int]:
    me = os.getpid()
    out = {0, 1, me}
    pid = me
    while (proc := table.procs.get(pid)) is not None and proc.ppid > 0 and proc.ppid not in out:
        out.add(proc.ppid)
        pid = proc.ppid
    mine = table.procs.get(me)
    if mine is not None and mine.sid > 1:
        out.update(p.pid for p in table.procs.values() if p.sid == mine.sid)
    return out


class _Orphans:
    """Is a process's tree of user processes hanging from init or a subreaper?"""

    def __init__(self, table: Table, floor: int) -> None:
        self.table = table
        self.floor = floor
        self.memo: dict[int, bool] = {}

    def is_user(self, proc: Proc) -> bool:
        return (
            self.table.load_status(proc) and proc.uids is not None and min(proc.uids) >= self.floor
        )

    def __call__(self, proc: Proc) -> bool:
        path: list[int] = []
        current: Proc | None = proc
        result = False
        while current is not None:
            known = self.memo.get(current.pid)
            if known is not None:
                result = known
                break
            path.append(current.pid)
            parent = self.table.procs.get(current.ppid)
            if current.ppid <= 1 or parent is None:
                result = True  # re-parented to init (or to outside this pid namespace)
                break
            if not self.is_user(parent):
                # A live non-user parent: a subreaper adopted it (orphan), or a
                # daemon (sshd, slurmstepd, cron) still holds the session.
                result = parent.comm in SUBREAPER_COMMS
                break
            current = parent
        for pid in path:
            self.memo[pid] = result
        return result


def _ended_job_processes(table: Table, ended: EndedJob, ended_jobs: Sequence[src.Job]) -> set[int]:
    """Processes tied to the ended job: its cgroup or session, or its env marker."""
    tied = set(_legitimate(table, [*ended_jobs, src.Job("ended", ended.job_id, sids=ended.sids)]))
    if ended.env:
        from tether.process import read_environ
        from tether.tracking.cookie import environ_has  # epilog only: not on prune's path

        for proc in table.procs.values():
            if proc.pid in tied or proc.kernel_thread:
                continue
            if proc.uids is not None and proc.uids[0] != ended.uid:
                continue
            env = read_environ(proc.pid, proc.starttime)
            if env is not None and any(environ_has(env, e) for e in ended.env):
                tied.add(proc.pid)
    return tied


def _slurm_owners(jobs: Sequence[src.Job]) -> dict[str, int]:
    """Running Slurm job id -> its owner's uid, from whichever source knows it."""
    out: dict[str, int] = {}
    for job in jobs:
        if job.source in _SLURM_SOURCES and job.uid is not None:
            out.setdefault(job.job_id, job.uid)
    return out


def slurm_job_ids(env: bytes) -> set[str]:
    """The values of SLURM_JOB_ID and SLURM_JOBID in a NUL-separated environment."""
    out: set[str] = set()
    for entry in env.split(b"\0"):
        for marker in _SLURM_MARKERS:
            if entry.startswith(marker):
                value = entry[len(marker) :]
                if value.isdigit() and len(value) < 20:
                    out.add(value.decode())
    return out


def _slurm_env_jobs(
    table: Table, owners: Mapping[str, int], skip: Iterable[int], floor: int
) -> list[src.Job]:
    """Processes of a running Slurm job's owner carrying that job's id.

    Under proctrack/linuxproc and pgid, ``scontrol listpids`` only lists what
    still descends from slurmstepd: a helper that double-forked to init is
    missing, yet it is the running job's. Its environment still names the
    job. The name is only evidence for the job owner's own processes: anyone
    can set SLURM_JOB_ID, and a forged one must never shelter another uid's.
    """
    if not owners:
        return []
    from tether.process import read_environ

    uids = set(owners.values())
    skip = set(skip)
    found: dict[str, set[int]] = {}
    for proc in table.procs.values():
        if proc.kernel_thread or proc.pid in skip or proc.state in ("Z", "X"):
            continue
        if not table.load_status(proc) or proc.uids is None or min(proc.uids) < floor:
            continue
        if proc.uids[0] not in uids or proc.uids[1] != proc.uids[0]:
            continue
        env = read_environ(proc.pid, proc.starttime)
        if env is None:
            continue
        for job_id in slurm_job_ids(env):
            if owners.get(job_id) == proc.uids[0]:
                found.setdefault(job_id, set()).add(proc.pid)
    return [
        src.Job("slurm-env", job_id, uid=owners[job_id], pids=frozenset(pids))
        for job_id, pids in sorted(found.items())
    ]


def read_sources(
    sources: Sequence[src.JobSource], table: Table
) -> tuple[list[src.Job], list[SourceStatus]]:
    """Every source's jobs; SourceError from any source propagates (nothing is killed)."""
    jobs: list[src.Job] = []
    statuses: list[SourceStatus] = []
    for source in sources:
        found = source.jobs(table)
        jobs.extend(found)
        skipped = getattr(source, "skipped", None)
        if skipped is not None:
            statuses.append(SourceStatus(source.name, False, skipped))
            continue
        detail = f"{len(found)} job(s)" + (
            ": " + ", ".join(j.job_id for j in found[:8]) + (" ..." if len(found) > 8 else "")
            if found
            else ""
        )
        statuses.append(SourceStatus(source.name, True, detail))
    return jobs, statuses


def plan(
    options: PruneOptions,
    sources: Sequence[src.JobSource],
    *,
    ended: EndedJob | None = None,
    scanner: Callable[[], Table] = scan,
    system_slice: str | None = None,
    utmp: str = src.UTMP,
    verbose: bool = False,
    whole_user_allowed: bool = True,
    scan_began: float | None = None,
) -> Plan:
    """Scan the node and decide, for every process, whether it is a stray.

    The job sources are read *after* the snapshot, so a job that starts while
    the node is being scanned is in the list by the time its processes are
    judged (and ``min_age`` covers a batch system that records a job late).

    Args:
        options: the rules.
        sources: readers of legitimate jobs; a SourceError from one aborts.
        ended: epilog mode: the job that ended.
        scanner: returns the process table (tests wrap it).
        system_slice: systemd's system.slice cgroup (default: found in mountinfo).
        utmp: where logins are recorded.
        verbose: also list the user processes left alone, and why.
        whole_user_allowed: epilog mode: False limits the kill to the ended
            job's own processes even if its user has no other job here.
        scan_began: ``time.perf_counter()`` when ``scanner``'s scan began, if
            before this call (a scan started beside the command's start-up):
            the plan's ``seconds`` count from there.

    Raises:
        SourceError: a source of legitimate jobs could not be read.
    """
    t0 = time.perf_counter() if scan_began is None else scan_began
    table = scanner()
    jobs, statuses = read_sources(sources, table)
    if system_slice is None:
        system_slice = src.system_slice_dir()
    services = src.system_service_pids(system_slice)
    # One Slurm job may be seen by its cgroup (uid known) and by scontrol
    # (pids -1 under proctrack/cgroup, so no uid): the owner is the job's.
    owners = _slurm_owners(jobs)
    jobs = [
        replace(j, uid=owners.get(j.job_id)) if j.uid is None and j.source in _SLURM_SOURCES else j
        for j in jobs
    ]

    ended_jobs: list[src.Job] = []
    whole_user = False
    if ended is not None:
        ended_jobs = [j for j in jobs if j.job_id == ended.job_id or (j.sids & ended.sids)]
        jobs = [j for j in jobs if j not in ended_jobs]
        owners.pop(ended.job_id, None)
        # The user's other jobs here, or a job whose owner is unknown: then
        # only the ended job's own processes go (slurm.epilog.clean semantics).
        whole_user = whole_user_allowed and not any(
            j.uid in (ended.uid, None) for j in jobs if j.source != "tether"
        )
    legit = _legitimate(table, jobs)
    env_jobs = _slurm_env_jobs(table, owners, [*legit, *services], options.min_uid)
    if env_jobs:
        for pid, label in _legitimate(table, env_jobs).items():
            legit.setdefault(pid, label)
        statuses.append(
            SourceStatus(
                "slurm-env",
                True,
                f"{sum(len(j.pids) for j in env_jobs)} process(es) of running jobs' owners "
                "carry their SLURM_JOB_ID: "
                + ", ".join(j.job_id for j in env_jobs[:8])
                + (" ..." if len(env_jobs) > 8 else ""),
            )
        )
    if not options.include_ssh:
        interactive = _legitimate(table, [src.as_job(src.interactive_roots(table, utmp))])
        for pid in interactive:
            legit.setdefault(pid, "interactive session")
    statuses.append(
        SourceStatus(
            "interactive",
            not options.include_ssh,
            "sessions under a root sshd or a utmp login are exempt"
            if not options.include_ssh
            else "not exempt (--include-ssh)",
        )
    )
    protected = _protected(table)
    orphans = _Orphans(table, options.min_uid)
    tied: set[int] | None = None
    if ended is not None and not whole_user:
        tied = _ended_job_processes(table, ended, ended_jobs)

    exempt: Counter[str] = Counter()
    exempt_users: list[Exempt] = []
    legit_users: dict[int, str] = {}
    strays: list[Stray] = []
    floor = options.min_uid
    reasons: dict[str, str] = {}

    def note(proc: Proc, reason: str) -> None:
        exempt[reason] += 1
        if (
            verbose
            and table.load_status(proc)
            and proc.uids is not None
            and min(proc.uids) >= floor
        ):
            exempt_users.append(Exempt(proc.pid, proc.uids, proc.comm, reason))

    # The statuses the loop below reads, read first in one native call (side
    # by side where there are CPUs for it); a process not listed here, or
    # one whose status that call could not settle, is read by the loop.
    min_age = options.min_age
    table.load_statuses(
        proc
        for proc in table.procs.values()
        if not proc.kernel_thread
        and proc.state not in ("Z", "X")
        and proc.pid not in protected
        and proc.pid not in services
        and proc.pid not in legit
        and proc.age >= min_age
    )
    for proc in table.procs.values():
        if proc.kernel_thread:
            continue
        if proc.state in ("Z", "X"):
            exempt[EXEMPT_ZOMBIE] += 1
            continue
        if proc.pid in protected:
            note(proc, EXEMPT_PROTECTED)
            continue
        if proc.pid in services:
            note(proc, EXEMPT_SYSTEM)
            continue
        why = legit.get(proc.pid)
        if why is not None:
            # Most of a node's processes are a job's: one reason text per job.
            reason = reasons.get(why)
            if reason is None:
                reason = reasons[why] = why if why == "interactive session" else f"in {why}"
            if verbose:
                note(proc, reason)
            else:
                exempt[reason] += 1
            legit_users[proc.pid] = why
            continue
        if proc.age < options.min_age:
            note(proc, EXEMPT_YOUNG)
            continue
        if not table.load_status(proc) or proc.uids is None:
            if proc.pid in table.unreadable:
                exempt[EXEMPT_UNREADABLE] += 1
            continue
        uids = proc.uids
        if min(uids) < floor:
            exempt[EXEMPT_FLOOR] += 1
            continue
        ruid = uids[0]
        reason = _filtered(proc, options, ended, tied, whole_user, orphans)
        if reason is not None:
            note(proc, reason)
            continue
        orphan = orphans(proc)
        strays.append(
            Stray(
                pid=proc.pid,
                starttime=proc.starttime,
                ppid=proc.ppid,
                sid=proc.sid,
                uids=uids,
                comm=proc.comm,
                age=proc.age,
                cputime=proc.cputime,
                rule=_rule(proc, options, ended, whole_user, orphan, ruid),
                orphan=orphan,
            )
        )
    strays.sort(key=lambda s: (s.uids[0], s.pid))
    for source in ended_jobs:
        statuses.append(SourceStatus(source.source, True, f"job {source.job_id} has ended"))
    return Plan(
        strays=tuple(strays),
        exempt=dict(sorted(exempt.items())),
        exempt_users=tuple(exempt_users),
        jobs=tuple(jobs),
        sources=tuple(statuses),
        unreadable=dict(table.unreadable),
        options=options,
        scanned=len(table.procs),
        seconds=time.perf_counter() - t0,
        ended=ended,
        whole_user=whole_user,
        legit=legit_users,
    )


def _filtered(
    proc: Proc,
    options: PruneOptions,
    ended: EndedJob | None,
    tied: set[int] | None,
    whole_user: bool,
    orphans: _Orphans,
) -> str | None:
    assert proc.uids is not None
    ruid = proc.uids[0]
    if ended is not None:
        if ruid != ended.uid:
            return EXEMPT_OTHER_JOB_USER
        if not whole_user and (tied is None or proc.pid not in tied):
            return EXEMPT_NOT_JOB
    if options.users and ruid not in options.users:
        return EXEMPT_NOT_USER
    if ruid in options.exclude_users or proc.uids[1] in options.exclude_users:
        return EXEMPT_USER
    if any(p.search(proc.comm) for p in options.exclude_comm):
        return EXEMPT_COMM
    if options.older_than > 0 and proc.age < options.older_than:
        return EXEMPT_NEWER
    if options.min_cputime > 0 and proc.cputime < options.min_cputime:
        return EXEMPT_CPU
    if options.gid is not None and options.gid not in (proc.groups or ()):
        return EXEMPT_NO_GID
    if options.orphans_only and not orphans(proc):
        return EXEMPT_NOT_ORPHAN
    return None


def _rule(
    proc: Proc,
    options: PruneOptions,
    ended: EndedJob | None,
    whole_user: bool,
    orphan: bool,
    ruid: int,
) -> str:
    parts: list[str] = []
    if ended is not None:
        if whole_user:
            parts.append(f"uid {ruid} has no other job on this node (job {ended.job_id} ended)")
        else:
            parts.append(f"left behind by ended job {ended.job_id}")
    else:
        parts.append(f"user process (every uid >= {options.min_uid}) in no live job")
    if not options.include_ssh:
        parts.append("not in an interactive session")
    if orphan:
        parts.append("orphaned (its tree hangs from init or a subreaper)")
    if options.gid is not None:
        parts.append(f"carries group {options.gid}")
    if options.older_than > 0:
        parts.append(f"older than {options.older_than:g}s")
    if options.min_cputime > 0:
        parts.append(f"used >= {options.min_cputime:g}s CPU")
    return "; ".join(parts)
