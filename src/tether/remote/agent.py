"""The remote side: tether's own engine, supervising a job on the remote host.

Started by the bootstrap (:mod:`tether.remote.bootstrap`) with the ssh channel
on stdin/stdout. It answers one SPEC frame:

- ``run``: start the job as a :class:`tether.job.Job` with a dedicated
  supervisor (this process: subreaper, cgroup when root, session, cookie), its
  journal record and watchdog; stream stdout/stderr back; on a CANCEL frame,
  the timeout, a signal, or **EOF on the control channel** (connection lost,
  local tether killed: a dead man's switch) terminate the tree with the
  policy; send the exit status and the report.
- ``cancel``: the out-of-band path. Find a job by id in this host's journal,
  stop its old supervisor and watchdog (tether's own processes, SIGKILL by
  verified identity, never a job member), terminate what is left with
  :func:`tether.recovery.recover`, and send the report.

The agent never blocks on the channel: output is queued and written when the
channel can take it, so a stalled client cannot stop it from seeing a cancel
or the end of the control stream.
"""

from __future__ import annotations

import _thread
import atexit
import os
import select
import sys

from tether._collector import gc_back_on
from tether._fdwait import wait_readable, wait_writable
from tether.remote.protocol import (
    ACK,
    CANCEL,
    ERROR,
    HEADER_SIZE,
    HELLO,
    PROTOCOL,
    RESULT,
    SPEC,
    STARTED,
    STDERR,
    STDIN,
    STDIN_CREDIT,
    STDOUT,
    FrameBuffer,
    ProtocolError,
    frame,
    json_frame,
    load_json,
    parse_header,
)

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

# What a host job imports is every job's CPU (issue 15): nothing here pulls in
# re, contextlib, subprocess, signal or threading (enum, functools,
# collections, locale, selectors, warnings behind them, ~15 ms in a fresh
# python); only builtin modules (_thread, atexit, select on most builds) and
# the engine's own. tests/remote/test_host_imports.py holds the line.

__all__ = ["PROTOCOL", "main", "serve"]

#: A job id as the journal names it, 8 to 64 of these (checked by :func:`_cancel` only).
_JOB_ID_CHARS = frozenset("0123456789abcdef")
#: Stop reading the job's output while this much is queued for a slow client.
_HIGH_WATER = 1 << 20
#: After the tree is proven empty, how long to wait for its output pipes' EOF
#: (a pipe can only stay open if a process outside the job holds it).
_DRAIN_AFTER_EMPTY = 2.0


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _read_frame(fd: int) -> tuple[bytes, bytes]:
    kind, size = parse_header(_read_exact(fd, HEADER_SIZE))
    return kind, _read_exact(fd, size)


def _write_all(fd: int, data: bytes, stall: float = 60.0) -> None:
    """Write everything; give up (TimeoutError) after ``stall`` s without progress."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            if not wait_writable(fd, stall):
                raise TimeoutError(f"the channel took nothing for {stall:.0f}s") from None
            continue
        view = view[n:]


def _identity(pid: int) -> list[int] | None:
    from tether.process import read_process

    info = read_process(pid)
    return None if info is None else [info.pid, info.starttime]


def main(env: dict[str, str], mode: str, first: bytes | None = None) -> int:
    """Serve one SPEC on stdin/stdout; the agent's exit status.

    ``first``: the SPEC frame, when stage 1 read it already (it came right
    behind the client's offer); else it is read from stdin.
    """
    # Keep the channel to ourselves: every process started from here (the
    # job, its watchdog) gets /dev/null for 0, 1 and 2, and no stray print can
    # corrupt the frames. The watchdog holding the channel open would also
    # keep the ssh session alive after the agent exits.
    ctl = os.dup(0)
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    try:
        os.chdir(env.get("HOME") or "/")
    except OSError:
        os.chdir("/")
    import tether

    _write_all(
        out,
        json_frame(
            HELLO,
            {
                "protocol": PROTOCOL,
                "pid": os.getpid(),
                "identity": _identity(os.getpid()),
                "parent": _identity(os.getppid()),
                "python": ".".join(map(str, sys.version_info[:3])),
                "tether": tether.__version__,
                "mode": mode,
                "uid": os.geteuid(),
            },
        ),
    )
    # The engine's imports (~40 ms) while the SPEC is on its way: on a real
    # network they overlap the round trip instead of following it. A failure
    # is met again, and reported, where the job needs them.
    try:
        import tether.job
        import tether.supervise
    except Exception:
        pass

    try:
        if first is None:
            kind, payload = _read_frame(ctl)
        else:
            kind, size = parse_header(first[:HEADER_SIZE])
            payload = first[HEADER_SIZE:]
            if len(payload) != size:
                raise ProtocolError("a truncated SPEC frame")
        if kind != SPEC:
            raise ProtocolError(f"expected a SPEC frame, got {kind!r}")
        spec = load_json(payload)
    except (EOFError, ProtocolError, OSError, ValueError):
        return 3
    # Loaded: what follows may run for hours (a job, a recovery's graces).
    gc_back_on()
    op = spec.get("op")
    try:
        if op == "run":
            return _Runner(ctl, out, env, spec).run()
        if op == "cancel":
            return _cancel(out, spec)
    except ProtocolError as err:
        _write_all(out, json_frame(ERROR, {"message": f"protocol error: {err}", "exit_code": 125}))
        return 3
    except Exception as err:  # one line back to the client, never a silent death
        message = {"message": f"remote agent failed: {type(err).__name__}: {err}", "exit_code": 125}
        try:
            _write_all(out, json_frame(ERROR, message))
        except OSError:
            pass
        return 3
    _write_all(out, json_frame(ERROR, {"message": f"unknown operation {op!r}", "exit_code": 125}))
    return 3


def serve(env: dict[str, str], mode: str, first: bytes | None = None) -> NoReturn:
    """:func:`main`, then exit without the interpreter's finalisation.

    Everything the agent says goes out with os.write, so nothing is left in
    a buffer; tearing down its modules (~10 ms) would only delay the end of
    the ssh session. atexit handlers still run; with other threads alive
    (finalisation would wait for them) the normal exit is taken.
    """
    code = main(env, mode, first)
    # _thread's count of the threads it started that still run, the main
    # thread not included: threading's too, without importing threading.
    if _thread._count() > 0:
        sys.exit(code)
    atexit._run_exitfuncs()
    os._exit(code)


class _Runner:
    """The job's side of the channel: a :class:`tether.supervise.Channel`.

    supervise() polls these fds beside the job's and hands each ready one to
    :meth:`ready`; a CANCEL frame, EOF on the control side (the dead man's
    switch) or a dead output side is a cancel request.
    """

    def __init__(self, ctl: int, out: int, env: dict[str, str], spec: dict[str, Any]) -> None:
        self.ctl = ctl
        self.out = out
        self.spec = spec
        self.env = dict(env)
        self.outbuf = bytearray()
        self.out_dead = False
        self.ctl_open = True
        self.cancels = 0
        self.cancel_reason: str | None = None
        self.frames = FrameBuffer()
        #: The job's output pipes (read end -> frame kind) until each reaches EOF.
        self.pipes: dict[int, bytes] = {}
        # The job's stdin, when the client forwards its own: a pipe we feed.
        self.stdin_w = -1
        self.inbuf = bytearray()
        self.stdin_eof = False

    # -- the channel --------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not self.out_dead:
            self.outbuf += data
            self.flush()

    def flush(self) -> None:
        while self.outbuf and not self.out_dead:
            try:
                n = os.write(self.out, self.outbuf[: 1 << 16])
            except BlockingIOError:
                return
            except OSError:
                # The channel is gone (EPIPE): same as losing the control side.
                self.out_dead = True
                self.outbuf.clear()
                self.request_cancel("connection lost (output channel closed)")
                return
            del self.outbuf[:n]

    def request_cancel(self, reason: str, *, counts: bool = False) -> None:
        if counts:
            self.cancels += 1
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def feed_stdin(self) -> None:
        """Write queued stdin to the job; credit the client for what it took."""
        taken = 0
        while self.stdin_w >= 0 and self.inbuf:
            try:
                n = os.write(self.stdin_w, self.inbuf[: 1 << 16])
            except BlockingIOError:
                break
            except OSError:
                # The job closed its stdin (or exited): what is left is dropped,
                # and still credited so the client never stalls on it.
                taken += len(self.inbuf)
                self.inbuf.clear()
                self.close_stdin()
                break
            taken += n
            del self.inbuf[:n]
        if self.stdin_w < 0 and self.inbuf:
            taken += len(self.inbuf)
            self.inbuf.clear()
        if self.stdin_eof and not self.inbuf:
            self.close_stdin()
        if taken:
            self.send(json_frame(STDIN_CREDIT, {"taken": taken}))

    def close_stdin(self) -> None:
        if self.stdin_w >= 0:
            os.close(self.stdin_w)
            self.stdin_w = -1

    def on_control(self, kind: bytes, payload: bytes) -> None:
        if kind == STDIN:
            if payload:
                self.inbuf += payload
            else:
                self.stdin_eof = True
            self.feed_stdin()
            return
        if kind == CANCEL:
            self.cancels += 1
            self.send(json_frame(ACK, {"cancels": self.cancels}))
            reason = load_json(payload).get("reason") if payload else None
            self.request_cancel(str(reason or "cancelled by the client"))

    # -- tether.supervise.Channel ------------------------------------------

    def wanted(self) -> dict[int, int]:
        fds: dict[int, int] = {}
        if self.ctl_open:
            fds[self.ctl] = select.POLLIN
        if len(self.outbuf) < _HIGH_WATER:
            # Stop reading the job's output while the client is too far behind.
            for fd in self.pipes:
                fds[fd] = select.POLLIN
        if self.outbuf and not self.out_dead:
            fds[self.out] = select.POLLOUT
        if self.stdin_w >= 0 and self.inbuf:
            fds[self.stdin_w] = select.POLLOUT
        return fds

    def ready(self, fd: int, events: int) -> None:
        if fd in self.pipes:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if data:
                self.send(frame(self.pipes[fd], data))
            else:
                del self.pipes[fd]
                os.close(fd)
        elif fd == self.out:
            self.flush()
        elif fd == self.stdin_w:
            self.feed_stdin()
        elif fd == self.ctl:
            try:
                data = os.read(self.ctl, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.ctl_open = False
                self.inbuf.clear()
                self.close_stdin()
                self.request_cancel("control connection closed (dead man's switch)")
                return
            for kind, payload in self.frames.feed(data):
                self.on_control(kind, payload)

    def cancel_request(self) -> tuple[str, int] | None:
        return None if self.cancel_reason is None else (self.cancel_reason, self.cancels)

    def linger(self, complete: bool) -> float:
        # Once the tree is proven empty its output pipes can only stay open if
        # a process outside the job holds them: drain them, but not for ever.
        return _DRAIN_AFTER_EMPTY if complete else 0.2

    def idle(self) -> bool:
        return not self.pipes

    # -- the job --------------------------------------------------------------

    def run(self) -> int:
        from tether.errors import TetherError
        from tether.job import Job
        from tether.spec import JobSpec
        from tether.supervise import forwarded_signals, supervise

        try:
            spec = JobSpec.from_wire(self.spec)
            # Never weaker than asked: what this agent does not do is refused
            # (the local CLI refuses these with --host before anything starts).
            for asked, what in (
                (spec.foreground, "--foreground"),
                (bool(spec.forward) or spec.cancel_on is not None, "--forward/--cancel-on"),
                (spec.fail_on_leftovers, "--fail-on-leftovers"),
            ):
                if asked:
                    message = {"message": f"{what} is not supported on a remote host",
                               "exit_code": 125}  # fmt: skip
                    _write_all(self.out, json_frame(ERROR, message))
                    return 0
            if spec.env is None:
                spec = spec.evolve(env=self.env)
        except TetherError as err:
            raise ProtocolError(str(err)) from None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.pipes = {out_r: STDOUT, err_r: STDERR}
        if self.spec.get("stdin"):
            stdin_r, self.stdin_w = os.pipe()
            os.set_blocking(self.stdin_w, False)
        else:
            # /dev/null as subprocess.DEVNULL would open it, without importing
            # subprocess for the constant.
            stdin_r = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        with forwarded_signals() as inbox:
            try:
                job = Job(
                    spec,
                    stdin=stdin_r,
                    stdout=out_w,
                    stderr=err_w,
                    dedicated_supervisor=True,
                    wake_fd=inbox.fileno,
                    # The agent forks nothing but the job: the shell-stage watchdog.
                    _forks_nothing_else=True,
                )
            except TetherError as err:
                message = {"message": str(err), "exit_code": err.exit_code}
                _write_all(self.out, json_frame(ERROR, message))
                return 0
            except OSError as err:
                message = {"message": f"cannot start: {err.strerror}", "exit_code": 125}
                _write_all(self.out, json_frame(ERROR, message))
                return 0
            finally:
                os.close(out_w)
                os.close(err_w)
                os.close(stdin_r)
            self.send(
                json_frame(
                    STARTED,
                    {
                        "job_id": job.id,
                        "leader": _identity(job.pid),
                        "trackers": [[t.name, t.used, t.reason] for t in job.trackers],
                    },
                )
            )
            os.set_blocking(self.out, False)
            os.set_blocking(self.ctl, False)
            outcome = supervise(
                job,
                inbox=inbox,
                timeout=spec.timeout,
                leftovers=spec.leftovers,
                channel=self,
                who="remote agent",
            )
        self.close_stdin()
        for fd in self.pipes:
            os.close(fd)
        result: dict[str, Any] = {
            "returncode": outcome.returncode,
            "timed_out": outcome.timed_out,
        }
        if outcome.error is not None or outcome.report is None:
            result["error"] = f"termination failed: {outcome.error}"
        else:
            result["reason"] = outcome.reason
            result["report"] = outcome.report.to_dict()
        self.send(json_frame(RESULT, result))
        if not self.out_dead:
            os.set_blocking(self.out, True)
            try:
                _write_all(self.out, bytes(self.outbuf))
            except OSError:
                pass
        return 0


def _stop(identity: tuple[int, int] | None, what: str, notes: list[str]) -> None:
    """SIGKILL one of tether's own processes (never a job member) by identity."""
    from tether.process import ProcessHandle

    if TYPE_CHECKING:
        from signal import SIGKILL
    else:
        from _signal import SIGKILL  # signal's C half: no enum to build

    if identity is None:
        return
    handle = ProcessHandle.open(identity[0], identity[1])
    if handle is None:
        notes.append(f"{what} pid {identity[0]} already gone")
        return
    try:
        handle.send_signal(SIGKILL)
        if handle.fileno >= 0:
            wait_readable(handle.fileno, 5.0)
        notes.append(f"{what} pid {identity[0]} stopped (SIGKILL)")
    finally:
        handle.close()


def _lock_journal(directory: str) -> int:
    """flock the journal directory: out-of-band cancels of one user take turns.

    Two may race for one job (``tether cancel`` while the client that lost its
    connection confirms over a new one); the second then finds no record.
    """
    import fcntl

    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return -1  # no journal yet: nothing to find, nothing to race for
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _cancel(out: int, spec: dict[str, Any]) -> int:
    """The out-of-band path: terminate a recorded job through this new connection."""
    from tether.journal import Journal, JournalProblem
    from tether.policy import Policy
    from tether.recovery import job_state, recover

    job_id = spec.get("job_id")
    if not isinstance(job_id, str) or not (
        8 <= len(job_id) <= 64 and _JOB_ID_CHARS.issuperset(job_id)
    ):
        raise ProtocolError(f"bad job id {job_id!r}")
    journal = Journal.default()
    lock = _lock_journal(journal.directory)
    try:
        record = journal.read(job_id)
        if record is None:
            # A job of the POSIX-shell agent keeps its record in sh-ID/.
            shell_job = os.path.isdir(os.path.join(journal.directory, f"sh-{job_id}"))
            answer = {"found": False, "journal": journal.directory, "shell_job": shell_job}
            _write_all(out, json_frame(RESULT, answer))
            return 0
        if isinstance(record, JournalProblem):
            _write_all(out, json_frame(ERROR, {"message": str(record), "exit_code": 125}))
            return 0
        state = job_state(record)
        notes: list[str] = [f"job was {state.describe()}"]
        # The watchdog first: killing the supervisor would make it start
        # recovering the job itself, racing us.
        _stop(record.watchdog, "watchdog", notes)
        _stop(record.supervisor, "supervisor", notes)
        raw_policy = spec.get("policy")
        policy = Policy.from_dict(raw_policy) if raw_policy is not None else None
        report = recover(
            record,
            journal,
            reason=str(spec.get("reason") or "cancelled out of band over a new connection"),
            policy=policy,
            protected=[os.getpid()],
        )
    finally:
        journal.close()
        if lock >= 0:
            os.close(lock)  # releases the flock
    _write_all(out, json_frame(RESULT, {"found": True, "notes": notes, "report": report.to_dict()}))
    return 0
