"""Who is legitimate: live tether jobs, batch jobs, interactive sessions.

Each reader returns the :class:`Job` records it can vouch for. A record only
counts when it is unforgeable by the processes it exempts: a root-owned cgroup
(tether's or Slurm's), ancestry under a live supervisor, a batch system's own
list of pids or sessions, sshd running as root. An environment variable never
counts (any process can set one).

::

    JobSource (Protocol: name, jobs(table) -> list[Job], raises SourceError)
     ├── TetherJobs       root's journal: records whose supervisor is alive
     ├── SlurmCgroups     .../slurm[_NODE]/uid_N/job_M, .../[NODE_]slurmstepd.scope/job_M
     ├── Scontrol         `scontrol listpids` (Slurm without job cgroups)
     ├── SessionList      a file or command listing session ids ("SID [JOB [USER]]")
     └── TorqueQstat      `qstat -f` output: session_id of running jobs on this host

Interactive sessions are found from the process table itself
(:func:`interactive_roots`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import stat
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from tether._platform.linux.cgroupfs import JobCgroup, cgroup_removed
from tether._records import dataclass, field
from tether.errors import TetherError
from tether.prune.scan import Table
from tether.prune.text import visible

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # for mypy only: nothing subclasses or isinstance-checks it

if TYPE_CHECKING:
    import subprocess


Identity = tuple[int, int]

#: Where commands are looked for: an epilogue often runs with no PATH at all.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMMAND_TIMEOUT = 20.0
#: A job list larger than this is not a job list (a runaway or hostile command).
MAX_OUTPUT = 16 << 20
#: Session files are a few lines; anything bigger is refused, not read.
MAX_SESSIONS_FILE = 1 << 20
#: What a batch system's command may need from our environment: slurmd gives
#: an Epilog the location of slurm.conf when it is not at the compiled-in path,
#: and the node name on a multiple-slurmd node; Slurm's and PBS's clients read
#: their settings from variables with these prefixes. Nothing else passes (no
#: PATH, no LD_*: a root epilog must not run what its environment names).
PASSED_ENV_PREFIXES = ("SLURM", "PBS_")
_UID_DIR = re.compile(r"uid_(\d+)")
_JOB_DIR = re.compile(r"job_(\d+)")
#: cgroup/v1: slurm/ (or slurm_NODE/ with multiple-slurmd builds, e.g. Debian's).
_V1_SLURM_DIR = re.compile(r"slurm(?:_.+)?")
#: cgroup/v2: slurmstepd.scope (or NODE_slurmstepd.scope with multiple-slurmd).
_V2_SCOPE_DIR = re.compile(r"(?:.+_)?slurmstepd\.scope")


def __getattr__(name: str) -> object:
    # PEP 562: subprocess (~3 ms of imports) is loaded only when a job list is
    # a command's output; the module still answers for it (tests patch
    # subprocess.Popen through tether.prune.sources.subprocess).
    if name == "subprocess":
        import subprocess

        return subprocess
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SourceError(TetherError):
    """A source of legitimate jobs could not be read: nothing may be killed."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message

    def __reduce__(self) -> tuple[type[SourceError], tuple[str, str]]:
        return (type(self), (self.source, self.message))


@dataclass(frozen=True)
class Job:
    """One running job on this node, and the processes it vouches for.

    A process is the job's if its pid is in ``pids``, its session is in
    ``sids``, it is one of the ``roots`` (pid and start time), or it descends
    from any of those.
    """

    source: str
    job_id: str
    uid: int | None = None
    pids: frozenset[int] = frozenset()
    sids: frozenset[int] = frozenset()
    roots: tuple[Identity, ...] = ()
    cgroup: str | None = None

    @property
    def label(self) -> str:
        return f"{self.source} job {self.job_id}"


class JobSource(Protocol):
    name: str

    def jobs(self, table: Table) -> list[Job]:
        """The jobs running now. Raises SourceError if they cannot be known."""
        ...


# -- helpers -------------------------------------------------------------------


def run_command(
    source: str,
    argv: Sequence[str],
    timeout: float = COMMAND_TIMEOUT,
    *,
    env: Mapping[str, str] | None = None,
    ok_status: Callable[[int, str], bool] | None = None,
) -> str:
    """Run a reader's command with a fixed PATH; its stdout, or SourceError.

    Output is bounded (:data:`MAX_OUTPUT`) and so is the time (``timeout``):
    a command that floods or stalls is killed and its list is not used.
    ``ok_status(status, stderr)`` accepts a non-zero status as an answer.
    """
    import shutil
    import subprocess

    if not argv:
        raise SourceError(source, "empty command")
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=SAFE_PATH)
    if exe is None:
        raise SourceError(source, f"command not found: {argv[0]} (looked in {SAFE_PATH})")
    env = os.environ if env is None else env
    child_env = {"PATH": SAFE_PATH, "LC_ALL": "C"}
    child_env.update({k: v for k, v in env.items() if k.startswith(PASSED_ENV_PREFIXES)})
    try:
        proc = subprocess.Popen(
            [exe, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            start_new_session=True,
        )
    except OSError as err:
        raise SourceError(source, f"cannot run {argv[0]}: {err.strerror}") from None
    with proc:
        try:
            out, err_text = _bounded_output(proc, timeout)
        except SourceError as why:
            proc.kill()
            proc.wait()
            raise SourceError(source, f"{argv[0]} {why.message}") from None
        status = proc.wait()
    stderr = err_text.decode("utf-8", "replace")
    if status != 0 and not (ok_status is not None and ok_status(status, stderr)):
        why_lines = stderr.strip().splitlines()
        raise SourceError(
            source,
            f"{argv[0]} exited with status {status}"
            + (f": {visible(why_lines[-1])[:200]}" if why_lines else ""),
        )
    return out.decode("utf-8", "replace")


def _bounded_output(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes]:
    """stdout and stderr of ``proc`` until both close, within the time and size caps."""
    import selectors

    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    size = 0
    with selectors.DefaultSelector() as sel:
        for f in (proc.stdout, proc.stderr):
            sel.register(f, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceError("", f"did not answer within {timeout:g}s")
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                size += len(data)
                if size > MAX_OUTPUT:
                    raise SourceError("", f"printed more than {MAX_OUTPUT >> 20} MiB")
                chunks[key.fd].append(data)
    return b"".join(chunks[proc.stdout.fileno()]), b"".join(chunks[proc.stderr.fileno()])


def uid_of(user: str) -> int | None:
    """A user name or numeric uid as a uid; None if unknown."""
    # ASCII digits only ('¹'.isdigit() is true, int() refuses it), and no
    # more than a 32-bit uid has (int() refuses more than 4300 digits).
    if user.isascii() and user.isdigit():
        return int(user) if len(user) <= 10 else None
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _cgroup_procs(path: str, source: str) -> set[int]:
    """Pids in a cgroup and every cgroup below it (missing ones are skipped).
    One that cannot be listed is a SourceError: its job's processes would
    otherwise read as strays."""
    try:
        return set(JobCgroup(path).procs())
    except OSError as err:
        raise SourceError(source, f"cannot list {path!r}: {err.strerror}") from None


def _uid_of_processes(table: Table, pids: Iterable[int]) -> int | None:
    """The real uid of the first non-root process among ``pids`` (a job's owner)."""
    for pid in sorted(pids):
        proc = table.procs.get(pid)
        if (
            proc is not None
            and table.load_status(proc)
            and proc.uids is not None
            and proc.uids[0] != 0
        ):
            return proc.uids[0]
    return None


def find_mounts() -> tuple[str | None, list[str], str | None]:
    """The cgroup2 mount; the v1 freezer and cpuset mounts; the v1 name=systemd mount."""
    unified: str | None = None
    v1: list[str] = []
    systemd: str | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = right.split()
                if not fields:
                    continue
                point = left.split(" ")[4].encode("latin-1", "surrogateescape")
                path = point.decode("unicode_escape")
                if fields[0] == "cgroup2" and unified is None:
                    unified = path
                elif fields[0] == "cgroup" and len(fields) >= 3:
                    opts = set(fields[2].split(","))
                    if {"freezer", "cpuset"} & opts:
                        v1.append(path)
                    if "name=systemd" in opts:
                        systemd = path
    except OSError as err:
        # Not "no cgroup mounts": no Slurm job cgroup and no system service
        # would be found, and their processes would read as strays.
        why = f"cannot read /proc/self/mountinfo: {err.strerror}"
        raise SourceError("mountinfo", why) from None
    return unified, v1, systemd


def system_slice_dir() -> str | None:
    """systemd's ``system.slice`` cgroup (unified hierarchy first, else the v1 one)."""
    unified, _v1, systemd = find_mounts()
    for base in (unified, systemd):
        if base is not None and os.path.isdir(os.path.join(base, "system.slice")):
            return os.path.join(base, "system.slice")
    return None


def system_service_pids(path: str | None) -> set[int]:
    """Pids of system services: the ``system.slice`` subtree, except Slurm's job
    cgroups below ``slurmstepd.scope`` (a job's processes are not a service).

    A service cgroup removed meanwhile holds none. One that cannot be listed
    (EMFILE, EACCES) is a SourceError, not an empty service: its processes
    would read as strays and be killed."""
    out: set[int] = set()
    if path is None:
        return out

    def unlisted(err: OSError) -> None:
        if not cgroup_removed(err):
            raise SourceError("system.slice", f"cannot list {err.filename!r}: {err.strerror}")

    for dirpath, dirs, _files in os.walk(path, onerror=unlisted):
        if _V2_SCOPE_DIR.fullmatch(os.path.basename(dirpath)):
            dirs[:] = [d for d in dirs if not _JOB_DIR.fullmatch(d)]
        try:
            with open(os.path.join(dirpath, "cgroup.procs"), "rb") as f:
                out.update(int(x) for x in f.read().split())
        except OSError as err:
            unlisted(err)
    return out


# -- tether's own jobs -------------------------------------------------------------


class TetherJobs:
    """Live tether jobs from the journal (root's, /run/tether, when run as root).

    A record counts only while its supervisor (pid and start time) is alive.
    Its members are the supervisor's descendants, plus the processes of its
    ``tether-JOB`` cgroup when that cgroup is root-owned and under the cgroup2
    mount, plus the processes carrying its ``--tag-gid`` group. A user's own
    journal is not read by a root pruner: a record there is whatever the user
    wrote.
    """

    name = "tether"

    def __init__(self, journal_dir: str | None = None) -> None:
        self.journal_dir = journal_dir

    def jobs(self, table: Table) -> list[Job]:
        from tether.journal import JobRecord, Journal, JournalProblem

        journal = Journal(self.journal_dir) if self.journal_dir else Journal.default()
        try:
            found = list(journal.entries())
        except TetherError as err:
            raise SourceError(self.name, str(err)) from None
        except OSError as err:
            raise SourceError(self.name, f"cannot read the journal: {err.strerror}") from None
        finally:
            journal.close()
        # A record not read at all (EMFILE) may be a live job's: its
        # processes would read as strays. One read and refused (a symlink,
        # corrupt, another owner's) vouches for nothing, as before.
        unread = [e for e in found if isinstance(e, JournalProblem) and e.errno is not None]
        if unread:
            raise SourceError(self.name, str(unread[0]))
        entries = [e for e in found if isinstance(e, JobRecord)]
        if not entries:
            return []  # the usual node: no tether job
        unified, _v1, _systemd = find_mounts()
        out: list[Job] = []
        for record in entries:
            if not record.supervisor_alive():
                continue
            pids: set[int] = set()
            cgroup = self._cgroup(record.cgroup, record.job_id, unified)
            if cgroup is not None:
                pids = _cgroup_procs(cgroup, self.name)
            if record.tag_gid is not None:
                # Only CAP_SETGID adds a supplementary group: a root job's tag
                # vouches for processes that left its session and cgroup.
                from tether.tracking.gid import processes_with_supplementary_gid

                pids |= {
                    pid
                    for pid, start in processes_with_supplementary_gid(record.tag_gid)
                    if (proc := table.procs.get(pid)) is not None and proc.starttime == start
                }
            roots = [record.supervisor]
            if record.watchdog is not None:
                roots.append(record.watchdog)
            out.append(
                Job(
                    self.name,
                    record.job_id,
                    uid=record.owner_uid,
                    pids=frozenset(pids),
                    roots=tuple(roots),
                    cgroup=cgroup,
                )
            )
        return out

    @staticmethod
    def _cgroup(path: str | None, job_id: str, unified: str | None) -> str | None:
        if path is None or unified is None:
            return None
        real = os.path.realpath(path)
        if not real.startswith(unified.rstrip("/") + "/") or os.path.basename(real) != (
            f"tether-{job_id}"
        ):
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        # Only root can create a cgroup owned by root: a user's delegated
        # subtree is owned by the user and proves nothing to a root pruner.
        return real if st.st_uid == 0 else None


# -- Slurm -----------------------------------------------------------------------


class SlurmCgroups:
    """Slurm job cgroups, found below ``roots`` (default: the cgroup2 mount and
    the v1 freezer/cpuset mounts):

    - cgroup/v1: ``slurm/uid_N/job_M``, or ``slurm_NODE/uid_N/job_M`` when
      slurmd is built with multiple-slurmd support (Debian, Ubuntu);
    - cgroup/v2: ``system.slice/slurmstepd.scope/job_M``, or wherever
      ``IgnoreSystemd`` put ``slurmstepd.scope`` (``NODE_slurmstepd.scope``
      with multiple-slurmd).

    Every process in a job's cgroup subtree is the job's. A job cgroup counts
    only if it and its parent are owned by root (or by one of ``owners``, the
    configured batch user): a user with a delegated cgroup subtree can make a
    directory named ``job_777`` there, but not one owned by root.
    """

    name = "slurm-cgroup"
    max_depth = 8

    def __init__(self, roots: Sequence[str] | None = None, owners: Iterable[int] = (0,)) -> None:
        #: Roots the caller named (--slurm-cgroup-root) must exist: one that
        #: does not would find no job, and every job's process would look stray.
        self.named = roots is not None
        if roots is None:
            unified, v1, _systemd = find_mounts()
            roots = [*([unified] if unified else []), *v1]
        self.roots = list(roots)
        self.owners = frozenset(owners)
        self.refused: list[str] = []  # job directories of the wrong owner, for the report

    def _owned(self, path: str) -> bool:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        if st.st_uid in self.owners:
            return True
        self.refused.append(f"{path} (uid {st.st_uid})")
        return False

    def job_dirs(self) -> list[tuple[str, str, int | None]]:
        """(job id, path, uid or None) of every Slurm job cgroup below the roots."""
        found: list[tuple[str, str, int | None]] = []
        self.refused = []
        for root in self.roots if self.named else ():
            if not root or not os.path.isdir(root):
                raise SourceError(self.name, f"no such directory: {root!r} (--slurm-cgroup-root)")
        for root in self.roots:
            base = root.rstrip("/").count("/")
            for dirpath, dirs, _files in os.walk(root):
                if dirpath.count("/") - base >= self.max_depth:
                    dirs[:] = []
                    continue
                parent = os.path.basename(dirpath)
                grandparent = os.path.basename(os.path.dirname(dirpath))
                uid_match = _UID_DIR.fullmatch(parent)
                in_v1 = uid_match is not None and _V1_SLURM_DIR.fullmatch(grandparent) is not None
                in_v2 = _V2_SCOPE_DIR.fullmatch(parent) is not None
                if not (in_v1 or in_v2):
                    continue
                dirs_here = [d for d in dirs if _JOB_DIR.fullmatch(d)]
                dirs[:] = []  # nothing of interest deeper (job steps are the job's)
                if not dirs_here or not self._owned(dirpath):
                    continue
                for d in dirs_here:
                    path = os.path.join(dirpath, d)
                    m = _JOB_DIR.fullmatch(d)
                    if m is None or not self._owned(path):
                        continue
                    uid = int(uid_match.group(1)) if uid_match is not None else None
                    found.append((m.group(1), path, uid))
        return found

    def jobs(self, table: Table) -> list[Job]:
        by_id: dict[str, tuple[set[int], int | None, str]] = {}
        for job_id, path, uid in self.job_dirs():
            pids = _cgroup_procs(path, self.name)
            entry = by_id.setdefault(job_id, (set(), uid, path))
            entry[0].update(pids)
        out = []
        for job_id, (pids, path_uid, path) in sorted(by_id.items()):
            uid = path_uid if path_uid is not None else _uid_of_processes(table, pids)
            out.append(Job(self.name, job_id, uid=uid, pids=frozenset(pids), cgroup=path))
        return out


#: What scontrol says (exit status 1) on a node where no job step runs: an
#: empty list, not a failure (every idle and every exclusive node).
NO_STEPS = "No job steps exist on this node."


class Scontrol:
    """``scontrol listpids``: the pids slurmd tracks for each job step on this node.

    It asks each slurmstepd through its socket in the spool directory, so it
    answers while slurmd itself is stopped (a restart or an upgrade: jobs keep
    running under their slurmstepd). Under proctrack/cgroup it prints ``-1``
    for the pids: the job is listed with no pids (its cgroup has them).
    """

    name = "scontrol"

    def __init__(
        self,
        argv: Sequence[str] = ("scontrol", "listpids"),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.env = env

    def jobs(self, table: Table) -> list[Job]:
        text = run_command(
            self.name,
            self.argv,
            env=self.env,
            ok_status=lambda status, err: status == 1 and NO_STEPS in err,
        )
        by_job: dict[str, set[int]] = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 2 or not fields[1].isdigit():
                continue  # the header
            pids = by_job.setdefault(fields[1], set())
            if fields[0].isdigit():
                pids.add(int(fields[0]))  # not "-" (a step with no pid) or "-1"
        return [
            Job(self.name, job_id, uid=_uid_of_processes(table, pids), pids=frozenset(pids))
            for job_id, pids in sorted(by_job.items())
        ]


# -- session lists (Torque/PBS, SGE, anything else) ------------------------------------


def parse_session_lines(source: str, text: str) -> list[Job]:
    """``SID [JOBID [USER]]`` per line; ``#`` comments and blank lines ignored."""
    out: list[Job] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if not fields[0].isdigit() or int(fields[0]) <= 1:
            raise SourceError(source, f"line {n}: {fields[0]!r} is not a session id (> 1)")
        sid = int(fields[0])
        job_id = fields[1] if len(fields) > 1 else f"session-{sid}"
        uid = None
        if len(fields) > 2:
            uid = uid_of(fields[2])
            if uid is None:
                raise SourceError(source, f"line {n}: unknown user {fields[2]!r}")
        out.append(Job(source, job_id, uid=uid, sids=frozenset({sid})))
    return out


class SessionList:
    """Session ids of running jobs, from a file or the stdout of a command.

    Each line is ``SID [JOBID [USER]]``. The file must be owned by root (or by
    the caller) and not writable by others: it decides what survives.
    """

    def __init__(self, *, path: str | None = None, command: Sequence[str] | None = None) -> None:
        if (path is None) == (command is None):
            raise ValueError("give a path or a command")
        self.path = path
        self.command = tuple(command) if command is not None else None
        self.name = "sessions-file" if path is not None else "sessions-command"

    def jobs(self, table: Table) -> list[Job]:
        if self.command is not None:
            return [self._with_uid(j, table) for j in parse_session_lines(
                self.name, run_command(self.name, self.command))]  # fmt: skip
        assert self.path is not None
        try:
            # O_NONBLOCK: opening a FIFO for reading would wait for a writer.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as err:
            raise SourceError(self.name, f"cannot read {self.path}: {err.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(self.name, f"{self.path} is not a regular file")
            if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
                raise SourceError(
                    self.name,
                    f"{self.path} must be owned by root and not writable by others "
                    f"(it is uid {st.st_uid}, mode {st.st_mode & 0o7777:04o})",
                )
            data = f.read(MAX_SESSIONS_FILE + 1)
            if len(data) > MAX_SESSIONS_FILE:
                raise SourceError(
                    self.name, f"{self.path} is larger than {MAX_SESSIONS_FILE >> 10} KiB"
                )
            text = data.decode("utf-8", "replace")
        return [self._with_uid(j, table) for j in parse_session_lines(self.name, text)]

    @staticmethod
    def _with_uid(job: Job, table: Table) -> Job:
        if job.uid is not None:
            return job
        uid = _uid_of_processes(table, table.in_sessions(job.sids))
        return Job(job.source, job.job_id, uid=uid, sids=job.sids)


_QSTAT_KEY = re.compile(r"\s+([A-Za-z_.]+) = (.*)")


def parse_qstat(text: str, hostname: str) -> list[Job]:
    """Running jobs with a session on ``hostname`` from ``qstat -f -1`` output."""
    jobs: list[Job] = []
    current: dict[str, str] = {}

    def flush() -> None:
        if not current:
            return
        hosts = {h.split("/")[0].split(".")[0] for h in current.get("exec_host", "").split("+")}
        sid = current.get("session_id", "")
        if current.get("job_state") == "R" and hostname in hosts and sid.isdigit():
            user = current.get("euser") or current.get("Job_Owner", "").split("@")[0]
            jobs.append(
                Job(
                    "torque",
                    current["Job Id"],
                    uid=uid_of(user) if user else None,
                    sids=frozenset({int(sid)}),
                )
            )
        current.clear()

    for line in text.splitlines():
        if line.startswith("Job Id:"):
            flush()
            current["Job Id"] = line.split(":", 1)[1].strip()
        elif (m := _QSTAT_KEY.match(line)) is not None and current:
            current[m.group(1)] = m.group(2).strip()
    flush()
    return jobs


class TorqueQstat:
    """Torque/PBS: the session of each running job whose exec_host is this node.

    The session is the job script's on the mother superior; processes started
    through the TM interface on sister nodes are in other sessions, so list
    those with a :class:`SessionList` if they must survive.
    """

    name = "torque"

    def __init__(self, argv: Sequence[str] = ("qstat", "-f", "-1"), hostname: str | None = None):
        import socket

        self.argv = tuple(argv)
        self.hostname = (hostname or socket.gethostname()).split(".")[0]

    def jobs(self, table: Table) -> list[Job]:
        return parse_qstat(run_command(self.name, self.argv), self.hostname)


# -- interactive sessions ---------------------------------------------------------------

UTMP = "/var/run/utmp"
_UTMP_ENTRY = struct.Struct("@hi")
_UTMP_SIZE = 384  # sizeof(struct utmp) with glibc on Linux, every architecture
USER_PROCESS = 7
SSHD_NAMES = frozenset({"sshd", "sshd-session"})


def utmp_pids(path: str = UTMP) -> list[int]:
    """Pids of USER_PROCESS entries (logins on a terminal) in utmp."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            data = f.read()
        out = []
        for off in range(0, len(data) - _UTMP_SIZE + 1, _UTMP_SIZE):
            kind, pid = _UTMP_ENTRY.unpack_from(data, off)
            if kind == USER_PROCESS and pid > 1:
                out.append(pid)
        return out
    return []


@dataclass
class Interactive:
    """Roots of interactive sessions: root-owned sshd processes and utmp logins."""

    roots: list[Identity] = field(default_factory=list)
    sids: set[int] = field(default_factory=set)


def interactive_roots(table: Table, utmp: str = UTMP) -> Interactive:
    """Where interactive sessions hang from.

    Descendants of an sshd running as root (a user cannot start one, or rename
    a process of theirs into a root-owned one), and of the login processes
    utmp lists. A process that left such a tree (double-forked to init, or to
    a ``systemd --user`` manager) is no longer interactive.
    """
    out = Interactive()
    for proc in table.procs.values():
        if proc.comm in SSHD_NAMES and table.load_status(proc):
            assert proc.uids is not None
            if proc.uids[0] == 0 and proc.uids[1] == 0:
                out.roots.append(proc.identity)
    for pid in utmp_pids(utmp):
        login = table.procs.get(pid)
        if login is not None:
            out.roots.append(login.identity)
            if login.sid > 1:
                out.sids.add(login.sid)
    return out


def as_job(interactive: Interactive) -> Job:
    return Job(
        "interactive",
        "sessions",
        roots=tuple(interactive.roots),
        sids=frozenset(interactive.sids),
    )


# -- choosing sources ----------------------------------------------------------------


class WhenRunning:
    """A source read only while one of its daemons runs as root on this node
    (auto mode). ``skipped`` says why it was not read, for the report.
    """

    def __init__(self, source: JobSource, *daemons: str) -> None:
        self.source = source
        self.daemons = frozenset(daemons)
        self.name = source.name
        self.skipped: str | None = None

    def jobs(self, table: Table) -> list[Job]:
        for proc in table.procs.values():
            if (
                proc.comm in self.daemons
                and table.load_status(proc)
                and proc.uids is not None
                and proc.uids[0] == 0
            ):
                self.skipped = None
                return self.source.jobs(table)
        self.skipped = f"not read ({' or '.join(sorted(self.daemons))} is not running)"
        return []


BATCH_CHOICES = ("auto", "slurm", "torque", "none")


def default_sources(
    batch: str = "auto",
    *,
    sessions_files: Sequence[str] = (),
    sessions_commands: Sequence[Sequence[str]] = (),
    journal_dir: str | None = None,
    slurm_cgroup_roots: Sequence[str] | None = None,
) -> list[JobSource]:
    """The readers of legitimate jobs for this node.

    ``batch``: ``auto`` reads Slurm job cgroups, ``scontrol listpids`` while
    slurmd or a slurmstepd runs and ``qstat -f`` while pbs_mom runs; ``slurm`` and ``torque``
    require their reader; ``none`` reads no batch system. Live tether jobs and
    the given session lists are always read.
    """
    if batch not in BATCH_CHOICES:
        raise ValueError(f"unknown batch system {batch!r} (one of {', '.join(BATCH_CHOICES)})")
    out: list[JobSource] = [TetherJobs(journal_dir)]
    if batch in ("auto", "slurm") or slurm_cgroup_roots:
        out.append(SlurmCgroups(slurm_cgroup_roots))
    if batch == "auto":
        # slurmstepd: jobs keep running (and scontrol answers) while slurmd is stopped.
        out.append(WhenRunning(Scontrol(), "slurmd", "slurmstepd"))
        out.append(WhenRunning(TorqueQstat(), "pbs_mom"))
    elif batch == "slurm":
        out.append(Scontrol())
    elif batch == "torque":
        out.append(TorqueQstat())
    out.extend(SessionList(path=p) for p in sessions_files)
    out.extend(SessionList(command=c) for c in sessions_commands)
    return out
