"""A job on a tether: start it, wait for it, cancel it; nothing it starts outlives it."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import IO, Any, TypedDict, Unpack

from tether import logs
from tether.errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    JournalError,
    UsageError,
)
from tether.identity import Identity
from tether.journal import JobRecord, Journal, new_record
from tether.membership import Membership
from tether.policy import Policy
from tether.process import ProcessHandle, ProcessInfo, read_process
from tether.report import Report, oneline
from tether.spec import Arg, JobSpec, Leftovers, command_args
from tether.terminate import Member, Progress, terminate
from tether.tracking.base import TrackerStatus
from tether.tracking.cookie import COOKIE_VAR, new_cookie
from tether.tracking.select import select_trackers
from tether.watchdog import WATCHDOG_DONE

__all__ = [
    "CompletedJob",
    "Job",
    "JobOptions",
    "kill_gid",
    "kill_tree",
    "resolve_command",
    "run",
    "start",
]

# The leader writes itself into the job cgroup *before* exec, so the job's
# first instruction already runs inside it: no fork can precede containment.
# `echo` is a builtin, so the process writing "0" is the shell itself.
_CGROUP_SHIM = 'echo 0 >"$0" || exit 125; exec "$@"'

_Stream = int | IO[Any] | None
_LOG = "tether.job"
_dedicated_lock = threading.Lock()
#: Ids of jobs using a dedicated supervisor (at most one: its children are the job's).
_dedicated_jobs: set[str] = set()


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Watchdogs told their job is over, not yet reaped (they exit on their own).
_released_watchdogs: set[int] = set()


def _spawn_watchdog(args: Sequence[str], stdin: int) -> int:
    """Start ``python -m tether.watchdog ARGS`` in its own session; its pid.

    posix_spawn (vfork + exec) rather than Popen: nothing to clean up in this
    process but the pid, which the caller reaps once the watchdog is done.
    """
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    env = dict(os.environ)
    flags = []
    if os.path.isdir(_PACKAGE_PARENT):
        # -S skips site (and every .pth it runs: tens of ms on some
        # installs); tether is found through PYTHONPATH instead.
        flags = ["-S"]
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p
        )
    try:
        return os.posix_spawn(
            sys.executable,
            [sys.executable, *flags, "-m", "tether.watchdog", *args],
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, devnull, 1)],
            # Its own session: a Ctrl-C on the job's terminal must not take
            # the watchdog down along with the supervisor.
            setsid=True,
        )
    finally:
        os.close(devnull)


def _reap_released_watchdogs() -> None:
    for pid in list(_released_watchdogs):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid  # reaped already (a dedicated supervisor reaps every child)
        if done:
            _released_watchdogs.discard(pid)


def resolve_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The executable argv[0] names, or CommandNotFound / CommandNotExecutable."""
    if not argv:
        raise UsageError("no command given")
    cmd = argv[0]
    if not cmd:
        raise CommandNotFoundError(cmd)
    if os.sep in cmd:
        if not os.path.exists(cmd):
            raise CommandNotFoundError(cmd)
        if os.path.isdir(cmd) or not os.access(cmd, os.X_OK):
            raise CommandNotExecutableError(cmd)
        return cmd
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = shutil.which(cmd, path=path)
    if found is None:
        # which() skips non-executable files; tell "exists" from "missing".
        for d in path.split(os.pathsep):
            if os.path.isfile(os.path.join(d or ".", cmd)):
                raise CommandNotExecutableError(cmd)
        raise CommandNotFoundError(cmd)
    return found


@dataclass(frozen=True)
class CompletedJob:
    """What :func:`run` returns.

    Attributes:
        returncode: the leader's exit status; negative -N if killed by signal N.
        timed_out: the timeout expired and the policy was applied.
        report: what the final termination found and did.
    """

    argv: tuple[str, ...]
    returncode: int
    timed_out: bool
    report: Report


class JobOptions(TypedDict, total=False):
    """Keyword arguments of :func:`start` and :func:`run`: what the
    :class:`~tether.spec.JobSpec` holds, then how the job is supervised."""

    policy: Policy | str | None
    trackers: str | Sequence[str] | None
    env: Mapping[str, str] | None
    cwd: str | os.PathLike[str] | None
    restartable: bool
    tag_gid: int | None
    leftovers: Leftovers
    stdin: _Stream
    stdout: _Stream
    stderr: _Stream
    dedicated_supervisor: bool
    journal: Journal | bool
    watchdog: bool


_SUPERVISION = ("stdin", "stdout", "stderr", "dedicated_supervisor", "journal", "watchdog")


def _split_options(
    argv: Sequence[Arg], timeout: float | None, options: Mapping[str, Any]
) -> tuple[JobSpec, dict[str, Any]]:
    """(the spec, the supervision options) from :class:`JobOptions`."""
    supervision = {k: v for k, v in options.items() if k in _SUPERVISION}
    described = {k: v for k, v in options.items() if k not in _SUPERVISION and v is not None}
    spec = JobSpec(argv=command_args(argv), timeout=timeout, **described)
    return spec, supervision


class Job:
    """A running job. Create with :func:`start`; use as a context manager.

    Leaving the ``with`` block, normally or by an exception, terminates what
    is left of the tree with the job's policy and waits for all of it.
    """

    def __init__(
        self,
        spec: JobSpec,
        *,
        stdin: _Stream = None,
        stdout: _Stream = None,
        stderr: _Stream = None,
        dedicated_supervisor: bool = False,
        wake_fd: int | None = None,
        journal: Journal | bool = True,
        watchdog: bool = True,
    ) -> None:
        """Start ``spec``'s command.

        Args:
            spec: what to run and how to contain it.
            stdin, stdout, stderr: as :class:`subprocess.Popen`'s.
            dedicated_supervisor: this process runs nothing but this job, so
                it may be the job's subreaper and reap every child it gets.
            wake_fd: a fd whose readability interrupts the job's waits (the
                CLI's signal pipe).
            journal: record the job in the journal of live jobs (a
                :class:`Journal`, or True for the default one).
            watchdog: start a watchdog that terminates the job if this
                process dies.
        """
        self.spec = spec
        self.argv = spec.argv
        self.policy = spec.policy
        self.tag_gid = spec.tag_gid
        if spec.tag_gid is not None and os.geteuid() != 0:
            raise UsageError("tagging a job with a group (--tag-gid) needs root (CAP_SETGID)")
        base_env = dict(spec.env if spec.env is not None else os.environ)
        resolve_command(self.argv, base_env)
        self.id = new_cookie()
        self._report: Report | None = None
        self._leader_logged = False
        self._lock = threading.Lock()
        self._dedicated = dedicated_supervisor
        if dedicated_supervisor:
            with _dedicated_lock:
                if _dedicated_jobs:
                    raise UsageError("only one job at a time may use a dedicated supervisor")
                _dedicated_jobs.add(self.id)
        try:
            sel = select_trackers(
                spec.trackers, self.id, dedicated=dedicated_supervisor, tag_gid=spec.tag_gid
            )
        except BaseException:
            _dedicated_jobs.discard(self.id)
            raise
        self._selection = sel
        self._journal: Journal | None = None
        self._record: JobRecord | None = None
        self._watchdog_pid = 0
        self._watchdog_pipe = -1
        if journal is not False:
            self._journal = journal if isinstance(journal, Journal) else Journal.default()
            try:
                self._start_journal(spec.restartable, watchdog)
            except BaseException:
                self._cleanup_failed_start()
                raise
        base_env[COOKIE_VAR] = self.id
        exec_argv: list[str] = list(self.argv)
        if sel.cgroup is not None:
            exec_argv = ["/bin/sh", "-c", _CGROUP_SHIM, sel.cgroup.procs_file, *self.argv]
        try:
            self._popen = subprocess.Popen(
                exec_argv,
                env=base_env,
                cwd=spec.cwd,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
                # The tag survives setsid, double forks and env -i; only
                # CAP_SETGID can drop it (SGE's ENABLE_ADDGRP_KILL).
                extra_groups=None if spec.tag_gid is None else [*os.getgroups(), spec.tag_gid],
            )
        except FileNotFoundError:
            self._cleanup_failed_start()
            raise CommandNotFoundError(self.argv[0]) from None
        except PermissionError:
            self._cleanup_failed_start()
            raise CommandNotExecutableError(self.argv[0]) from None
        except BaseException:
            self._cleanup_failed_start()
            raise
        self.pid = self._popen.pid
        # Our unreaped child: its pid cannot be reused, so this cannot fail.
        handle = ProcessHandle.open(self.pid)
        assert handle is not None
        self._leader = handle
        leader = Identity(self.pid, handle.starttime)
        if self._record is not None:
            self._record = replace(
                self._record,
                leader=leader,
                sid=self.pid,
                not_before=handle.starttime,
                state="running",
                members=(leader,),
            )
            self._write_record()
        self._membership = Membership.for_job(
            sel,
            leader,
            job_id=self.id,
            reap_leader=self._reap_leader,
            wake_fd=wake_fd,
            on_new_members=self._record_members if self._record is not None else None,
        )
        if self._watchdog_pid:
            self._membership.protect([self._watchdog_pid])
        self._wake_fd = wake_fd
        if logs.enabled(logs.INFO, _LOG):
            used = [s.name for s in sel.statuses if s.used]
            refused = [f"{s.name}: {s.reason}" for s in sel.statuses if not s.used]
            logs.log(_LOG, logs.INFO,
                     f"job {self.id} started: pid {self.pid}, trackers {','.join(used)}",
                     job_id=self.id, pid=self.pid, argv=oneline(" ".join(self.argv), 200),
                     trackers=used, not_used=refused, caveats=list(sel.caveats()),
                     cgroup=self.cgroup_path)  # fmt: skip

    # -- the journal and the watchdog ---------------------------------------

    def _start_journal(self, restartable: bool, watchdog: bool) -> None:
        """Record the job before its first process runs; start its watchdog."""
        assert self._journal is not None
        me_info = read_process(os.getpid())
        assert me_info is not None  # this very process
        me = me_info.starttime
        sel = self._selection
        self._record = new_record(
            job_id=self.id,
            cookie=self.id,
            argv=self.argv,
            policy=self.policy,
            supervisor=Identity(os.getpid(), me),
            not_before=me,
            cgroup=sel.cgroup.path if sel.cgroup is not None else None,
            trackers=tuple(s.name for s in sel.statuses if s.used),
            restartable=restartable,
            tag_gid=self.tag_gid,
        )
        self._write_record()
        if not watchdog:
            return
        rfd, wfd = os.pipe()
        try:
            pid = _spawn_watchdog(
                [self._journal.directory, self.id, str(os.getpid()), str(me)], stdin=rfd
            )
        except OSError as err:
            os.close(wfd)
            raise JournalError(f"cannot start the watchdog: {err.strerror}") from None
        finally:
            os.close(rfd)
        self._watchdog_pid = pid
        self._watchdog_pipe = wfd
        started = ProcessHandle.open(pid)
        if started is not None:
            self._record = replace(self._record, watchdog=Identity(started.pid, started.starttime))
            started.close()

    def _write_record(self) -> None:
        if self._journal is not None and self._record is not None:
            self._journal.write(self._record)

    def _record_members(self, new: Sequence[Member]) -> None:
        if self._record is None:
            return
        self._record = self._record.with_members({Identity(m.pid, m.starttime) for m in new})
        with contextlib.suppress(JournalError):
            self._write_record()

    def _finish_journal(self, complete: bool) -> None:
        """Drop the record once the tree is proven empty; release the watchdog."""
        if self._journal is not None and self._record is not None:
            if complete:
                self._journal.remove(self.id)
            else:
                # Survivors: keep the record so `tether reap` can try again.
                self._record = replace(self._record, state="survivors")
                with contextlib.suppress(JournalError):
                    self._write_record()
            self._journal.close()
            self._record = None
        if self._watchdog_pipe >= 0:
            with contextlib.suppress(OSError):
                os.write(self._watchdog_pipe, WATCHDOG_DONE)
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = -1
        if self._watchdog_pid:
            _released_watchdogs.add(self._watchdog_pid)
            self._watchdog_pid = 0
        _reap_released_watchdogs()

    def _cleanup_failed_start(self) -> None:
        if self._selection.cgroup is not None:
            self._selection.cgroup.remove()
        self._finish_journal(complete=True)
        _dedicated_jobs.discard(self.id)

    def _reap_leader(self) -> None:
        self._popen.poll()

    # -- observing -------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The leader's exit status once it has exited (-N: killed by signal N)."""
        return self._note_leader(self._popen.poll())

    def _note_leader(self, rc: int | None) -> int | None:
        """Log the leader's exit once, when it is first seen."""
        if rc is not None and not self._leader_logged:
            self._leader_logged = True
            how = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            logs.log(_LOG, logs.INFO, f"job {self.id}: leader pid {self.pid} {how}",
                     job_id=self.id, pid=self.pid, returncode=rc)  # fmt: skip
        return rc

    @property
    def leader_fileno(self) -> int:
        """The leader's pidfd (readable once it exits), or -1 without pidfds."""
        return self._leader.fileno

    @property
    def trackers(self) -> tuple[TrackerStatus, ...]:
        """Every tracker, whether it was used for this job, and why (not)."""
        return tuple(self._selection.statuses)

    @property
    def cgroup_path(self) -> str | None:
        return self._selection.cgroup.path if self._selection.cgroup is not None else None

    @property
    def report(self) -> Report | None:
        """The termination report, once the job has been terminated."""
        return self._report

    def members(self) -> list[ProcessInfo]:
        """The job's live members now, leader included."""
        with self._lock:
            if self._report is not None:
                return []
            out = []
            for m in self._membership.scan():
                if m.alive:
                    info = read_process(m.pid, ("cmdline",))
                    if info is not None and info.starttime == m.starttime:
                        out.append(info)
            return out

    def found_by(self) -> dict[int, tuple[str, ...]]:
        """pid -> names of the trackers that found each live member."""
        with self._lock:
            return {m.pid: tuple(sorted(m.found_by)) for m in self._membership.scan() if m.alive}

    # -- waiting ---------------------------------------------------------

    def wait(self, timeout: float | None = None, *, also: Sequence[int] = ()) -> int | None:
        """Wait for the leader to exit; its status, or None if ``timeout`` passed.

        Event-driven: sleeps in poll() on the leader's pidfd (and the wake fd
        the CLI uses for signals), so an idle job costs no CPU. It also
        returns early when any fd in ``also`` becomes readable.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        pollable = self._leader.fileno >= 0
        if pollable:
            poller.register(self._leader.fileno, select.POLLIN)
        if self._wake_fd is not None:
            poller.register(self._wake_fd, select.POLLIN)
        for fd in also:
            poller.register(fd, select.POLLIN)
        while True:
            rc = self._note_leader(self._popen.poll())
            if rc is not None:
                return rc
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if not pollable:
                left = 0.05 if left is None else min(left, 0.05)
            events = poller.poll(None if left is None else max(1, int(left * 1000 + 0.999)))
            if any(fd == self._wake_fd or fd in also for fd, _ in events):
                return self._note_leader(self._popen.poll())

    def reap_adopted(self) -> None:
        """Reap exited orphans a dedicated supervisor adopted (and the leader, if
        it exited). Without this they stay zombies until the job is cancelled."""
        with self._lock:
            if self._report is None:
                self._membership.reap()

    def wait_tree(self, timeout: float | None = None) -> bool:
        """Wait for every member to exit by itself; True if the tree emptied."""
        with self._lock:
            self._membership.scan()
            return self._membership.wait_empty(float("inf") if timeout is None else timeout)

    # -- terminating -----------------------------------------------------

    def cancel(
        self,
        reason: str = "cancelled",
        *,
        policy: Policy | None = None,
        skip_to_last: Callable[[], bool] = lambda: False,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Report:
        """Terminate the whole tree with the policy; return (and keep) the report.

        Idempotent: a second call returns the first report. ``on_progress``
        is given to :func:`tether.terminate.terminate` (a progress display).
        """
        with self._lock:
            if self._report is not None:
                return self._report
            try:
                report = terminate(
                    self._membership,
                    policy if policy is not None else self.policy,
                    job_id=self.id,
                    reason=reason,
                    skip_to_last=skip_to_last,
                    on_progress=on_progress,
                )
                with contextlib.suppress(ChildProcessError):
                    self._popen.wait(timeout=0 if not report.complete else None)
                self._note_leader(self._popen.returncode)
            except subprocess.TimeoutExpired:
                pass
            finally:
                self._membership.close()
                self._leader.close()
            cg = self._selection.cgroup
            if cg is not None and report.complete:
                cg.remove()
            self._finish_journal(report.complete)
            _dedicated_jobs.discard(self.id)
            self._report = report
            return report

    def __enter__(self) -> Job:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._report is None:
            reason = (
                "context exited" if exc_type is None else f"context exited by {exc_type.__name__}"
            )
            self.cancel(reason)


def start(argv: Sequence[Arg], **options: Unpack[JobOptions]) -> Job:
    """Start ``argv`` on a tether; see :class:`JobOptions` and :class:`Job`."""
    spec, supervision = _split_options(argv, None, options)
    return Job(spec, **supervision)


def run(
    argv: Sequence[Arg], *, timeout: float | None = None, **options: Unpack[JobOptions]
) -> CompletedJob:
    """Run ``argv`` to completion, then terminate anything it left behind.

    If ``timeout`` (seconds) passes first, the whole tree is terminated with
    the policy and ``timed_out`` is True. With ``leftovers="wait"``, members
    left when the leader exits are waited for (until the timeout) instead.
    """
    spec, supervision = _split_options(argv, timeout, options)
    with Job(spec, **supervision) as job:
        deadline = None if timeout is None else time.monotonic() + timeout
        rc = job.wait(timeout)
        timed_out = rc is None
        if not timed_out and spec.leftovers == "wait":
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            timed_out = not job.wait_tree(left) and left is not None
        report = job.cancel("timeout" if timed_out else "leftovers after the leader exited")
        final = job.returncode
    return CompletedJob(
        spec.argv, final if final is not None else -signal.SIGKILL, timed_out, report
    )


def kill_tree(
    pid: int,
    *,
    policy: Policy | str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Report:
    """Terminate the tree rooted at ``pid``, a process tether did not start.

    Best effort: the report says which trackers could apply.
    """
    membership, _info = Membership.for_tree(pid)
    return _terminate(membership, policy, f"pid-{pid}", f"kill_tree({pid})", on_progress)


def kill_gid(gid: int, *, policy: Policy | str | None = None) -> Report:
    """Terminate every process carrying supplementary group ``gid`` (see ``tag_gid``)."""
    membership = Membership.for_gid(gid)
    return _terminate(membership, policy, f"gid-{gid}", f"tether kill --gid {gid}", None)


def _terminate(
    membership: Membership,
    policy: Policy | str | None,
    job_id: str,
    reason: str,
    on_progress: Callable[[Progress], None] | None,
) -> Report:
    """The engine on a tree tether did not start; the membership is closed after."""
    try:
        if isinstance(policy, str):
            policy = Policy.parse(policy)
        return terminate(
            membership,
            policy if policy is not None else Policy.default(),
            job_id=job_id,
            reason=reason,
            on_progress=on_progress,
        )
    finally:
        membership.close()
