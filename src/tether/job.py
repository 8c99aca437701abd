"""A job on a tether: start it, wait for it, cancel it; nothing it starts outlives it."""

from __future__ import annotations

import _thread
import io
import os
import resource
import select
import sys
import time

from tether import _signals, logs
from tether._fdwait import wait_readable
from tether._records import dataclass, replace
from tether.errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    JournalError,
    UsageError,
)
from tether.identity import Identity
from tether.journal import JobRecord, Journal, new_record
from tether.membership import Membership, _raise_fd_limit
from tether.policy import MAX_POLL_MS, Policy
from tether.process import ProcessHandle, ProcessInfo, own_starttime, read_process
from tether.report import Report, oneline
from tether.sanitize import visible
from tether.spec import Arg, JobSpec, Leftovers, command_args
from tether.supervise import EXIT_LEFTOVERS, SignalInbox, supervise
from tether.terminate import Member, Progress, terminate
from tether.tracking.base import TrackerStatus
from tether.tracking.cookie import COOKIE_VAR, new_cookie
from tether.tracking.select import select_trackers
from tether.watchdog import WATCHDOG_DONE

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Mapping, Sequence
    from types import TracebackType
    from typing import IO, Any, TypedDict, Unpack

    from tether._run_errors import JobFailedError, JobTimeoutError
    from tether.keeper import KeptPopen
else:

    class TypedDict:
        # JobOptions' fields, until __getattr__ makes typing's TypedDict of them.
        def __init_subclass__(cls, total: bool = True) -> None:
            pass


__all__ = [
    "CompletedJob",
    "Job",
    "JobFailedError",
    "JobOptions",
    "JobTimeoutError",
    "kill_gid",
    "kill_tree",
    "resolve_command",
    "run",
    "start",
]

# The leader writes itself into the job cgroup *before* exec, so the job's
# first instruction already runs inside it: no fork can precede containment.
# `echo` is a builtin, so the process writing "0" is the shell itself.
_CGROUP_SHIM = 'echo 0 >"$1" || exit 125; shift'
#: The shell sets PWD at start-up (to getcwd() unless it already names the
#: cwd): an explicit env without PWD must reach the job without one.
_UNSET_PWD = "unset PWD"
_SET_PWD = "PWD=$1; export PWD; shift"
_SET_NOFILE = 'ulimit -S -n "$1" || exit 125; shift'

#: The caller's soft RLIMIT_NOFILE before tether raised it for its pidfds.
_caller_nofile = [resource.getrlimit(resource.RLIMIT_NOFILE)[0]]

if TYPE_CHECKING:
    _Stream = int | IO[Any] | None
_LOG = "tether.job"
_dedicated_lock = _thread.allocate_lock()
#: Ids of jobs using a dedicated supervisor (at most one: its children are the job's).
_dedicated_jobs: set[str] = set()


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The watchdog's entry point: ``-c`` rather than ``-m tether.watchdog``, whose
#: runpy (and its imports) costs the idle watchdog ~1 MB and ~4 ms; ``-P``
#: keeps the job's working directory off sys.path (a ``tether/`` there would
#: be imported instead).
_WATCHDOG_MAIN = "import sys; from tether.watchdog import main; sys.exit(main(sys.argv[1:]))"
#: The idle stage of the watchdog of tether's own supervisors: a shell
#: (~0.3 MB against ~4 MB for an idle interpreter) that waits for the pipe's
#: "done" line and exits, or at the pipe's end — the supervisor died, closing
#: its write end — execs the Python watchdog (same pid, so the same identity
#: in the journal), which finds the supervisor gone and recovers the job.
#: Only `tether run` and the remote agent use it (Job's _forks_nothing_else):
#: the write end is close-on-exec and they fork nothing that could keep it
#: open, so the pipe's end is their death. Any other caller may fork while
#: the job runs, so its watchdog polls its pidfd: the Python watchdog from
#: the start.
_WATCHDOG_SHELL_STAGE = 'cd /; IFS= read -r line; [ "$line" = done ] && exit 0; exec "$@"'
_SHELL = "/bin/sh"
#: Watchdogs told their job is over, not yet reaped (they exit on their own).
_released_watchdogs: set[int] = set()
#: How long a dedicated supervisor waits for its watchdog to exit after DONE
#: (it exits within milliseconds): leaving first would leave it a zombie of
#: init's — forever in a container whose PID 1 does not reap.
_WATCHDOG_EXIT_WAIT = 2.0
#: The report's caveat for ``foreground`` jobs.
FOREGROUND_CAVEAT = (
    "foreground: the job shares tether's session and process group (the terminal's), so "
    "the session tracker was not used; a member that left the job's cgroup (or, without "
    "one, re-parented away from tether and cleared its environment) is not found"
)


def _keeper_available() -> bool:
    from tether.keeper import keeper_available

    return keeper_available()


def _kept(popen: object) -> KeptPopen | None:
    """``popen`` if the job keeper started it. tether.keeper (sockets, pickle,
    ~2 MB and ~4 ms of imports) is imported only by jobs that use it, so
    without it loaded nothing is a KeptPopen."""
    keeper = sys.modules.get("tether.keeper")
    if keeper is None:
        return None
    from tether.keeper import KeptPopen

    return popen if isinstance(popen, KeptPopen) else None


def _spawn_watchdog(args: Sequence[str], stdin: int, shell_stage: bool = False) -> int:
    """Start the watchdog (:mod:`tether.watchdog`) with ARGS in its own session; its pid.

    posix_spawn (vfork + exec) rather than Popen: nothing to clean up in this
    process but the pid, which the caller reaps once the watchdog is done.
    ``shell_stage``: idle in a shell first (:data:`_WATCHDOG_SHELL_STAGE`).
    """
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    env = dict(os.environ)
    flags = ["-P"]
    if os.path.isdir(_PACKAGE_PARENT):
        # -S skips site (and every .pth it runs: tens of ms on some
        # installs); tether is found through PYTHONPATH instead.
        flags = ["-S", "-P"]
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p
        )
    argv = [sys.executable, *flags, "-c", _WATCHDOG_MAIN, *args]
    if shell_stage and os.access(_SHELL, os.X_OK):
        argv = [_SHELL, "-c", _WATCHDOG_SHELL_STAGE, "tether-watchdog", *argv]
        # Where /bin/sh is bash, exported functions (a `read` or `cd` of the
        # user's) and SHELLOPTS reach it through the environment: the stage
        # must run the builtins. Python needs none of them.
        for name in [k for k in env if k.startswith("BASH_FUNC_")]:
            del env[name]
        env.pop("SHELLOPTS", None)
        env.pop("BASHOPTS", None)
    try:
        return os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, devnull, 1)],
            # Its own session: a Ctrl-C on the job's terminal must not take
            # the watchdog down along with the supervisor.
            setsid=True,
        )
    finally:
        os.close(devnull)


_own_starttimes: dict[int, int] = {}


def _own_starttime(pid: int) -> int:
    """This process's start time (keyed by pid: a forked child asks anew)."""
    starttime = _own_starttimes.get(pid)
    if starttime is None:
        starttime = _own_starttimes[pid] = own_starttime()
    return starttime


def _wait_watchdog_exit(pid: int, timeout: float) -> None:
    """Wait (bounded) for our child ``pid`` to exit; it stays unreaped."""
    try:
        # Our unreaped child: its pid cannot have been reused.
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # reaped already (a dedicated supervisor reaps every child)
    except (OSError, AttributeError):
        # No pidfds: look at it a few times instead.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    return
            except ChildProcessError:
                return
            time.sleep(0.01)
        return
    try:
        wait_readable(fd, timeout)
    finally:
        os.close(fd)


def _reap_released_watchdogs() -> None:
    for pid in list(_released_watchdogs):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid  # reaped already (a dedicated supervisor reaps every child)
        if done:
            _released_watchdogs.discard(pid)


def _nofile_to_restore() -> int | None:
    """The caller's soft fd limit if tether has raised this process's since (the
    job inherits the caller's limits, not tether's), else None."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if not _raise_fd_limit.cached():
        _caller_nofile[0] = soft  # not raised yet: whatever it is, it is the caller's
        return None
    return None if soft == _caller_nofile[0] else _caller_nofile[0]


def _exec_argv(argv: Sequence[str], env: Mapping[str, str], cgroup_procs: str | None) -> list[str]:
    """``argv``, behind a /bin/sh shim when something must happen between fork
    and exec (no preexec_fn: it is unsafe in a threaded caller)."""
    steps: list[str] = []
    params: list[str] = []
    if cgroup_procs is not None:
        steps.append(_CGROUP_SHIM)
        params.append(cgroup_procs)
    nofile = _nofile_to_restore()
    if nofile is not None:
        steps.append(_SET_NOFILE)
        params.append("unlimited" if nofile == resource.RLIM_INFINITY else str(nofile))
    if not steps:
        return list(argv)
    if "PWD" in env:
        steps.append(_SET_PWD)
        params.append(env["PWD"])
    else:
        steps.append(_UNSET_PWD)
    return ["/bin/sh", "-c", "; ".join([*steps, 'exec "$@"']), "tether", *params, *argv]


#: Whether leaders may be created in their cgroup by clone3 (False: always the
#: /bin/sh shim; for tests of the fallback and bench/api_cost.py's reference row).
_CLONE_INTO_CGROUP = True
#: The largest resident set for which this process forks the leader into its
#: cgroup by the ctypes clone3 itself (`tether run` is ~16 MB); the native
#: clone copies no page tables, and a job keeper always clones.
_CLONE_MAX_RESIDENT = 32 << 20


class _SpawnedLeader:
    """The leader as Job uses a Popen (``pid``, ``poll()``, ``wait()``,
    ``returncode``, no pipes), started by :func:`spawn.spawn` without
    subprocess: subprocess imports locale, re, enum, threading, selectors and
    warnings, ~10 ms of every `tether run` (issue 15). A job with pipes, a
    keeper or no clone3 gets a Popen. Statuses as Popen's: -N for signal N;
    0 if another waiter reaped it first (ECHILD, Popen's rule)."""

    stdin = stdout = stderr = None

    def __init__(self, args: list[str], pid: int, born: tuple[int, int] | None) -> None:
        self.args = args
        self.pid = pid
        #: (start time, pidfd) of the leader, from its clone (see _CgroupPopen.born).
        self.born = born
        self.returncode: int | None = None
        self._waitpid_lock = _thread.allocate_lock()

    def poll(self) -> int | None:
        if self.returncode is None and self._waitpid_lock.acquire(False):
            try:
                if self.returncode is None:
                    try:
                        pid, status = os.waitpid(self.pid, os.WNOHANG)
                    except ChildProcessError:
                        self.returncode = 0
                    else:
                        if pid == self.pid:
                            self.returncode = os.waitstatus_to_exitcode(status)
            finally:
                self._waitpid_lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                with self._waitpid_lock:
                    if self.returncode is not None:
                        break
                    try:
                        _pid, status = os.waitpid(self.pid, 0)
                    except ChildProcessError:
                        self.returncode = 0
                    else:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        deadline = time.monotonic() + timeout
        while (rc := self.poll()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                import subprocess

                raise subprocess.TimeoutExpired(self.args, timeout)
            # Popen's own rhythm for a wait with a timeout (its pidfd may be
            # closed by the Job meanwhile, so it is not waited on here).
            time.sleep(min(left, 0.05))
        return rc


def _spawn_leader(
    direct: Mapping[str, Any],
    env: Mapping[str, str],
    stdio: tuple[int, int, int],
    *,
    cwd: str | None,
    start_new_session: bool,
    extra_groups: list[int] | None,
) -> _SpawnedLeader | None:
    """The leader, born in its cgroup by clone3 without a Popen; None where
    this process cannot clone it (the job then starts its leader through the
    /bin/sh shim). Also CgroupPopen's way, for a leader with pipes."""
    from tether._platform.linux import procfs, spawn

    # The ctypes clone3 is a fork (page tables copied, copy-on-write after)
    # where Popen vforks: its cost grows with this process's size while the
    # shim's cgroup.procs write costs a fixed ~10 ms. A large caller (200 MB:
    # 38 ms against 23 ms) keeps the shim unless the native clone, a vfork,
    # is there.
    if not (spawn.native() or spawn.resident_bytes() <= _CLONE_MAX_RESIDENT):
        return None
    # Popen's audit event (PEP 578), which this spawn would otherwise skip.
    sys.audit("subprocess.Popen", direct["argv"][0], list(direct["argv"]), cwd, env)
    before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    try:
        pid, pidfd = spawn.spawn(
            direct["argv"],
            env,
            stdio=stdio,
            cgroup=direct["cgroup"],
            start_new_session=start_new_session,
            extra_groups=extra_groups,
            nofile=direct["nofile"],
            cwd=cwd,
        )
    except spawn.Unavailable:
        return None
    # The clone's own pidfd and its start time from the clock
    # (procfs.starttime_between): Job holds the leader without the first
    # lookup of a new pid's /proc entries (~0.1-0.3 ms), when both readings
    # fall in one tick.
    starttime = procfs.starttime_between(before, time.clock_gettime_ns(time.CLOCK_BOOTTIME))
    if starttime is None:
        os.close(pidfd)
    born = None if starttime is None else (starttime, pidfd)
    return _SpawnedLeader(list(direct["argv"]), pid, born)


def _stdio_fd(stream: object) -> int | None:
    """The fd a spawn gives the leader for ``stream`` (None: inherit, -1), or
    None where only Popen can say (PIPE, DEVNULL, STDOUT, a file object)."""
    if stream is None:
        return -1
    if isinstance(stream, int) and not isinstance(stream, bool) and stream >= 0:
        return stream
    return None


def _environ_copy() -> dict[str, str]:
    """``dict(os.environ)``, decoded straight from its bytes (the Mapping
    protocol encodes each name again to look its value up)."""
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):
        return dict(os.environ)
    key, value = os.environ.decodekey, os.environ.decodevalue
    return {key(k): value(v) for k, v in data.items()}


def _which(cmd: str, path: str) -> str | None:
    """``shutil.which(cmd, path=path)`` on POSIX, without importing shutil
    (which brings fnmatch, zlib, bz2 and lzma: ~2 ms of every start)."""
    seen: set[str] = set()
    for d in path.split(os.pathsep) if path else ():
        if d in seen:
            continue
        seen.add(d)
        name = os.path.join(d, cmd)
        if os.path.exists(name) and os.access(name, os.X_OK) and not os.path.isdir(name):
            return name
    return None


#: (PATH, name) -> where which() last found it.
_commands_found: dict[tuple[str, str], str] = {}


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
    key = (path, cmd)
    found = _commands_found.get(key)
    # Still there: one access() and one stat, where which() stats every
    # PATH entry before it (only the error matters here; exec searches anew).
    if found is not None and os.access(found, os.X_OK) and os.path.isfile(found):
        return found
    found = _which(cmd, path)
    if found is not None and len(_commands_found) < 256:
        _commands_found[key] = found
    if found is None:
        # which() skips non-executable files; tell "exists" from "missing".
        for d in path.split(os.pathsep):
            if os.path.isfile(os.path.join(d or ".", cmd)):
                raise CommandNotExecutableError(cmd)
        raise CommandNotFoundError(cmd)
    return found


@dataclass(frozen=True)
class CompletedJob:
    """What :func:`run` returns (a :class:`subprocess.CompletedProcess` and more).

    Attributes:
        argv: the command run, as strings.
        returncode: the leader's exit status; negative -N if killed by signal N.
        timed_out: the timeout expired and the policy was applied.
        report: what the final termination found and did.
        stdout, stderr: the captured output (str in text mode, else bytes),
            None when not captured.
        args: the command as given to :func:`run`.
    """

    argv: tuple[str, ...]
    returncode: int
    timed_out: bool
    report: Report
    stdout: Any = None
    stderr: Any = None
    args: Any = None

    def __post_init__(self) -> None:
        if self.args is None:
            object.__setattr__(self, "args", self.argv)

    def check_returncode(self) -> None:
        """Raise :class:`JobFailedError` if the leader's status is not 0."""
        if self.returncode:
            from tether._run_errors import JobFailedError

            raise JobFailedError(self.returncode, self.args, self.stdout, self.stderr, self.report)


class JobOptions(TypedDict, total=False):
    """Keyword arguments of :func:`start` and :func:`run`: what the
    :class:`~tether.spec.JobSpec` holds, then how the job is supervised
    (stdio as :class:`subprocess.Popen`'s)."""

    policy: Policy | str | None
    trackers: str | Sequence[str] | None
    env: Mapping[str, str] | None
    cwd: str | os.PathLike[str] | None
    restartable: bool
    tag_gid: int | None
    leftovers: Leftovers
    fail_on_leftovers: bool
    shell: bool
    stdin: _Stream
    stdout: _Stream
    stderr: _Stream
    text: bool | None
    encoding: str | None
    errors: str | None
    pass_fds: Sequence[int]
    dedicated_supervisor: bool
    journal: Journal | bool
    watchdog: bool


if not TYPE_CHECKING:
    # JobOptions is typing's TypedDict, made on first use: importing typing
    # costs every `tether run` ~5 ms of start-up (issue 15).
    _JOB_OPTIONS = JobOptions
    del JobOptions, TypedDict

    def __getattr__(name: str) -> object:
        if name in ("JobFailedError", "JobTimeoutError"):
            # subprocess's subclasses, made where subprocess is imported.
            from tether import _run_errors

            return getattr(_run_errors, name)
        if name != "JobOptions":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from typing import TypedDict

        made = TypedDict("JobOptions", _JOB_OPTIONS.__annotations__, total=False)
        made.__doc__ = _JOB_OPTIONS.__doc__
        globals()["JobOptions"] = made
        return made


_SUPERVISION = (
    "stdin",
    "stdout",
    "stderr",
    "text",
    "encoding",
    "errors",
    "pass_fds",
    "dedicated_supervisor",
    "journal",
    "watchdog",
)


def _split_options(
    args: Sequence[Arg] | str | bytes, timeout: float | None, options: Mapping[str, Any]
) -> tuple[JobSpec, dict[str, Any]]:
    """(the spec, the supervision options) from :class:`JobOptions`."""
    shell = bool(options.get("shell"))
    supervision = {k: v for k, v in options.items() if k in _SUPERVISION}
    described = {
        k: v for k, v in options.items() if k not in _SUPERVISION and k != "shell" and v is not None
    }
    argv = _shell_command(args) if shell else command_args(args)
    spec = JobSpec(argv=argv, timeout=timeout, **described)
    return spec, supervision


def _shell_command(args: Sequence[Arg] | str | bytes) -> tuple[str, ...]:
    """``shell=True``: as subprocess, the string (or the first argument) is a
    /bin/sh script and the rest its $0, $1, ..."""
    if isinstance(args, (str, bytes, os.PathLike)):
        return ("/bin/sh", "-c", os.fsdecode(args))
    return command_args(["/bin/sh", "-c", *args])


class _quiet_inbox:
    """An inbox no signal reaches: the library leaves the caller's handlers as
    they are (a Ctrl-C is the caller's KeyboardInterrupt; leaving the ``with``
    of the job terminates the tree). A class: contextlib is ~4 ms of a start."""

    def __enter__(self) -> SignalInbox:
        self._fds = os.pipe()
        os.set_blocking(self._fds[0], False)  # supervise() drains it
        return SignalInbox(self._fds[0])

    def __exit__(self, *_exc: object) -> None:
        os.close(self._fds[0])
        os.close(self._fds[1])


class _Pipes:
    """supervise()'s Channel for :func:`run` and :meth:`Job.communicate`: feeds
    the input and collects the output while the job runs, so that neither side
    can fill a pipe and block the other (Popen._communicate's rules: writes of
    at most PIPE_BUF once poll() says writable never block)."""

    _KEYS = (1, 2)

    def __init__(
        self, popen: subprocess.Popen[Any] | _SpawnedLeader, input: str | bytes | None
    ) -> None:
        self._text = any(isinstance(f, io.TextIOWrapper) for f in (popen.stdout, popen.stderr))
        self._files: dict[int, IO[Any]] = {}  # 1 stdout, 2 stderr
        self._codec: dict[int, tuple[str, str]] = {}
        self._chunks: dict[int, list[bytes]] = {}
        for key, f in zip(self._KEYS, (popen.stdout, popen.stderr), strict=True):
            if f is not None:
                self._files[key] = f
                self._chunks[key] = []
                if isinstance(f, io.TextIOWrapper):
                    self._codec[key] = (f.encoding, f.errors or "strict")
        self._open: dict[int, int] = {f.fileno(): k for k, f in self._files.items()}
        self._stdin = popen.stdin
        self._input = memoryview(b"")
        if input and self._stdin is None:
            raise ValueError("input was given but the job's stdin is not a pipe")
        if self._stdin is not None:
            if input:
                if isinstance(input, str):
                    if not isinstance(self._stdin, io.TextIOWrapper):
                        raise TypeError("input must be bytes unless the job is in text mode")
                    input = input.encode(self._stdin.encoding, self._stdin.errors or "strict")
                self._input = memoryview(input)
                try:
                    self._stdin.flush()
                except BrokenPipeError:
                    pass
            else:
                self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            try:
                self._stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            self._stdin = None

    # -- the Channel ----------------------------------------------------

    def wanted(self) -> dict[int, int]:
        fds = dict.fromkeys(self._open, select.POLLIN)
        if self._stdin is not None:
            fds[self._stdin.fileno()] = select.POLLOUT
        return fds

    def ready(self, fd: int, events: int) -> None:
        if self._stdin is not None and fd == self._stdin.fileno():
            try:
                self._input = self._input[os.write(fd, self._input[: select.PIPE_BUF]) :]
            except (BrokenPipeError, ConnectionResetError):
                self._input = memoryview(b"")  # the reader is gone, as Popen ignores it
            if not self._input:
                self._close_stdin()
            return
        key = self._open.get(fd)
        if key is None:
            return
        data = os.read(fd, 1 << 16)
        if data:
            self._chunks[key].append(data)
        else:
            del self._open[fd]
            self._files[key].close()

    def cancel_request(self) -> tuple[str, int] | None:
        return None

    def linger(self, complete: bool) -> float:
        # With the tree proven gone every writer is gone: EOF is immediate.
        # A survivor may hold a pipe forever: never wait on it for long.
        return 5.0 if complete else 0.5

    def idle(self) -> bool:
        return not self._open

    # -- for communicate() ----------------------------------------------

    def serve(self, leader_fd: int, timeout: float | None) -> None:
        """One poll() on the pipes and the leader's pidfd; serve what is ready."""
        fds = self.wanted()
        if leader_fd >= 0:
            fds[leader_fd] = select.POLLIN
        elif timeout is None or timeout > 0.05:
            timeout = 0.05  # no pidfd (psutil backend): look at the leader again soon
        poller = select.poll()
        for fd, events in fds.items():
            poller.register(fd, events)
        # poll() takes int milliseconds: a longer wait is served in turns.
        wait = None if timeout is None else min(1 << 30, max(1, int(timeout * 1000) + 1))
        for fd, events in poller.poll(wait):
            if fd != leader_fd:
                self.ready(fd, events)

    def drain_now(self) -> None:
        """Read whatever is readable without waiting (the leader has exited)."""
        self._close_stdin()
        while self._open:
            poller = select.poll()
            for fd in self._open:
                poller.register(fd, select.POLLIN)
            ready = poller.poll(0)
            if not ready:
                return
            for fd, events in ready:
                self.ready(fd, events)

    def close(self) -> None:
        self._close_stdin()
        for fd, key in list(self._open.items()):
            del self._open[fd]
            self._files[key].close()

    def output(self, key: int) -> bytes | None:
        return b"".join(self._chunks[key]) if key in self._chunks else None

    def result(self, key: int) -> Any:
        """The output as Popen.communicate returns it (text: decoded, newlines
        translated as TextIOWrapper would)."""
        data = self.output(key)
        if data is None or not self._text:
            return data
        encoding, errors = self._codec[key]
        return data.decode(encoding, errors).replace("\r\n", "\n").replace("\r", "\n")


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
        text: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        pass_fds: Sequence[int] = (),
        _forks_nothing_else: bool = False,
        _defer_running_record: bool = False,
    ) -> None:
        """Start ``spec``'s command.

        Args:
            spec: what to run and how to contain it.
            stdin, stdout, stderr, text, encoding, errors, pass_fds: as
                :class:`subprocess.Popen`'s.
            dedicated_supervisor: this process runs nothing but this job, so
                it may be the job's subreaper and reap every child it gets.
            wake_fd: a fd whose readability interrupts the job's waits (the
                CLI's signal pipe).
            journal: record the job in the journal of live jobs (a
                :class:`Journal`, or True for the default one).
            watchdog: start a watchdog that terminates the job if this
                process dies.
            _forks_nothing_else: tether's own supervisors (`tether run`, the
                remote agent): besides the leader and the watchdog, which
                both exec at once, this process forks nothing while the job
                runs, so the watchdog's pipe closes only when it dies and
                the watchdog may idle as a shell reading it. Any other
                caller may fork (a helper, a multiprocessing worker) and
                keep the pipe open: its watchdog watches its pidfd.
            _defer_running_record: :func:`run`, which supervises at once: the
                record of the running job (its leader) is written before the
                first wait (:meth:`record_running`), not at once, and not at
                all if the tree is proven empty by then. Until it is, the
                record written before the start stands: the job keeper (the
                watchdog) keeps the leader as its child and its subtree.
        """
        self.spec = spec
        self.argv = spec.argv
        #: The command as given (Popen's ``args``); :func:`start` keeps the caller's.
        self.args: Sequence[Arg] | str | bytes = spec.argv
        self._pipes: _Pipes | None = None
        self.policy = spec.policy
        self.tag_gid = spec.tag_gid
        if spec.tag_gid is not None and os.geteuid() != 0:
            raise UsageError("tagging a job with a group (--tag-gid) needs root (CAP_SETGID)")
        base_env = dict(spec.env) if spec.env is not None else _environ_copy()
        resolve_command(self.argv, base_env)
        self.id = new_cookie()
        self._report: Report | None = None
        self._leader_logged = False
        self._session_recorded = False
        self._lock = _thread.allocate_lock()
        self._dedicated = dedicated_supervisor
        self._forks_nothing_else = dedicated_supervisor and _forks_nothing_else
        #: The first journal write that failed mid-job (ENOSPC...), said once.
        self._journal_problem: str | None = None
        if dedicated_supervisor:
            with _dedicated_lock:
                if _dedicated_jobs:
                    raise UsageError("only one job at a time may use a dedicated supervisor")
                _dedicated_jobs.add(self.id)
        try:
            # A library job is started by a keeper that is its subreaper
            # and its watchdog (tether.keeper); `tether run` is both itself.
            use_keeper = (
                # Orphans re-parent to the keeper: its subtree is the
                # subreaper tracker, so explicit trackers must ask for it.
                (spec.trackers is None or "subreaper" in spec.trackers)
                and watchdog
                and journal is not False
                and not dedicated_supervisor
                and not spec.foreground
                and not pass_fds
                and _keeper_available()
            )
            sel = select_trackers(
                spec.trackers,
                self.id,
                dedicated=dedicated_supervisor,
                tag_gid=spec.tag_gid,
                keeper=use_keeper,
            )
        except BaseException:
            _dedicated_jobs.discard(self.id)
            raise
        if spec.foreground:
            # The job's session and process group are the terminal's (the
            # shell's): tracking them would take in the shell itself.
            sel.statuses = [
                TrackerStatus("session", False, "foreground: the job keeps the terminal's session")
                if s.name == "session"
                else s
                for s in sel.statuses
            ]
        self._selection = sel
        self._journal: Journal | None = None
        self._record: JobRecord | None = None
        self._record_json = b""
        self._record_deferred = False
        self._watchdog_pid = 0
        self._watchdog_pipe = -1
        if journal is not False:
            self._journal = journal if isinstance(journal, Journal) else Journal.default()
            try:
                self._start_journal(spec.restartable, watchdog and not use_keeper)
            except BaseException:
                self._cleanup_failed_start()
                raise
        base_env[COOKIE_VAR] = self.id
        exec_argv = _exec_argv(
            self.argv, base_env, sel.cgroup.procs_file if sel.cgroup is not None else None
        )
        # What clone3 needs to put the leader in its cgroup without the shim
        # (decided here: a keeper's environment is not the caller's). Without
        # a cgroup, Popen's vfork is cheaper than a fork.
        direct = (
            None
            if sel.cgroup is None or not _CLONE_INTO_CGROUP
            else {
                "argv": list(self.argv),
                "cgroup": sel.cgroup.path,
                "nofile": _nofile_to_restore(),
            }
        )
        extra_groups = None if spec.tag_gid is None else [*os.getgroups(), spec.tag_gid]
        try:
            spawned: _SpawnedLeader | None = None
            p2cread, c2pwrite, errwrite = (_stdio_fd(f) for f in (stdin, stdout, stderr))
            if (
                direct is not None
                and not use_keeper
                and not pass_fds
                and p2cread is not None
                and c2pwrite is not None
                and errwrite is not None
            ):
                spawned = _spawn_leader(
                    direct,
                    base_env,
                    (p2cread, c2pwrite, errwrite),
                    cwd=spec.cwd,
                    start_new_session=not spec.foreground,
                    extra_groups=extra_groups,
                )
                if spawned is None:
                    # Declined (a large process without the native clone, or
                    # no clone3): the Popen would decline alike; the shim.
                    direct = None
            if spawned is not None:
                self._popen: subprocess.Popen[Any] | _SpawnedLeader = spawned
            else:
                self._popen = self._start_popen(
                    exec_argv, base_env, direct, use_keeper, extra_groups, stdin, stdout, stderr,
                    text=text, encoding=encoding, errors=errors, pass_fds=pass_fds,
                )  # fmt: skip
        except FileNotFoundError:
            self._cleanup_failed_start()
            raise CommandNotFoundError(self.argv[0]) from None
        except PermissionError:
            self._cleanup_failed_start()
            raise CommandNotExecutableError(self.argv[0]) from None
        except BaseException:
            self._cleanup_failed_start()
            raise
        self.pid: int = self._popen.pid
        # Our unreaped child: its pid cannot be reused, so this cannot fail.
        handle: ProcessHandle | None
        kept = _kept(self._popen)
        if kept is not None:
            # The keeper's child, reaped by it: held by the pidfd it opened.
            handle = ProcessHandle(self.pid, kept.leader_starttime, os.dup(kept.leader_pidfd))
            sel.keeper_pid = kept.keeper_pid
            sel.keeper_starttime = kept.keeper_starttime
            if self._record is not None:
                keeper = Identity(kept.keeper_pid, kept.keeper_starttime)
                self._record = replace(self._record, watchdog=keeper)
        elif (born := getattr(self._popen, "born", None)) is not None:
            # Our unreaped child, held by the pidfd its clone returned.
            handle = ProcessHandle(self.pid, *born)
        else:
            handle = ProcessHandle.open(self.pid)
        assert handle is not None
        self._leader = handle
        leader = Identity(self.pid, handle.starttime)
        if self._record is not None:
            self._record = replace(
                self._record,
                leader=leader,
                sid=None if spec.foreground else self.pid,
                not_before=handle.starttime,
                state="running",
                members=(leader,),
            )
            if _defer_running_record and kept is not None:
                self._record_deferred = True
            else:
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
        if sel.keeper_pid is not None:
            self._membership.protect([sel.keeper_pid])
        self._wake_fd = wake_fd
        kept = _kept(self._popen)
        if kept is not None:
            self._wait_exec(kept)
        if logs.enabled(logs.INFO, _LOG):
            used = [s.name for s in sel.statuses if s.used]
            refused = [f"{s.name}: {s.reason}" for s in sel.statuses if not s.used]
            logs.log(_LOG, logs.INFO,
                     f"job {self.id} started: pid {self.pid}, trackers {','.join(used)}",
                     job_id=self.id, pid=self.pid, argv=oneline(" ".join(self.argv), 200),
                     trackers=used, not_used=refused, caveats=list(sel.caveats()),
                     cgroup=self.cgroup_path)  # fmt: skip

    def _start_popen(
        self,
        exec_argv: list[str],
        env: dict[str, str],
        direct: dict[str, Any] | None,
        use_keeper: bool,
        extra_groups: list[int] | None,
        stdin: _Stream,
        stdout: _Stream,
        stderr: _Stream,
        **popen_options: Any,
    ) -> subprocess.Popen[Any]:
        """The leader through a Popen: a keeper's, one born in the cgroup
        (CgroupPopen), or subprocess's own (no cgroup: its vfork is cheaper
        than a fork)."""
        import subprocess

        spawn: Any = subprocess.Popen
        if use_keeper:
            assert self._journal is not None
            keep = {
                "job_id": self.id,
                "journal": self._journal.directory,
                "direct": direct,
                # Recovery's record should the journal's be unreadable
                # (its JSON: parsed only if ever needed).
                "record": self._record_json,
            }
            from tether.keeper import KeptPopen

            def spawn(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
                return KeptPopen(keep, *args, **kwargs)

        elif direct is not None:
            from tether._cgroup_popen import CgroupPopen

            def spawn(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
                return CgroupPopen(direct, *args, **kwargs)

        popen: subprocess.Popen[Any] = spawn(
            exec_argv,
            env=env,
            cwd=self.spec.cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            # foreground: as `timeout --foreground`, the job stays in the
            # terminal's foreground process group, so /dev/tty, Ctrl-C and
            # Ctrl-Z reach it (and tether) directly.
            start_new_session=not self.spec.foreground,
            close_fds=True,
            # The tag survives setsid, double forks and env -i; only
            # CAP_SETGID can drop it (SGE's ENABLE_ADDGRP_KILL).
            extra_groups=extra_groups,
            **popen_options,
        )
        return popen

    def _wait_exec(self, popen: KeptPopen) -> None:
        """The bookkeeping above overlapped the leader's exec: now learn
        whether it succeeded; if not, undo the start and raise as Popen."""
        try:
            popen.wait_exec()
        except BaseException as err:
            self._membership.close()
            self._leader.close()
            self._close_pipes()
            self._cleanup_failed_start()  # drops the record, releases the keeper
            if isinstance(err, FileNotFoundError):
                raise CommandNotFoundError(self.argv[0]) from None
            if isinstance(err, PermissionError):
                raise CommandNotExecutableError(self.argv[0]) from None
            raise

    # -- the journal and the watchdog ---------------------------------------

    def _start_journal(self, restartable: bool, watchdog: bool) -> None:
        """Record the job before its first process runs; start its watchdog.

        Written before the start, not only once the leader is known: a journal
        that cannot be written stops the job before anything runs, and a
        caller killed with its job keeper still leaves `tether reap` a record
        (its cookie and cgroup; the leader's identity comes with the next
        write, which :func:`run` defers to its first wait).
        """
        assert self._journal is not None
        me = _own_starttime(os.getpid())
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
                [self._journal.directory, self.id, str(os.getpid()), str(me)],
                stdin=rfd,
                shell_stage=self._forks_nothing_else,
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
            self._record_deferred = False
            self._record_json = self._journal.write(self._record)

    def record_running(self, *, unless_exited: bool = False) -> None:
        """Write the running job's record if :func:`run` deferred it (see
        ``_defer_running_record``); ``unless_exited``: not if the leader has
        exited (the caller is about to see that, and may prove the tree
        empty: then the record goes without this write)."""
        if not self._record_deferred or (unless_exited and self._leader.has_exited()):
            return
        self._rewrite_record()

    def _record_members(self, new: Sequence[Member]) -> None:
        if self._record is None:
            return
        record = self._record.with_members({Identity(m.pid, m.starttime) for m in new})
        if record.members == self._record.members:
            return  # the leader, found by the first scan: recorded already
        self._record = record
        self._rewrite_record()

    def _record_step(self, index: int, started_at: float) -> None:
        if self._record is None:
            return
        self._record = replace(self._record, state="terminating", step=(index, started_at))
        self._rewrite_record()

    def _rewrite_record(self) -> None:
        """Write the record mid-job. A failure (a full file system) loses nothing
        held here: the identities stay in ``_record`` (the next write carries
        them all) and the last record written stays whole (writes replace it
        atomically), so recovery works from it. Said once: on stderr for
        ``tether run``, in the log, and in the report's caveats."""
        try:
            self._write_record()
        except JournalError as err:
            if self._journal_problem is not None:
                return
            self._journal_problem = str(err)
            text = (
                f"job {self.id}: {err}; members found from now on are kept in memory only "
                "(recovery after a crash would work from the last record written)"
            )
            logs.log(_LOG, logs.WARNING, text, job_id=self.id)
            if self._dedicated:
                try:
                    sys.stderr.write(f"tether: warning: {visible(text)}\n")
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass

    def _finish_journal(self, complete: bool, *, started: bool = True) -> None:
        """Drop the record once the tree is proven empty; release the watchdog.

        ``started``: False when the start failed (a job keeper whose exec
        failed has left already, so it cannot take the next job).
        """
        if self._journal is not None and self._record is not None:
            if complete:
                self._journal.remove(self.id)
            else:
                # Survivors: keep the record so `tether reap` can try again.
                self._record = replace(self._record, state="survivors")
                self._rewrite_record()
            self._journal.close()
            self._record = None
        kept = _kept(getattr(self, "_popen", None))
        if kept is not None:
            # After the record is gone: the job keeper may leave, or wait for
            # this process's next job if nothing of this one is left.
            kept.release(empty=complete and started)
        if self._watchdog_pipe >= 0:
            try:
                os.write(self._watchdog_pipe, WATCHDOG_DONE)
            except OSError:
                pass
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = -1
        if self._watchdog_pid:
            _released_watchdogs.add(self._watchdog_pid)
            if self._dedicated:
                # `tether run` exits next: reap the watchdog first (bounded).
                _wait_watchdog_exit(self._watchdog_pid, _WATCHDOG_EXIT_WAIT)
            self._watchdog_pid = 0
        _reap_released_watchdogs()

    def _cleanup_failed_start(self) -> None:
        if self._selection.cgroup is not None:
            self._selection.cgroup.remove()
        self._finish_journal(complete=True, started=False)
        _dedicated_jobs.discard(self.id)

    def _reap_leader(self) -> None:
        self._popen.poll()

    # -- observing -------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The leader's exit status once it has exited (-N: killed by signal N)."""
        return self._note_leader(self._poll_leader())

    def leader_status(self) -> int | None:
        """:attr:`returncode`, for supervise(): the first sight of the
        leader's exit scans the tree before the status is waited for."""
        return self._note_leader(self._poll_leader(scan_first=True))

    def _poll_leader(self, *, scan_first: bool = False) -> int | None:
        """Popen.poll(), reaping the leader — after recording its session.

        While the leader is an unreaped zombie, its pid (the job's session and
        group id) cannot be reused; once it is reaped the ids vouch for the
        job only through members recorded by identity (tether.evidence:
        session_is_jobs). So the first time the leader is seen to have exited,
        the tree is scanned while it is still a zombie, and whatever kept the
        job's session (an env -i worker the launcher left) stays a member.
        A job keeper reaps its leader itself (its subtree keeps the orphans):
        there the scan comes first only for ``scan_first`` (supervise(), which
        ends the job next: the scan does not wait for the job keeper's status
        message, and settles the tree for tree_proven_empty).
        """
        if (
            self._popen.returncode is None
            and not self._session_recorded
            and (scan_first or self._selection.keeper_pid is None)
            and self._leader.has_exited()
            and self._lock.acquire(blocking=False)
        ):
            try:
                self._session_recorded = True
                if self._report is None:
                    # Seen exited before this scan: the scan can settle the
                    # tree, and terminate then needs no second table read.
                    self._membership.scan(leader_exited=True)
            finally:
                self._lock.release()
        return self._popen.poll()

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

    # -- Popen's surface ---------------------------------------------------

    @property
    def stdin(self) -> IO[Any] | None:
        """The leader's stdin when started with ``stdin=PIPE`` (as Popen's)."""
        return self._popen.stdin

    @property
    def stdout(self) -> IO[Any] | None:
        """The leader's stdout when started with ``stdout=PIPE`` (as Popen's)."""
        return self._popen.stdout

    @property
    def stderr(self) -> IO[Any] | None:
        """The leader's stderr when started with ``stderr=PIPE`` (as Popen's)."""
        return self._popen.stderr

    def poll(self) -> int | None:
        """The leader's status if it has exited, else None (as Popen's)."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the leader to exit and return its status (as Popen's).

        Raises:
            subprocess.TimeoutExpired: ``timeout`` seconds passed first; the
                job goes on running.
        """
        rc = self.wait_leader(timeout)
        if rc is None:
            import subprocess

            raise subprocess.TimeoutExpired(self.args, timeout if timeout is not None else 0)
        return rc

    def send_signal(self, sig: int) -> None:
        """Signal the leader (only it, as Popen; :meth:`cancel` ends the tree).

        Verified identity: once the leader has exited this does nothing.
        """
        if self.returncode is None:
            self._leader.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM to the leader, as :meth:`subprocess.Popen.terminate`."""
        self.send_signal(_signals.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the leader, as :meth:`subprocess.Popen.kill`."""
        self.send_signal(_signals.SIGKILL)

    def communicate(
        self, input: str | bytes | None = None, timeout: float | None = None
    ) -> tuple[Any, Any]:
        """Send ``input``, read stdout and stderr until the leader exits; (out, err).

        As :meth:`subprocess.Popen.communicate`, with one difference that
        cannot deadlock: when the leader has exited but a leftover member still
        holds an output pipe open, the tree is terminated with the policy (with
        ``leftovers="wait"``, it is waited for until ``timeout``) and the
        output read to the end. Output is str in text mode, else bytes; None
        for a stream that is not a pipe.

        Raises:
            subprocess.TimeoutExpired: ``timeout`` passed before the leader
                exited (output so far attached); calling again goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._pipes is None:
            self._pipes = _Pipes(self._popen, input)
        elif input:
            raise ValueError("cannot send input after starting communication")
        pipes = self._pipes
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                import subprocess

                raise subprocess.TimeoutExpired(
                    self.args, timeout or 0, output=pipes.output(1), stderr=pipes.output(2)
                )
            pipes.serve(self._leader.fileno, left)
        pipes.drain_now()
        if not pipes.idle():
            # Every byte the leader wrote is readable now: a pipe that is
            # empty but open is held by a live leftover.
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            with _quiet_inbox() as inbox:
                supervise(
                    self, inbox=inbox, timeout=left, leftovers=self.spec.leftovers, channel=pipes
                )
        pipes.close()
        return pipes.result(1), pipes.result(2)

    # -- waiting ---------------------------------------------------------

    def wait_leader(self, timeout: float | None = None, *, also: Sequence[int] = ()) -> int | None:
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
            rc = self._note_leader(self._poll_leader())
            if rc is not None:
                return rc
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if not pollable:
                left = 0.05 if left is None else min(left, 0.05)
            # Clamped to poll's int milliseconds; a longer wait loops.
            ms = None if left is None else min(MAX_POLL_MS, max(1, int(left * 1000 + 0.999)))
            events = poller.poll(ms)
            if any(fd == self._wake_fd or fd in also for fd, _ in events):
                return self._note_leader(self._poll_leader())

    def reap_adopted(self) -> None:
        """Reap exited orphans a dedicated supervisor adopted (and the leader, if
        it exited). Without this they stay zombies until the job is cancelled."""
        with self._lock:
            if self._report is None:
                self._membership.reap()

    def tree_proven_empty(self) -> bool:
        """True if the leader has exited and a scan proves nothing of the job is left."""
        if self._poll_leader() is None:
            return False
        with self._lock:
            if self._report is not None:
                return True
            if not self._session_recorded:  # no scan began since the leader's exit
                self._membership.scan(leader_exited=True)
            # Proof or not, wait_empty says: every member exited, the cgroup
            # unpopulated, and a scan that began after the last exit (else
            # it scans again).
            return self._membership.wait_empty(0)

    def wait_tree(self, timeout: float | None = None) -> bool:
        """Wait for every member to exit by itself; True if the tree emptied.

        A member only its cookie ties to the job is not waited for: anyone
        can carry a cookie (see docs/security.md)."""
        with self._lock:
            self._membership.scan()
            return self._membership.wait_empty(
                float("inf") if timeout is None else timeout, strong_only=True
            )

    # -- terminating -----------------------------------------------------

    def cancel(
        self,
        reason: str = "cancelled",
        *,
        policy: Policy | None = None,
        advances: Callable[[], int] = lambda: 0,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> Report:
        """Terminate the whole tree with the policy; return (and keep) the report.

        Idempotent: a second call returns the first report. ``advances`` and
        ``on_progress`` are given to :func:`tether.terminate.terminate` (how
        many times to move on to the next step early; a progress display).
        Each step reached is written to the journal, so a watchdog that takes
        over continues the policy from there.
        """
        self._poll_leader()  # records the session while the leader is a zombie
        with self._lock:
            if self._report is not None:
                return self._report
            try:
                report = terminate(
                    self._membership,
                    policy if policy is not None else self.policy,
                    job_id=self.id,
                    reason=reason,
                    advances=advances,
                    on_progress=on_progress,
                    on_step=self._record_step if self._record is not None else None,
                )
                try:
                    if report.complete:
                        self._popen.wait()
                    elif isinstance(self._popen, _SpawnedLeader):
                        self._popen.poll()  # its wait(0) would import subprocess to raise
                    else:
                        # A Popen's (a job keeper's does not wait for a
                        # stalled keeper's status here): subprocess is loaded.
                        import subprocess

                        try:
                            self._popen.wait(timeout=0)
                        except subprocess.TimeoutExpired:
                            pass
                except ChildProcessError:
                    pass
                self._note_leader(self._popen.returncode)
            finally:
                self._membership.close()
                self._leader.close()
            if self.spec.foreground:
                report = replace(report, caveats=(*report.caveats, FOREGROUND_CAVEAT))
            if self._journal_problem is not None:
                caveat = (
                    f"the journal could not be written ({self._journal_problem}): members "
                    "found since were kept in memory only"
                )
                report = replace(report, caveats=(*report.caveats, caveat))
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
        try:
            if self._report is None:
                reason = (
                    "context exited"
                    if exc_type is None
                    else f"context exited by {exc_type.__name__}"
                )
                self.cancel(reason)
        finally:
            self._close_pipes()

    def _close_pipes(self) -> None:
        """Close the pipes to the leader (as Popen's exit), once the tree is gone:
        closing them first would end a writer by SIGPIPE, not by the policy."""
        for f in (self._popen.stdout, self._popen.stderr, self._popen.stdin):
            if f is not None:
                try:
                    f.close()
                except (OSError, ValueError):
                    pass


def start(args: Sequence[Arg] | str | bytes, **options: Unpack[JobOptions]) -> Job:
    """Start ``args`` on a tether; see :class:`JobOptions` and :class:`Job`.

    ``args`` is a list of str, bytes or paths; a string only with
    ``shell=True`` (a /bin/sh script, as :mod:`subprocess`).
    """
    spec, supervision = _split_options(args, None, options)
    job = Job(spec, **supervision)
    job.args = args
    return job


def run(
    args: Sequence[Arg] | str | bytes,
    *,
    input: str | bytes | None = None,
    capture_output: bool = False,
    check: bool = False,
    timeout: float | None = None,
    **options: Unpack[JobOptions],
) -> CompletedJob:
    """Run ``args`` to completion, then terminate anything it left behind.

    :func:`subprocess.run`'s arguments mean what they mean there (``input``,
    ``capture_output``, ``stdout=PIPE``, ``text``/``encoding``/``errors``,
    ``check``, ``shell``): output is read while the job runs, so a full pipe
    never blocks it, and a leftover that keeps a pipe open is terminated (and
    named in the report) rather than waited on.

    If ``timeout`` (seconds) passes first, the whole tree is terminated with
    the policy and ``timed_out`` is True. With ``leftovers="wait"``, members
    left when the leader exits are waited for (until the timeout) instead.

    Raises:
        JobFailedError: ``check`` and the leader's status is not 0; or
            ``check`` and ``fail_on_leftovers`` and members were still running
            when the leader exited (returncode 123, as ``tether run``'s).
        JobTimeoutError: ``check`` and the timeout expired.
    """
    import subprocess  # pipes: Popen's

    if input is not None:
        if options.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used")
        options["stdin"] = subprocess.PIPE
    if capture_output:
        if options.get("stdout") is not None or options.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output")
        options["stdout"] = options["stderr"] = subprocess.PIPE
    spec, supervision = _split_options(args, timeout, options)
    with Job(spec, **supervision, _defer_running_record=True) as job:
        job.args = args
        pipes = _Pipes(job._popen, input)
        try:
            with _quiet_inbox() as inbox:
                outcome = supervise(
                    job, inbox=inbox, timeout=spec.timeout, leftovers=spec.leftovers, channel=pipes
                )
        finally:
            pipes.close()
    if outcome.error is not None:
        raise outcome.error
    assert outcome.report is not None
    rc = outcome.returncode
    done = CompletedJob(
        spec.argv,
        rc if rc is not None else -_signals.SIGKILL,
        outcome.timed_out,
        outcome.report,
        stdout=pipes.result(1),
        stderr=pipes.result(2),
        args=args,
    )
    if check and done.timed_out:
        assert spec.timeout is not None
        from tether._run_errors import JobTimeoutError

        raise JobTimeoutError(args, spec.timeout, done.stdout, done.stderr, done.report)
    if check and outcome.leftovers:
        # fail_on_leftovers: the leak fails the run as `tether run` exits 123.
        from tether._run_errors import JobFailedError

        raise JobFailedError(EXIT_LEFTOVERS, args, done.stdout, done.stderr, done.report)
    if check:
        done.check_returncode()
    return done


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
