"""The keeper: library jobs get the containment ``tether run`` has, without root.

A library caller cannot be its job's subreaper: it has children of its own
(an orphan adopted by it would be reaped, or waited for, by code that knows
nothing of tether). So each calling process gets one keeper, started on its
first job as ``python -S -m tether.keeper CALLER_PID`` in a session of its
own, and for every job the keeper forks a *job keeper*:

- the job keeper is PR_SET_CHILD_SUBREAPER and starts the job, so the leader
  is its child and every orphan the job makes (``setsid`` + double fork,
  ``env -i``, a daemon that made itself non-dumpable or overwrote its
  environment) re-parents to it instead of init: the descendant walk from it
  (the subreaper tracker with its pid) is the whole job, readable or not;
- it reaps the leader and hands its status to the caller, and reaps every
  adopted orphan that exits;
- it is the job's watchdog: it holds a pidfd on the caller (inherited from
  the keeper, which proved the caller by parentage) and, if the caller dies
  before saying ``done``, terminates the job from its journal record with the
  recorded policy, walking its own subtree (see :mod:`tether.recovery`).

One keeper interpreter per caller, a fork per job: the per-job cost is a fork
of a small, warmed process instead of a new interpreter (issue 14 item 6).

The keeper is the caller's child, and the caller trusts nothing it did not
start: the channels are socketpairs made before the spawn and reachable by
no one else (job processes get none of them: close_fds).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from tether._fdwait import wait_readable
from tether._platform.linux import procfs
from tether._records import NamedTuple

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: What a caller writes to a job keeper once the job is over.
KEEPER_DONE = b"done"
#: Instead of "done", once the job is proven empty and its record is gone:
#: the job keeper stays, to take the caller's next job on the same socket.
KEEPER_IDLE = b"idle"
#: _keep's answer for KEEPER_IDLE.
_IDLE = -1
#: What a job keeper answers to KEEPER_IDLE once it can take the next job.
_READY = b"r"
#: How long a caller waits for that answer before it asks the keeper instead.
_READY_WAIT = 0.005
#: How many job keepers a caller keeps waiting for its next jobs.
_MAX_IDLE = 2
_HEADER = struct.Struct("!I")
#: A plain int: the flag enum's & runs enum.py's Python code on every message.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
#: A request carries argv and a whole environment: bounded all the same.
_MAX_MESSAGE = 64 << 20
#: How long poll() waits for a job keeper's status once the leader's pidfd
#: says it exited (the keeper sends it on SIGCHLD, within microseconds).
_STATUS_GRACE = 5.0
#: The status of a leader whose job keeper died before it could send one.
STATUS_LOST = 255
#: How long the keeper must be idle before it forks the next spare job keeper.
_SPARE_DELAY_MS = 5


def _say(message: str, fd: int = 2) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, f"tether keeper: {message}\n".encode(errors="replace"))


# -- framing: a length, then a pickle; fds ride on the first bytes ------------


def send_message(sock: socket.socket, obj: object, fds: Sequence[int] = ()) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    frame = _HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def recv_message(sock: socket.socket, maxfds: int = 0) -> tuple[Any, list[int]] | None:
    """One message and the fds that came with it; None at EOF."""
    if maxfds:
        head, fds, flags, _addr = socket.recv_fds(sock, _HEADER.size, maxfds)
        if flags & _MSG_CTRUNC:
            # Fds were dropped (our RLIMIT_NOFILE): a request missing its
            # stdio would start the job on ours. Refused whole.
            for fd in fds:
                os.close(fd)
            raise EOFError
    else:
        head, fds = sock.recv(_HEADER.size), []
    if not head:
        return None
    try:
        while len(head) < _HEADER.size:
            more = sock.recv(_HEADER.size - len(head))
            if not more:
                raise EOFError
            head += more
        (size,) = _HEADER.unpack(head)
        if size > _MAX_MESSAGE:
            raise EOFError
        body = bytearray()
        while len(body) < size:
            chunk = sock.recv(min(size - len(body), 1 << 20))
            if not chunk:
                raise EOFError
            body += chunk
        return pickle.loads(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


# -- the keeper process ------------------------------------------------------


def _open_caller(pid: int) -> int | None:
    """A pidfd on the caller, proven by parentage (see tether.watchdog)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if os.getppid() != pid:
        os.close(fd)
        return None
    return fd


def _sigchld_pipe() -> int:
    """A pipe written on every SIGCHLD (the handler itself does nothing)."""
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    return rfd


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(fd, 4096):
            pass


def keeper_main(caller_pid: int, control: socket.socket) -> int:
    # Imported here, once: every job keeper is a fork of this process, and an
    # import after the fork (resource loads a shared object) is paid per job.
    import resource  # noqa: F401

    from tether._platform.linux import prctl, spawn

    spawn.usable()  # loads the native spawn (or libc's syscall() through ctypes), once

    os.chdir("/")  # hold no mount busy
    caller = _open_caller(caller_pid)
    if caller is None:
        return 0  # the caller is gone already
    # Orphans of a job keeper that died re-parent here, not to init.
    with contextlib.suppress(OSError):
        prctl.set_child_subreaper(True)
    chld = _sigchld_pipe()
    job_keepers: set[int] = set()
    # A job keeper forked ahead of the next request: a job start is then a
    # message to a process that exists, not a fork (~2 ms of page tables and
    # copy-on-write faults) on the caller's critical path.
    # It is forked once the keeper has been idle for _SPARE_DELAY (forked at
    # once, it would compete for the CPU and copy-on-write faults with the job
    # keeper starting the job just handed on), or at once when a job keeper
    # exits: that job is over, and a caller running jobs one after another
    # (never idle that long) sends its next request moments later.
    spare: tuple[int, socket.socket] | None = None
    spare_wanted = False
    listening = True
    while listening or job_keepers:
        poller = select.poll()
        poller.register(chld, select.POLLIN)
        if listening:
            poller.register(control.fileno(), select.POLLIN)
        ready = {fd for fd, _ in poller.poll(_SPARE_DELAY_MS if spare_wanted else None)}
        if not ready and spare_wanted and spare is None:
            spare_wanted = False
            spare = _fork_spare(control, caller, chld)
            if spare is not None:
                job_keepers.add(spare[0])
        if control.fileno() in ready and listening:
            try:
                got = recv_message(control, maxfds=8)
            except (OSError, EOFError, pickle.UnpicklingError):
                got = None
            if got is None:
                # The caller closed its end (it exited): the job keepers see
                # to their jobs; this process waits for them, then leaves
                # (the spare reads EOF and exits).
                listening = spare_wanted = False
                if spare is not None:
                    spare[1].close()
                    spare = None
            else:
                request, fds = got
                pid = _hand_to_spare(spare, request, fds)
                if not pid:
                    pid = _fork_job_keeper(request, fds, control, caller, chld)
                spare = None
                # Closed before the next spare is forked: a copy held there
                # would keep this job's pipes open (no EOF for the caller).
                for fd in fds:
                    os.close(fd)
                if pid:
                    job_keepers.add(pid)
                spare_wanted = True
        if chld in ready:
            _drain(chld)
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            job_keepers.discard(pid)
            if listening and spare is None:
                spare_wanted = False
                spare = _fork_spare(control, caller, chld)
                if spare is not None:
                    job_keepers.add(spare[0])
    return 0


def _hand_to_spare(
    spare: tuple[int, socket.socket] | None, request: Mapping[str, Any], fds: list[int]
) -> int:
    """Give the request to the spare job keeper; its pid, or 0 if it is gone."""
    if spare is None:
        return 0
    pid, sock = spare
    try:
        send_message(sock, request, fds)
    except OSError:
        return 0  # it died (killed): it is reaped with the others
    finally:
        sock.close()
    return pid


def _fork_spare(control: socket.socket, caller: int, chld: int) -> tuple[int, socket.socket] | None:
    """A job keeper that waits for its request on a socketpair of its own."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid:
        theirs.close()
        return pid, ours
    code = 1
    try:
        control.close()
        os.close(chld)
        ours.close()
        ready = _ready_job_keeper()  # while no job waits for it
        got = recv_message(theirs, maxfds=8)
        theirs.close()
        # EOF: the keeper is leaving (its caller exited) or died.
        code = 0 if got is None else _job_keeper(got[0], got[1], caller, ready)
    except BaseException as err:  # a forked child must never unwind
        _say(f"job keeper failed: {err!r}")
    finally:
        os._exit(code)


def _fork_job_keeper(
    request: Mapping[str, Any],
    fds: list[int],
    control: socket.socket,
    caller: int,
    chld: int,
) -> int:
    try:
        pid = os.fork()
    except OSError as err:
        if fds:
            with socket.socket(fileno=os.dup(fds[0])) as job, contextlib.suppress(OSError):
                send_message(job, ("error", err.errno, err.strerror, None, "OSError"))
        return 0
    if pid:
        return pid
    # The job keeper. Nothing here may return into the keeper's loop.
    code = 1
    try:
        control.close()
        os.close(chld)
        code = _job_keeper(request, fds, caller, _ready_job_keeper())
    except BaseException as err:  # a forked child must never unwind
        _say(f"job keeper failed: {err!r}")
    finally:
        os._exit(code)


class _Ready(NamedTuple):
    """What a job keeper sets up before it knows its job."""

    chld: int
    starttime: int
    subreaper: OSError | None


def _ready_job_keeper() -> _Ready:
    from tether._platform.linux import prctl

    chld = _sigchld_pipe()
    try:
        prctl.set_child_subreaper(True)
    except OSError as err:
        return _Ready(chld, _starttime(os.getpid()), err)
    return _Ready(chld, _starttime(os.getpid()), None)


def _job_keeper(request: Mapping[str, Any], fds: list[int], caller: int, ready: _Ready) -> int:
    """Keep one job, then, if the caller says "idle", the next ones it sends.

    A job keeper reused so costs the next job no fork of the keeper and no
    exit: its leader was reaped and its tree proven empty, so it holds
    nothing of the job before (no child, no fd, no directory).
    """
    # The first request brings the socket to answer on; the next ones come,
    # and are answered, on that socket (no unix socket in flight per job: the
    # kernel's garbage collection of in-flight fds watches those).
    job = socket.socket(fileno=fds[0])
    fds = fds[1:]
    while True:
        code = _keep_one(job, request, fds, caller, ready)
        if code != _IDLE:
            return code
        os.chdir("/")  # hold no mount busy while waiting
        # A job may have lowered our limits (prlimit on its parent): restored,
        # or, a hard limit being lower for good, no next job here (the caller
        # sees the socket close instead of "ready" and asks the keeper).
        try:
            _set_limits(request["rlimits"])
        except (ValueError, OSError):
            return 0
        try:
            job.sendall(_READY)
        except OSError:
            return 0
        got = _next_request(job, caller, ready.chld)
        if got is None:
            return 0
        request, fds = got


def _set_limits(rlimits: Sequence[tuple[int, tuple[int, int]]]) -> None:
    """Set our resource limits to ``rlimits`` (the caller's: the leader
    inherits them). Raises ValueError or OSError for one that cannot be
    (a hard limit lowered for good)."""
    import resource

    for res, limits in rlimits:
        if resource.getrlimit(res) != limits:
            resource.setrlimit(res, limits)


def _wait_for_any(chld: int, job: socket.socket, caller: int) -> set[int]:
    """Sleep until a child exits (the SIGCHLD pipe, drained here), the caller
    writes or closes its socket, or the caller dies (its pidfd)."""
    poller = select.poll()
    for fd in (chld, job.fileno(), caller):
        poller.register(fd, select.POLLIN)
    ready = {fd for fd, _ in poller.poll()}
    if chld in ready:
        _drain(chld)
    return ready


def _next_request(
    job: socket.socket, caller: int, chld: int
) -> tuple[dict[str, Any], list[int]] | None:
    """The caller's next job; None when it closes the socket or dies."""
    while True:
        ready = _wait_for_any(chld, job, caller)
        if chld in ready:
            _reap(None, 0)
        if job.fileno() in ready:
            try:
                return recv_message(job, maxfds=8)
            except (OSError, EOFError, pickle.UnpicklingError):
                return None
        if caller in ready:
            return None  # nothing of its is left to recover


def _keep_one(
    job: socket.socket, request: Mapping[str, Any], fds: list[int], caller: int, ready: _Ready
) -> int:
    """Start the job ``request`` asks for and keep it; answers on ``job``."""
    cwd_fd, diag = fds[0], fds[1]
    std = fds[2:5]
    chld = ready.chld
    try:
        if ready.subreaper is not None:
            raise ready.subreaper
        _set_limits(request["rlimits"])
        os.fchdir(cwd_fd)
        before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        leader, pidfd, child = _spawn_leader(request, std)
        after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if child is not None and child.settled:
            # The exec is decided (the native clone waited for it): its
            # failure is this reply, its success needs no "execd" after.
            try:
                child.wait_exec()
            except OSError:
                os.close(pidfd)
                raise
            child = None
    except OSError as err:
        send_message(job, _error_reply(err))
        return 1
    except ValueError as err:  # a NUL in argv or env (refused before any fork), a limit
        send_message(job, ("error", None, str(err), None, "ValueError"))
        return 1
    finally:
        for fd in (cwd_fd, *std):
            os.close(fd)
    # A clone3 child exists but may not have exec'd yet: the caller gets its
    # identity now and does its own bookkeeping (journal, membership) while
    # the exec runs, then waits for "execd" (or the error Popen would raise).
    # A caller that died (or closed its end) since its request cannot be
    # told: _keep sees it gone and recovers the job that is now running.
    try:
        starttime = procfs.starttime_between(before, after)
        if starttime is None:
            starttime = _starttime(leader)
        started = (leader, starttime, os.getpid(), ready.starttime, bool(child))
        send_message(job, ("started", *started), [pidfd])
    except OSError:
        child = None
    finally:
        os.close(pidfd)
    if child is not None:
        try:
            child.wait_exec()
        except OSError as err:
            send_message(job, _error_reply(err))
            return 1
        with contextlib.suppress(OSError):
            send_message(job, ("execd",))
    try:
        return _keep(job, leader, caller, chld, diag, request)
    finally:
        os.close(diag)


def _error_reply(err: OSError) -> tuple[str, int | None, str | None, Any, str]:
    return ("error", err.errno, err.strerror, err.filename, type(err).__name__)


def _reply_error(reply: Sequence[Any]) -> OSError | ValueError:
    """The error a job keeper's ("error", ...) reply stands for."""
    _kind, errno_num, strerror, filename, name = reply
    if name == "ValueError":
        return ValueError(strerror)
    exc = {"FileNotFoundError": FileNotFoundError, "PermissionError": PermissionError}
    return exc.get(name, OSError)(errno_num, strerror, filename)


def _spawn_leader(request: Mapping[str, Any], std: Sequence[int]) -> tuple[int, int, Any]:
    """Start the job's leader as our child: (pid, pidfd, the clone3 child
    whose exec is still to be confirmed, or None if it has exec'd).

    Straight into the job cgroup by clone3 where it can (the native vfork-like
    clone; else the ctypes fork, which a job keeper may use as a fork of a
    single-threaded process: see tether._platform.linux.spawn), else Popen of
    ``argv`` (the /bin/sh shim that enters the cgroup itself).
    """
    direct = request.get("direct")
    if direct is not None:
        from tether._platform.linux import spawn

        try:
            child = spawn.start(
                direct["argv"],
                request["env"],
                stdio=std,
                cgroup=direct["cgroup"],
                start_new_session=request["start_new_session"],
                umask=request["umask"],
                extra_groups=request["extra_groups"],
                nofile=direct["nofile"],
            )
        except spawn.Unavailable:
            pass
        else:
            return child.pid, child.pidfd, child
    popen = subprocess.Popen(
        request["argv"],
        env=request["env"],
        stdin=std[0],
        stdout=std[1],
        stderr=std[2],
        start_new_session=request["start_new_session"],
        close_fds=True,
        umask=request["umask"],
        extra_groups=request["extra_groups"],
    )
    # Popen's own bookkeeping must not reap behind our back (its __del__).
    popen.returncode = 0
    # Our unreaped child: the pidfd is certainly the leader's.
    return popen.pid, os.pidfd_open(popen.pid), None


def _starttime(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read(4096)
    return int(procfs.split_stat(data)[2][19])


def _keep(
    job: socket.socket,
    leader: int,
    caller: int,
    chld: int,
    diag: int,
    request: Mapping[str, Any],
) -> int:
    """Reap and report until the caller says done, or terminate the job if it dies."""
    received = b""
    caller_gone = job_closed = False
    while True:
        ready = _wait_for_any(chld, job, caller)
        _reap(job, leader)
        # The socket first: a caller that said "done" and then exited is
        # both readable and gone, and must count as done.
        if job.fileno() in ready:
            try:
                # Never past the word: after "idle", the next request follows.
                chunk = job.recv(len(KEEPER_DONE) - len(received))
            except OSError:
                chunk = b""
            received += chunk
            if len(received) == len(KEEPER_DONE):
                return _IDLE if received == KEEPER_IDLE else 0
            job_closed = not chunk
        if caller in ready:
            caller_gone = True
        if caller_gone or job_closed:
            return _recover(request, diag, caller_gone)


def _reap(job: socket.socket | None, leader: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        if pid == leader and job is not None:
            with contextlib.suppress(OSError):
                send_message(job, ("exit", os.waitstatus_to_exitcode(status)))


def _parse_record(raw: bytes | None) -> Any:
    """The request's copy of the job's record (JSON), or None."""
    from tether.journal import JobRecord

    try:
        return JobRecord.from_json(raw) if raw else None
    except ValueError:
        return None


def _recover(request: Mapping[str, Any], diag: int, caller_gone: bool) -> int:
    """The caller is gone without saying done: terminate the job it left."""
    if sys.flags.no_site:
        # Started with -S for a cheap idle; recovery may need site-packages.
        import site

        site.main()
    from tether.journal import Journal, JournalProblem
    from tether.recovery import recover

    job_id = request["job_id"]
    journal = Journal(request["journal"])
    why = "died" if caller_gone else "closed its channel to the keeper"
    try:
        record = journal.read(job_id)
        if record is None:
            # Removed once the job was proven empty (then nothing is found),
            # or lost: the record the request carried stands in.
            record = _parse_record(request.get("record"))
        if record is None:
            return 0
        if isinstance(record, JournalProblem):
            _say(f"cannot recover job {job_id}: {record}", diag)
            return 1
        _say(
            f"caller pid {request['caller']} of job {job_id} {why}; terminating the job "
            f"with {record.policy_text}",
            diag,
        )
        report = recover(
            record,
            journal,
            reason=f"caller pid {request['caller']} {why}",
            protected=[os.getpid()],
            keeper=os.getpid(),
        )
    finally:
        journal.close()
    if report.complete:
        _say(f"job {job_id}: {len(report.killed)} member(s) terminated, nothing left", diag)
        return 0
    _say(
        f"job {job_id}: {len(report.survivors)} member(s) survived: "
        + ", ".join(f"pid {s.pid} ({s.state})" for s in report.survivors)
        + "; the journal record is kept for `tether reap`",
        diag,
    )
    return 1


# -- the caller's side -------------------------------------------------------

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The environment the keeper itself runs with: no more than it needs (it
#: outlives any one job, so it must not carry a job's or a test's markers),
#: but an outer job's cookie, so that a tether supervising this caller finds it.
_KEEPER_ENV = ("PATH", "TETHER_JOB_ID", "LANG", "LC_ALL")


class _KeeperClient:
    """This process's keeper: started on first use, again after a fork or its death."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = 0
        self._pid = 0
        self._control: socket.socket | None = None
        #: Job keepers waiting for this process's next job (see KEEPER_IDLE).
        self._idle: list[socket.socket] = []
        #: This process's context (_own_state) when its keeper started.
        self._context = b""
        #: Keepers let go after a change of context, reaped once they exit.
        self._retired: list[int] = []

    def _start(self, context: bytes) -> socket.socket:
        if self._control is not None:
            self._control.close()
        if self._pid and self._owner == os.getpid():
            self._retired.append(self._pid)
        for pid in list(self._retired):
            with contextlib.suppress(ChildProcessError):
                if not os.waitpid(pid, os.WNOHANG)[0]:
                    continue
            self._retired.remove(pid)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: os.environ[k] for k in _KEEPER_ENV if k in os.environ}
        flags = []
        if os.path.isdir(_PACKAGE_PARENT):
            # -S skips site (tens of ms of .pth files on some installs);
            # tether is found through PYTHONPATH instead.
            flags = ["-S"]
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p
            )
        elif "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._pid = os.posix_spawn(
                sys.executable,
                [sys.executable, *flags, "-m", "tether.keeper", str(os.getpid())],
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, theirs.fileno(), 0),
                    (os.POSIX_SPAWN_DUP2, devnull, 1),
                    (os.POSIX_SPAWN_DUP2, devnull, 2),
                ],
                # Its own session: a Ctrl-C on the caller's terminal must not
                # take the keeper (and every job's watchdog) down with it.
                setsid=True,
            )
        except OSError as err:
            ours.close()
            # Not the job's command that failed: said as the keeper's (an
            # OSError without an errno, or Job would name the command).
            raise OSError(
                f"cannot start tether's keeper ({sys.executable}): {err.strerror}"
            ) from None
        finally:
            os.close(devnull)
            theirs.close()
        if not self._owner:
            import atexit

            # At exit the keeper and the waiting job keepers see EOF and leave
            # (as they would once this process is gone), and no socket is left
            # for the interpreter to warn about.
            atexit.register(self.close)
        self._owner = os.getpid()
        self._control = ours
        self._context = context
        return ours

    def close(self) -> None:
        """Let this process's keeper and waiting job keepers go."""
        with self._lock:
            for sock in [*self._idle, *([self._control] if self._control else [])]:
                sock.close()
            self._idle = []
            self._control = None

    @property
    def pid(self) -> int:
        return self._pid if self._owner == os.getpid() else 0

    def wait_idle(self, job: socket.socket, context: bytes) -> bool:
        """Tell the job keeper on ``job`` to wait for this process's next job,
        if fewer than _MAX_IDLE already do and it was started in this
        process's present context; False: it was not (it may leave)."""
        with self._lock:
            if (
                self._owner != os.getpid()
                or len(self._idle) >= _MAX_IDLE
                or context != self._context
            ):
                return False
            try:
                job.sendall(KEEPER_IDLE)
            except OSError:
                return False
            self._idle.append(job)
            return True

    def request(
        self, request: Mapping[str, Any], fds: Sequence[int], context: bytes
    ) -> socket.socket:
        """Send ``request`` with ``fds`` (cwd, diagnostics, stdio) to a job
        keeper that waits, else to the keeper; return the socket its answer
        comes on (the caller's from then on). ``context``: this process's
        (_own_state); if it changed since the keeper started, the keeper and
        its waiting job keepers are let go and a new keeper, this process's
        child as it is now, starts the job."""
        with self._lock:
            if context != self._context and self._owner == os.getpid():
                for waiting in self._idle:
                    waiting.close()
                self._idle = []
                if self._control is not None:
                    self._control.close()  # it leaves once its jobs are over
                    self._control = None
            while self._idle:  # a fork's child has none (_client_after_fork)
                # Straight to a job keeper that waits (no hop through the
                # keeper, no fork); it answers on the same socket.
                waiting = self._idle.pop()
                if not _said_ready(waiting):
                    waiting.close()  # gone, or not fit for another job
                    continue
                try:
                    send_message(waiting, request, fds)
                except OSError:
                    waiting.close()
                    continue  # it is gone (killed): try the next, or the keeper
                return waiting
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                control = self._control if self._owner == os.getpid() else None
                if control is None:
                    control = self._start(context)
                try:
                    send_message(control, request, [theirs.fileno(), *fds])
                except OSError:
                    # The keeper died (someone killed it): a new one takes over.
                    send_message(self._start(context), request, [theirs.fileno(), *fds])
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            return ours


_client = _KeeperClient()


def _said_ready(waiting: socket.socket) -> bool:
    """The job keeper on ``waiting`` answered "idle" with "ready" (it restored
    its limits and is alive), within _READY_WAIT: it has normally answered long
    before the next job comes."""
    if not wait_readable(waiting.fileno(), _READY_WAIT):
        return False
    try:
        return waiting.recv(1) == _READY
    except OSError:
        return False


def _client_after_fork() -> None:
    # A fork's child gets the lock as the parent's threads left it: locked for
    # ever if one was mid-request. The parent's waiting job keepers are the
    # parent's: the child's copies of their sockets are let go.
    _client._lock = threading.Lock()
    for inherited in _client._idle:
        inherited.close()
    _client._idle = []


os.register_at_fork(after_in_child=_client_after_fork)


#: /proc/self/status lines naming what a job inherits from its parent that a
#: keeper started earlier may no longer share with this process.
_CONTEXT_LINES = (
    b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:", b"CapAmb:", b"NoNewPrivs:",
    b"Seccomp:", b"Seccomp_filters:", b"Cpus_allowed_list:", b"Mems_allowed_list:",
)  # fmt: skip


def _own_state() -> tuple[int | None, bytes]:
    """This process's umask (read without changing it: os.umask would set it
    to 0 for a moment, under the feet of the caller's other threads) and its
    context: credentials, capabilities, no_new_privs, seccomp filters,
    allowed CPUs and nice value. A job started through a keeper inherits the
    keeper's, taken when it started: a caller that since dropped privileges,
    installed a seccomp filter or moved CPUs would see its jobs run with
    the old ones, so a change of context retires the keeper (see
    _KeeperClient.request). One read of /proc/self/status serves both."""
    context = b"%r %r %r %d" % (
        os.getresuid(),
        os.getresgid(),
        os.getgroups(),
        os.getpriority(os.PRIO_PROCESS, 0),
    )
    # Unreadable (EMFILE) is raised, not a context without its capability
    # and seccomp lines: two such would compare equal across a change of
    # privileges, and the old keeper would run the job.
    fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    lines = [line for line in data.split(b"\n") if line.startswith(_CONTEXT_LINES)]
    context += b"\n" + b"\n".join(lines)
    try:
        at = data.index(b"\nUmask:") + 7
        return int(data[at : data.index(b"\n", at)], 8), context
    except ValueError:
        return None, context


def _rlimits() -> list[tuple[int, tuple[int, int]]]:
    import resource

    if not _RLIMITS:
        _RLIMITS.extend(getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_"))
    return [(res, resource.getrlimit(res)) for res in _RLIMITS]


_RLIMITS: list[int] = []


class KeptPopen(subprocess.Popen["Any"]):
    """A :class:`subprocess.Popen` whose child is started by this process's
    keeper (its job keeper's child, not ours): pipes, text mode and
    communicate() are Popen's own; the status comes from the job keeper."""

    _job: socket.socket
    _request: dict[str, Any]
    _leader_pidfd: int
    keeper_pid: int
    keeper_starttime: int
    leader_starttime: int
    # Popen's own (private, stable since 3.3): declared for the type checker.
    _waitpid_lock: threading.Lock
    _close_pipe_fds: Callable[..., None]

    def __init__(self, request: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        self._request = request
        self._context = b""
        self._leader_pidfd = -1
        self._exec_pending = False
        self._lost = False
        super().__init__(*args, **kwargs)

    def _execute_child(self, *popen_args: Any) -> None:
        from tether._platform.linux.spawn import ChildArgs

        c = ChildArgs(*popen_args)
        assert not c.pass_fds and c.preexec_fn is None and c.executable is None
        cwd = c.cwd if c.cwd is not None else "."
        umask, self._context = _own_state()
        cwd_fd = os.open(cwd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            request = dict(self._request)
            request.update(
                argv=list(c.args),
                env=c.env,
                start_new_session=c.start_new_session,
                extra_groups=c.gids,
                umask=umask if c.umask < 0 else c.umask,
                rlimits=_rlimits(),
                caller=os.getpid(),
            )
            if request["umask"] is None:
                request["umask"] = -1
            # -1: inherit ours, as a forked child would.
            std = [
                fd if fd != -1 else n for n, fd in enumerate((c.p2cread, c.c2pwrite, c.errwrite))
            ]
            ours = _client.request(request, [cwd_fd, 2, *std], self._context)
        finally:
            os.close(cwd_fd)
            self._close_pipe_fds(*c[10:16])
        try:
            got = recv_message(ours, maxfds=1)
        except ConnectionResetError:
            got = None  # it died with the request unread
        except BaseException:
            ours.close()
            raise
        if got is None:
            ours.close()
            raise OSError(0, "tether's keeper process exited before starting the job")
        reply, fds = got
        if reply[0] == "error":
            ours.close()
            raise _reply_error(reply)
        _kind, self.pid, self.leader_starttime, self.keeper_pid, self.keeper_starttime = reply[:5]
        self._exec_pending = bool(reply[5:] and reply[5])
        self._leader_pidfd = fds[0]
        self._job = ours
        self._child_created = True

    @property
    def leader_pidfd(self) -> int:
        return self._leader_pidfd

    def wait_exec(self) -> None:
        """Wait for the job keeper's word that the leader exec'd (Popen's
        constructor would have); raise the exec's error as Popen does.

        The leader exists from __init__ on (pid, start time, pidfd are
        final); only whether its exec succeeded is still open.
        """
        if not self._exec_pending:
            return
        self._exec_pending = False
        try:
            got = recv_message(self._job)
        except (OSError, EOFError, pickle.UnpicklingError):
            got = None
        if got is None:
            self.returncode = STATUS_LOST
            raise OSError(0, "tether's job keeper exited before the job's exec")
        reply, _fds = got
        if reply[0] == "error":
            self.returncode = 255  # the child's _exit(); the job keeper reaped it
            raise _reply_error(reply)

    def _take_status(self, timeout: float | None) -> bool:
        """Read the job keeper's status message (waiting up to ``timeout``)."""
        if self._lost:
            if wait_readable(self._leader_pidfd, timeout):
                self.returncode = STATUS_LOST
                return True
            return False
        if not wait_readable(self._job.fileno(), timeout):
            return False
        try:
            got = recv_message(self._job)
        except (OSError, EOFError, pickle.UnpicklingError):
            got = None
        if got is None:
            # The job keeper is gone (killed): the status went with it.
            self._lost = True
            return self._take_status(0)
        message, _fds = got
        if message[0] == "execd":
            self._exec_pending = False
        if message[0] == "exit":
            self.returncode = int(message[1])
            return True
        return False

    def _internal_poll(self, _deadstate: Any = None, *args: Any, **kwargs: Any) -> int | None:
        if self.returncode is None and self._waitpid_lock.acquire(False):
            try:
                if (
                    self.returncode is None
                    and not self._take_status(0)
                    # The leader has exited: its status is on its way.
                    and wait_readable(self._leader_pidfd, 0)
                ):
                    self._take_status(_STATUS_GRACE)
            finally:
                self._waitpid_lock.release()
        return self.returncode

    def _wait(self, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            with self._waitpid_lock:
                if self.returncode is None:
                    self._take_status(left)
        return self.returncode

    def release(self, *, empty: bool = False) -> None:
        """The job is over (or given up): the job keeper may leave.

        ``empty``: the tree is proven empty and the journal record gone, so
        the job keeper holds nothing of the job and may wait for the next.
        """
        if self._leader_pidfd >= 0:
            if not (empty and not self._lost and _client.wait_idle(self._job, self._context)):
                with contextlib.suppress(OSError):
                    self._job.sendall(KEEPER_DONE)
                self._job.close()
            os.close(self._leader_pidfd)
            self._leader_pidfd = -1


def keeper_available() -> bool:
    from tether._platform import HAS_PIDFD, HAS_SUBREAPER

    return HAS_PIDFD and HAS_SUBREAPER and hasattr(os, "pidfd_open")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        _say("usage: python -m tether.keeper CALLER_PID")
        return 2
    # The control socket came as fd 0: move it away and put /dev/null there,
    # so a job given a closed stdin gets /dev/null, not the channel.
    control = socket.socket(fileno=os.dup(0))
    os.set_inheritable(control.fileno(), False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return keeper_main(int(argv[0]), control)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
