"""The journal of live jobs: a durable record of every job tether supervises.

Each job has one JSON record, written before its first process runs and
rewritten as members are found, so that whoever outlives the supervisor (its
watchdog, ``tether reap`` after both died, or an admin after a reboot) knows
what to terminate and with which policy. The record is removed only once the
job's tree is proven empty.

A record lives in one of two files, ``JOB.json`` and ``JOB.1.json``: each
write goes to a temporary file, then is renamed into the slot not in use, then
the other slot is unlinked. A rename over an existing file would be as atomic,
but ext4 then forces the new file's blocks to be allocated and written back
(``auto_da_alloc``), and the final unlink frees them: ~0.25 ms of a job's
start and end, measured (bench/README.md). A crash between the
rename and the unlink leaves both slots: the higher ``revision`` is the record.

Where: ``$TETHER_RUNTIME_DIR``, else ``/run/tether`` for root, else
``$XDG_RUNTIME_DIR/tether``, else ``/tmp/tether-UID`` (or, if another user
pre-empted that name, a private ``/tmp/tether-UID.XXXXXXXX``: see
:func:`private_tmp_dir`). The directory must be
owned by the caller and closed to everyone else (mode 0700); files are opened
with O_NOFOLLOW relative to the directory's fd, so a symlink planted in place
of a record is refused, never followed.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from tether._compact_json import dumps as compact_json
from tether._records import dataclass, field, fields, replace
from tether.errors import JournalError, TetherError
from tether.identity import Identity
from tether.policy import Policy

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from typing import Any

SCHEMA = 1
RUNTIME_DIR_VAR = "TETHER_RUNTIME_DIR"
_SUFFIX = ".json"
#: The second slot of a job's record (see the module docstring).
_SECOND = ".1" + _SUFFIX
#: How many times a reader that found neither slot looks again (Journal._read_slots).
_SLOT_PASSES = 3
#: A record larger than this is not read (a million members take ~25 MiB).
MAX_RECORD_BYTES = 64 << 20


def journal_dir(env: Mapping[str, str] | None = None) -> str:
    """Where this user's journal lives (see the module docstring)."""
    env = os.environ if env is None else env
    explicit = env.get(RUNTIME_DIR_VAR)
    if explicit:
        return explicit
    uid = os.geteuid()
    if uid == 0:
        return "/run/tether"
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "tether")
    return private_tmp_dir(f"tether-{uid}")


def private_tmp_dir(name: str, tmp: str = "/tmp") -> str:
    """A directory of ours in the shared ``tmp``, which no one else can pre-empt.

    ``tmp/name`` if it is ours (or can be made), else the first
    ``tmp/name.*`` that is ours, else a new one with a random suffix. Only
    we can own a directory we made, and the sticky ``/tmp`` keeps others from
    renaming it: a look-alike planted by another user is skipped, never used.
    The shell agent and the remote bootstrap choose the same way.
    """
    uid = os.geteuid()

    def ours(path: str) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077

    canonical = os.path.join(tmp, name)
    try:
        os.mkdir(canonical, 0o700)
    except OSError:
        pass
    if ours(canonical):
        return canonical
    try:
        for n in sorted(os.listdir(tmp)):
            if n.startswith(name + ".") and ours(os.path.join(tmp, n)):
                return os.path.join(tmp, n)
    except OSError:
        pass
    import tempfile

    try:
        return tempfile.mkdtemp(prefix=name + ".", dir=tmp)
    except OSError:
        return canonical  # reported by whoever opens it


def boot_id() -> str:
    """This boot's id: identities in a record of another boot mean nothing."""
    from tether import _platform

    return _platform.boot_id()


@dataclass(frozen=True)
class JobRecord:
    """What the journal knows of one job.

    ``not_before`` is a start-time floor (clock ticks since boot): no member
    can have started before it, so an older process carrying the cookie is a
    stranger. ``members`` grows as scans find them. ``policy`` is the one the
    job was started with, applied by whoever terminates the job later.
    """

    job_id: str
    cookie: str
    argv: tuple[str, ...]
    policy: Policy
    owner_uid: int
    started_at: float
    boot_id: str
    supervisor: Identity
    not_before: int
    cgroup: str | None = None
    sid: int | None = None
    leader: Identity | None = None
    watchdog: Identity | None = None
    members: tuple[Identity, ...] = ()
    trackers: tuple[str, ...] = ()
    restartable: bool = False
    tag_gid: int | None = None
    state: str = "starting"
    schema: int = field(default=SCHEMA)
    #: (index, Unix time) of the policy step the termination last started,
    #: so whoever takes over (the watchdog) continues from there.
    step: tuple[int, float] | None = None
    #: Which write of the job this is (1, 2, ...), set by Journal.write: of
    #: two slots left by a crash, the higher is the record.
    revision: int = 0

    def __post_init__(self) -> None:
        # Plain (pid, start) pairs are accepted and kept as Identity.
        for name in ("supervisor", "leader", "watchdog"):
            value = getattr(self, name)
            if value is not None and type(value) is not Identity:
                object.__setattr__(self, name, Identity(*value))
        if any(type(m) is not Identity for m in self.members):
            object.__setattr__(self, "members", tuple(Identity(*m) for m in self.members))

    def of_this_boot(self) -> bool:
        """Written during this boot (a record without a boot id, from an
        older tether, counts as this boot's): only then do its identities
        name processes that can still exist."""
        return not self.boot_id or self.boot_id == boot_id()

    def supervisor_alive(self) -> bool:
        """Its supervisor, pid and start time, runs in this boot: the record
        is looked after. The one rule the pruner and recovery both ask."""
        from tether.process import is_alive

        return self.of_this_boot() and is_alive(self.supervisor)

    def to_json(self, revision: int | None = None) -> bytes:
        """The record's JSON; ``revision``: written as that one instead."""
        # Field order as declared; the policy as Policy.to_dict(), identities
        # as [pid, start] lists (the format older tethers wrote and read).
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["policy"] = self.policy.to_dict()
        if self.step is None:
            del data["step"]  # records of jobs never terminated read as before
        if revision is not None:
            data["revision"] = revision
        if not data["revision"]:
            del data["revision"]
        return compact_json(data).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> JobRecord:
        """Parse a record; ValueError (with a readable message) if malformed."""
        import json

        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unknown schema {data.get('schema')!r}")

        def get(key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
            if key not in data:
                raise ValueError(f"missing {key!r}")
            value = data[key]
            if value is None and optional:
                return None
            # bool is an int: never accept one where a number is meant.
            if not isinstance(value, kind) or (
                isinstance(value, bool) and bool not in _tuple(kind)
            ):
                raise ValueError(f"bad {key!r}: {value!r}")
            return value

        def identity(key: str, optional: bool = False) -> Identity | None:
            value = get(key, list, optional)
            if value is None:
                return None
            return _identity(key, value)

        members = tuple(_identity("members", v) for v in get("members", list))
        argv = get("argv", list)
        if not all(isinstance(a, str) for a in argv):
            raise ValueError("bad 'argv'")
        trackers = get("trackers", list)
        if not all(isinstance(t, str) for t in trackers):
            raise ValueError("bad 'trackers'")
        supervisor = identity("supervisor")
        assert supervisor is not None
        return cls(
            job_id=get("job_id", str),
            cookie=get("cookie", str),
            argv=tuple(argv),
            policy=_policy(get("policy", dict)),
            owner_uid=get("owner_uid", int),
            started_at=float(get("started_at", (int, float))),
            boot_id=get("boot_id", str),
            supervisor=supervisor,
            not_before=get("not_before", int),
            cgroup=get("cgroup", str, optional=True),
            sid=get("sid", int, optional=True),
            leader=identity("leader", optional=True),
            watchdog=identity("watchdog", optional=True),
            members=members,
            trackers=tuple(trackers),
            restartable=get("restartable", bool),
            tag_gid=get("tag_gid", int, optional=True) if "tag_gid" in data else None,
            state=get("state", str),
            step=_step(get("step", list, optional=True)) if "step" in data else None,
            revision=get("revision", int) if "revision" in data else 0,
        )

    @property
    def policy_text(self) -> str:
        return str(self.policy)

    def with_members(self, found: Iterable[tuple[int, int]]) -> JobRecord:
        """This record with ``found`` identities added (each kept once, sorted)."""
        known = set(self.members) | {Identity(*m) for m in found}
        return replace(self, members=tuple(sorted(known)))


def _policy(value: dict[str, Any]) -> Policy:
    try:
        return Policy.from_dict(value)
    except TetherError as err:
        raise ValueError(f"bad 'policy': {err}") from None


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _step(value: list[Any] | None) -> tuple[int, float] | None:
    if value is None:
        return None
    if (
        len(value) != 2
        or type(value[0]) is not int
        or value[0] < 0
        or type(value[1]) not in (int, float)
    ):
        raise ValueError(f"bad 'step': {value!r}")
    return (value[0], float(value[1]))


def _identity(key: str, value: object) -> Identity:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return Identity(value[0], value[1])
    raise ValueError(f"bad {key!r}: {value!r} is not a [pid, start time] pair")


@dataclass(frozen=True)
class JournalProblem:
    """A journal file that could not be used: reported, skipped, never fatal.

    ``errno``: set when the file could not be read at all (EMFILE, EIO...),
    as against one that was read and refused (a symlink, another owner's,
    corrupt): the record may be a live job's, and whoever acts on the
    journal's absence of a job (the pruner) must not take its silence for
    one.
    """

    path: str
    message: str
    errno: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Journal:
    """One user's journal directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fd = -1
        #: job id -> (the slot its last record went to, that record's revision)
        self._written: dict[str, tuple[str, int]] = {}

    @classmethod
    def default(cls, env: Mapping[str, str] | None = None) -> Journal:
        return cls(journal_dir(env))

    def _dirfd(self, create: bool) -> int:
        if self._fd >= 0:
            return self._fd
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.directory, flags)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.makedirs(os.path.dirname(self.directory) or "/", exist_ok=True)
                    os.mkdir(self.directory, 0o700)
                except FileExistsError:
                    pass
                fd = os.open(self.directory, flags)
        except FileNotFoundError:
            raise
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise JournalError(
                    f"journal directory {self.directory} is a symlink or not a directory"
                ) from None
            raise JournalError(
                f"cannot open journal directory {self.directory}: {err.strerror}"
            ) from None
        st = os.fstat(fd)
        # Records steer signals: a directory others can write to (or one owned
        # by someone else) could feed tether forged identities.
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise JournalError(
                f"journal directory {self.directory} must be owned by uid {os.geteuid()} "
                f"and not writable by others (it is uid {st.st_uid}, "
                f"mode {stat.S_IMODE(st.st_mode):04o})"
            )
        self._fd = fd
        return fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def path(self, job_id: str) -> str:
        return os.path.join(self.directory, job_id + _SUFFIX)

    def write(self, record: JobRecord) -> bytes:
        """Replace the job's record atomically (see the module docstring);
        return the JSON written."""
        try:
            dfd = self._dirfd(create=True)
        except FileNotFoundError:
            raise JournalError(f"cannot create journal directory {self.directory}") from None
        job_id = record.job_id
        tmp = f".{job_id}.{os.getpid()}.tmp"
        last, revision = self._written.get(job_id, (_SECOND, 0))
        slot = job_id + _SUFFIX if last != job_id + _SUFFIX else job_id + _SECOND
        data = record.to_json(revision=revision + 1)
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dfd,
            )
            try:
                # No fsync: the record only has to outlive tether's process
                # (the page cache does), not the machine; a record from an
                # earlier boot is discarded by its boot id anyway.
                # A nearly full file system writes part and returns short; only
                # the next write says ENOSPC. Renaming a short file over the
                # record would tear the one recovery needs.
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, slot, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as err:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise JournalError(
                f"cannot write journal record {self.path(job_id)}: {err.strerror}"
            ) from None
        self._written[job_id] = (slot, revision + 1)
        if revision:
            # The new record is whole in its slot: the old one goes.
            try:
                os.unlink(last, dir_fd=dfd)
            except OSError:
                pass
        return data

    def remove(self, job_id: str) -> None:
        """Remove the job's record (both slots: a crash may have left two)."""
        try:
            dfd = self._dirfd(create=False)
        except FileNotFoundError:
            return
        self._written.pop(job_id, None)
        # Both: the older slot's unlink after a write may have failed.
        for slot in (job_id + _SUFFIX, job_id + _SECOND):
            try:
                os.unlink(slot, dir_fd=dfd)
            except FileNotFoundError:
                pass

    def read(self, job_id: str) -> JobRecord | JournalProblem | None:
        """The job's record, a problem with it, or None if there is none."""
        try:
            dfd = self._dirfd(create=False)
        except FileNotFoundError:
            return None
        return self._read_slots(dfd, job_id)

    def _read_slots(self, dfd: int, job_id: str) -> JobRecord | JournalProblem | None:
        """The job's record from its two slots. A rewrite renames into one
        slot, then unlinks the other, so one always exists; but a reader
        that opens them one after the other can miss both (the record moved
        between its two opens): then it looks again, a few times."""
        for _ in range(_SLOT_PASSES):
            found = _latest(
                [self._read_name(dfd, job_id + _SUFFIX), self._read_name(dfd, job_id + _SECOND)]
            )
            if found is not None:
                return found
        return None

    def _read_name(self, dfd: int, name: str) -> JobRecord | JournalProblem | None:
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd
            )
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                return JournalProblem(path, "is a symlink, not a record: skipped")
            return JournalProblem(path, f"unreadable ({err.strerror}): skipped", err.errno)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return JournalProblem(path, "is not a regular file: skipped")
            if st.st_uid != os.geteuid():
                return JournalProblem(path, f"is owned by uid {st.st_uid}, not by us: skipped")
            # Bounded and linear: a record is a few KiB per thousand members.
            chunks: list[bytes] = []
            size = 0
            while chunk := os.read(fd, 1 << 16):
                size += len(chunk)
                if size > MAX_RECORD_BYTES:
                    return JournalProblem(path, f"larger than {MAX_RECORD_BYTES} bytes: skipped")
                chunks.append(chunk)
            raw = b"".join(chunks)
        finally:
            os.close(fd)
        try:
            record = JobRecord.from_json(raw)
        except ValueError as err:
            what = "empty" if not raw else f"corrupt or truncated: {err}"
            return JournalProblem(path, f"{what}: skipped")
        if name not in (record.job_id + _SUFFIX, record.job_id + _SECOND):
            return JournalProblem(path, f"names job {record.job_id!r}, not its own file: skipped")
        return record

    def entries(self) -> Iterator[JobRecord | JournalProblem]:
        """Every record (or problem), oldest first; nothing if there is no journal."""
        try:
            dfd = self._dirfd(create=False)
        except FileNotFoundError:
            return
        jobs: dict[str, list[JobRecord | JournalProblem | None]] = {}
        for name in sorted(os.listdir(dfd)):
            if name.startswith(".") or not name.endswith(_SUFFIX):
                continue
            job = name.removesuffix(_SECOND) if name.endswith(_SECOND) else name[: -len(_SUFFIX)]
            jobs.setdefault(job, []).append(self._read_name(dfd, name))
        found: list[JobRecord | JournalProblem] = []
        for job, slots in jobs.items():
            entry = _latest(slots)
            if entry is None:
                # Listed, then gone: removed, or moved to the other slot by a
                # rewrite since the listing (then it is there).
                entry = self._read_slots(dfd, job)
            if entry is not None:
                found.append(entry)
        found.sort(key=lambda e: e.started_at if isinstance(e, JobRecord) else 0.0)
        yield from found


def _latest(
    slots: list[JobRecord | JournalProblem | None],
) -> JobRecord | JournalProblem | None:
    """A job's record from its slots: the higher revision; a problem only
    if no slot holds a record (a crash mid-write leaves the other whole)."""
    records = [e for e in slots if isinstance(e, JobRecord)]
    if records:
        return max(records, key=lambda r: r.revision)
    return next((e for e in slots if e is not None), None)


def new_record(
    *,
    job_id: str,
    cookie: str,
    argv: tuple[str, ...],
    policy: Policy,
    supervisor: Identity | tuple[int, int],
    not_before: int,
    cgroup: str | None,
    trackers: tuple[str, ...],
    restartable: bool,
    tag_gid: int | None = None,
) -> JobRecord:
    """A job's first record (state ``starting``)."""
    return JobRecord(
        job_id=job_id,
        cookie=cookie,
        argv=argv,
        policy=policy,
        owner_uid=os.geteuid(),
        started_at=time.time(),
        boot_id=boot_id(),
        supervisor=Identity(*supervisor),
        not_before=not_before,
        cgroup=cgroup,
        trackers=trackers,
        restartable=restartable,
        tag_gid=tag_gid,
    )
