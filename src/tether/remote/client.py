"""The local side: reach a host with the OpenSSH client, load the agent, run or cancel.

One :class:`Connection` is one ``ssh`` process whose stdin/stdout carry the
bootstrap and then the frames of :mod:`tether.remote.protocol`. ssh is started
in a session of its own: a Ctrl-C on the terminal reaches tether (which cancels
the remote job and waits for its report), not ssh (whose death would leave the
report behind). As a consequence ssh cannot prompt for a password on the
terminal: use keys or an agent, as for any batch ssh.

Host key checking, ProxyJump, ControlMaster, keys and aliases are ssh's own
business: tether passes ``-F FILE`` and ``-o OPTION`` through and adds only
``-T`` (no pty).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from tether import supervise
from tether._compact_json import dumps as compact_json
from tether._fdwait import wait_readable
from tether._platform.linux.procfs import OUT_OF_DESCRIPTORS
from tether._records import dataclass, field, replace
from tether.errors import TetherError
from tether.policy import Policy
from tether.remote import protocol, shell
from tether.remote.bootstrap import (
    MIN_ENGINE_PYTHON,
    REMOTE_COMMAND,
    STAGE1_TO_SHELL,
    package_digest,
    package_zip,
    prefetch_package_zip,
    stage1_block,
)
from tether.remote.hostlist import Target
from tether.report import MalformedReportError, Report
from tether.sanitize import visible
from tether.spec import JobSpec

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Lines of login-shell noise (motd, rc files) tolerated before the banner.
_MAX_NOISE_LINES = 200
#: The whole bootstrap (banner, stage 1, HELLO) and an out-of-band cancel's
#: answer must arrive within this: a host that connects and stalls is that
#: host's error, never a hang.
HANDSHAKE_TIMEOUT = 120.0
#: A line (banner, stage-1 answer) longer than this is a hostile host.
MAX_LINE = 64 << 10
#: Exit statuses a remote ERROR may carry (timeout(1)'s, for the command).
_ERROR_STATUSES = (125, 126, 127)
#: Time a remote kill script may add to an out-of-band cancel's answer.
_KILL_SCRIPT_ALLOWANCE = 60.0
#: --timeout enforced locally too: a host that has not reported this long
#: after its timeout and its policy's graces is cancelled, and given up on
#: after as much again (its remote agent enforces the timeout first).
LOCAL_TIMEOUT_MARGIN = 30.0
#: Bytes buffered from all hosts' connections together (frames not yet
#: whole): past it, the host whose read crossed it is that host's error.
MAX_BUFFERED = 256 << 20
#: Unfinished output lines (no newline yet) kept per host and stream, and for
#: all hosts together; past either, the piece is written as a line of its own.
MAX_PARTIAL_LINE = 64 << 10
MAX_PARTIAL_TOTAL = 16 << 20
#: Which remote engine to load: the Python engine if the host can run it,
#: else the POSIX-shell agent ("auto"); only one of them ("python", "sh").
ENGINES = ("auto", "python", "sh")
_FLOOR = ".".join(map(str, MIN_ENGINE_PYTHON))


def policy_span(policy: Policy) -> float:
    """Longest a policy may take to run through (graces, tree delay, a kill script)."""
    return sum(s.grace for s in policy.steps) + policy.tree_delay + _KILL_SCRIPT_ALLOWANCE


class _Budget:
    """Bytes buffered by all connections together (MAX_BUFFERED)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.used = 0

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > MAX_BUFFERED:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


_BUFFERED = _Budget()


class RemoteError(TetherError):
    """A remote host could not be reached, or its agent could not run the job."""

    def __init__(self, host: str, message: str, exit_code: int = 125) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.message = message
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, int]]:
        return (type(self), (self.host, self.message, self.exit_code))


RemoteError.__module__ = "tether"


@dataclass(frozen=True)
class SshOptions:
    """How to invoke the OpenSSH client."""

    options: tuple[str, ...] = ()
    config_file: str | None = None
    program: str = "ssh"
    engine: str = "auto"  # one of ENGINES (not an ssh option, but travels with them)
    #: ``-l USER``: the login user for targets that name none (pdsh/clush -l).
    login_user: str | None = None

    def argv(self, target: Target) -> list[str]:
        argv = [self.program, "-T"]
        if self.config_file is not None:
            argv += ["-F", self.config_file]
        for opt in self.options:
            argv += ["-o", opt]
        if target.port is not None:
            argv += ["-p", str(target.port)]
        user = target.user if target.user is not None else self.login_user
        if user is not None:
            argv += ["-l", user]
        # "--": the host can never be read as an option (it is validated too).
        return [*argv, "--", target.host, REMOTE_COMMAND]


class _SshProcess:
    """The ssh client, as ``subprocess.Popen(argv, stdin=PIPE, stdout=PIPE,
    stderr=PIPE, bufsize=0, start_new_session=True)`` made it, without
    subprocess: with signal, locale, re, enum, selectors and warnings behind
    it, that import was ~5 ms of a remote run's start before ssh was.

    posix_spawnp, so a missing program is an OSError here, as Popen's. The
    child gets the pipes as 0-2 and, as Popen's close_fds, no other
    descriptor: ours are close-on-exec, and any we inherited open is closed
    in it; SIGPIPE and SIGXFSZ are back to their defaults (restore_signals).
    Reaped under a lock (by :meth:`poll` or :meth:`wait`), so :meth:`kill`
    never signals a pid that may have been reused.
    """

    def __init__(self, argv: Sequence[str]) -> None:
        if TYPE_CHECKING:
            from signal import SIGPIPE, SIGXFSZ
        else:
            from _signal import SIGPIPE, SIGXFSZ
        # stdin's, stdout's and stderr's (read, write): every one opened so far
        # is closed if a later one fails (EMFILE at a fan-out's fd limit).
        fds: list[int] = []
        try:
            for _ in range(3):
                fds += os.pipe()
            # The child's: stdin's read end, stdout's and stderr's write ends.
            for i in (0, 3, 5):
                fds[i] = _above_stdio(fds[i])
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        theirs = [fds[0], fds[3], fds[5]]
        mine = [fds[1], fds[2], fds[4]]
        try:
            actions: list[tuple[int, ...]] = [
                (os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(theirs)
            ]
            actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds()]
            self.pid = os.posix_spawnp(
                argv[0],
                list(argv),
                os.environ,
                file_actions=actions,
                setsid=True,
                setsigdef=(SIGPIPE, SIGXFSZ),
            )
        except BaseException:
            for fd in mine:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        self.returncode: int | None = None
        self._lock = threading.Lock()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = -1  # no pidfds: wait() polls
        self.stdin = open(mine[0], "wb", buffering=0)  # noqa: SIM115 - closed by Connection
        self.stdout = open(mine[1], "rb", buffering=0)  # noqa: SIM115
        self.stderr = open(mine[2], "rb", buffering=0)  # noqa: SIM115

    def poll(self) -> int | None:
        """Its exit status if it ended (Popen's returncode: -N for signal N)."""
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = self.pid, 0  # reaped by someone else: as Popen says
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status, waiting at most ``timeout`` seconds (None: still running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while True:
            rc = self.poll()
            if rc is not None:
                return rc
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if self._pidfd >= 0:
                # Readable once it has exited; the reaping is poll()'s.
                wait_readable(self._pidfd, left)
            else:
                time.sleep(delay if left is None else min(delay, left))
                delay = min(delay * 2, 0.05)

    def kill(self) -> None:
        """SIGKILL, unless reaped already (then its pid may be another's)."""
        if TYPE_CHECKING:
            from signal import SIGKILL
        else:
            from _signal import SIGKILL
        with self._lock:
            if self.returncode is None:
                try:
                    os.kill(self.pid, SIGKILL)
                except ProcessLookupError:
                    pass

    def abandon(self, timeout: float = 5.0) -> None:
        """Kill it, reap it (waiting at most ``timeout``), close its pidfd and
        pipes: nothing of it is kept."""
        self.kill()
        self.wait(timeout)
        self.release()
        for pipe in (self.stdin, self.stdout, self.stderr):
            try:
                pipe.close()
            except OSError:
                pass

    def release(self) -> None:
        """Close the pidfd (once reaped, or given up on)."""
        with self._lock:
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1


def _above_stdio(fd: int) -> int:
    """``fd``, or a copy of it numbered 3 or more: posix_spawn's dup2 of a
    descriptor onto its own number would leave it close-on-exec (a process
    started with 0, 1 or 2 closed gets pipes there). On success ``fd`` itself
    is closed if a copy replaced it; on failure it is still open (the
    caller's to close) and no copy is."""
    low = []
    try:
        while fd < 3:
            low.append(fd)
            fd = os.dup(fd)
    except BaseException:
        for n in low[1:]:
            os.close(n)
        raise
    for n in low:
        os.close(n)
    return fd


def _inherited_fds() -> list[int]:
    """Descriptors above 2 that a child would inherit (not close-on-exec):
    only what this process was given open, since Python opens every
    descriptor close-on-exec."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError as err:
        if err.errno in OUT_OF_DESCRIPTORS:
            raise  # not "none": the child would keep whatever we were given
        return []
    out = []
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    out.append(fd)
            except OSError:
                pass  # the listing's own descriptor, closed since
    return out


class Connection:
    """One ssh process running the bootstrap and then the agent."""

    def __init__(self, target: Target, ssh: SshOptions) -> None:
        self.target = target
        self.label = target.label
        self._buf = bytearray()
        self._eof = False
        self._write_lock = threading.Lock()
        self._stderr: deque[str] = deque(maxlen=20)
        self.hello: dict[str, Any] = {}
        self._deadline: float | None = None
        self.engine_choice = ssh.engine
        #: The engine that answered: "python" or "sh" (after the handshake).
        self.engine = "python"
        try:
            self.proc = _SshProcess(ssh.argv(target))
        except OSError as err:
            raise RemoteError(self.label, f"cannot run {ssh.program}: {err.strerror}") from None
        try:
            if ssh.engine != "sh":
                prefetch_package_zip()
            self._out = self.proc.stdout.fileno()
            self._stderr_thread = threading.Thread(
                target=self._read_stderr, name=f"ssh-stderr-{self.label}", daemon=True
            )
            self._stderr_thread.start()
        except BaseException as err:
            # No Connection to close it: ssh and its pipes go now (a fan-out
            # at its thread limit would otherwise keep one of each per host).
            self.proc.abandon()
            if isinstance(err, RuntimeError):  # "can't start new thread"
                raise RemoteError(self.label, f"cannot start a reader for ssh: {err}") from None
            raise

    # -- ssh's own stderr: the reason when a connection fails --------------

    def _read_stderr(self) -> None:
        pending = b""
        while True:
            try:
                chunk = self.proc.stderr.read(4096)
            except (OSError, ValueError):
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").strip()
                if text:
                    self._stderr.append(text)
        if pending.strip():
            self._stderr.append(pending.decode(errors="replace").strip())

    def ssh_error(self) -> str:
        """Why the connection ended: ssh's last words, else its exit status."""
        self._stderr_thread.join(timeout=2.0)
        rc = self.proc.poll()
        lines = [
            line
            for line in self._stderr
            if not line.startswith("Warning: Permanently added")
            and not line.startswith("Pseudo-terminal")
        ]
        if lines:
            return "ssh: " + lines[-1]
        if rc is None:
            return "connection closed"
        return f"ssh exited with status {rc}"

    # -- reading --------------------------------------------------------------

    def _fill(self, timeout: float | None) -> bool:
        """Read more from ssh's stdout; False on EOF (or timeout, if given)."""
        if self._eof:
            return False
        if timeout is not None and not wait_readable(self._out, timeout):
            return False
        try:
            chunk = os.read(self._out, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            self._eof = True
            return False
        if not _BUFFERED.take(len(chunk)):
            self._consume(len(self._buf))  # this host is done: free its share now
            raise RemoteError(
                self.label,
                f"output held back from all hosts together passed {MAX_BUFFERED >> 20} MiB "
                "(frames not yet whole)",
            )
        self._buf += chunk
        return True

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        _BUFFERED.give(n)

    def read_line(self, deadline: float | None = None) -> bytes | None:
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise RemoteError(self.label, f"the host sent a line longer than {MAX_LINE} bytes")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise RemoteError(self.label, f"no answer within {HANDSHAKE_TIMEOUT:g}s")
            if not self._fill(left):
                if not self._eof:
                    continue  # the select timed out: the check above says so
                return None
        end = self._buf.index(b"\n")
        line = bytes(self._buf[:end])
        self._consume(end + 1)
        return line

    def read_frame(self, deadline: float | None = None) -> tuple[bytes, bytes] | None:
        """The next frame, or None when the connection ended (RemoteError past ``deadline``)."""
        while True:
            if len(self._buf) >= protocol.HEADER_SIZE:
                try:
                    kind, size = protocol.parse_header(bytes(self._buf[: protocol.HEADER_SIZE]))
                except (ValueError, protocol.ProtocolError) as err:
                    raise RemoteError(self.label, f"bad frame: {err}") from None
                if kind in protocol.CONTROL_FRAMES and size > protocol.MAX_CONTROL_FRAME:
                    raise RemoteError(
                        self.label, f"bad frame: a {visible(repr(kind))} frame of {size} bytes"
                    )
                end = protocol.HEADER_SIZE + size
                if len(self._buf) >= end:
                    payload = bytes(self._buf[protocol.HEADER_SIZE : end])
                    self._consume(end)
                    return kind, payload
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise RemoteError(self.label, f"no answer within {HANDSHAKE_TIMEOUT:g}s")
            if not self._fill(left) and self._eof:
                return None

    # -- writing --------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Send bytes to the remote side; False if the connection is gone."""
        with self._write_lock:
            try:
                view = memoryview(data)
                while view:
                    view = view[self.proc.stdin.write(view) or 0 :]
            except (OSError, ValueError):
                return False
        return True

    # -- the bootstrap ------------------------------------------------------

    def handshake(self, before_hello: Callable[[], object] | None = None) -> dict[str, Any]:
        """Load the agent on the remote host; its HELLO (within HANDSHAKE_TIMEOUT).

        ``before_hello`` is called right after the offer of the Python engine,
        before stage 1's answer is awaited: what it sends (the SPEC) travels
        with the offer, which says it follows, instead of a round trip (or
        two) later. The shell agent is not offered it.
        """
        self._deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        banner = None
        for _ in range(_MAX_NOISE_LINES):
            line = self.read_line(self._deadline)
            if line is None:
                raise RemoteError(self.label, self.ssh_error(), 125)
            if line.startswith((b"TETHER-PY ", b"TETHER-NO-PYTHON")):
                banner = line.decode(errors="replace")
                break
        if banner is None:
            raise RemoteError(self.label, "no tether bootstrap banner from the remote shell")
        if banner.startswith("TETHER-NO-PYTHON"):
            if self.engine_choice == "python":
                raise RemoteError(
                    self.label,
                    f"python3 not found on the remote host (the Python engine needs python3 >= "
                    f"{_FLOOR} there; --remote-engine auto falls back to the POSIX-shell agent)",
                )
            return self._load_shell_agent()
        words = banner.split()
        version_text = words[1] if len(words) > 1 else ""
        # The host's bytecode magic: stage 1 goes out compiled if it is ours.
        magic = words[2] if len(words) > 2 else None
        try:
            version = tuple(int(x) for x in version_text.split(".")[:2])
        except ValueError:
            raise RemoteError(self.label, f"bad banner {banner!r}") from None
        if self.engine_choice == "sh" or (
            version < MIN_ENGINE_PYTHON and self.engine_choice == "auto"
        ):
            if not self.write(stage1_block(STAGE1_TO_SHELL)):
                raise RemoteError(self.label, self.ssh_error())
            return self._load_shell_agent()
        if version < MIN_ENGINE_PYTHON:
            raise RemoteError(
                self.label,
                f"remote python3 is {version_text}; the Python engine needs >= {_FLOOR} "
                "(--remote-engine auto falls back to the POSIX-shell agent)",
            )
        import tether

        offer = {
            "version": tether.__version__,
            "protocol": protocol.PROTOCOL,
            "sha256": package_digest(),
            "spec": before_hello is not None,
        }
        offer_line = compact_json(offer).encode() + b"\n"
        if not self.write(stage1_block(magic=magic) + offer_line):
            raise RemoteError(self.label, self.ssh_error())
        if before_hello is not None:
            before_hello()  # the SPEC, right behind the offer (stage 1 reads it first)
        answer = self.read_line(self._deadline)
        if answer is None:
            raise RemoteError(self.label, self.ssh_error())
        try:
            mode = protocol.load_json(answer)
        except protocol.ProtocolError:
            raise RemoteError(
                self.label, f"bad answer from stage 1: {visible(repr(answer[:200]))}"
            ) from None
        if mode.get("mode") == "error":
            raise RemoteError(self.label, str(mode.get("message")))
        if mode.get("mode") == "ship":
            blob = package_zip()[0]
            if not self.write(b"%d\n" % len(blob) + blob):
                raise RemoteError(self.label, self.ssh_error())
        first = self.read_frame(self._deadline)
        if first is None or first[0] != protocol.HELLO:
            raise RemoteError(self.label, "the remote agent did not start: " + self.ssh_error())
        self.hello = _shallow(protocol.load_json(first[1]))
        return self.hello

    def _load_shell_agent(self) -> dict[str, Any]:
        if not self.write(shell.agent_block()):
            raise RemoteError(self.label, self.ssh_error())
        first = self.read_frame(self._deadline)
        if first is not None and first[0] == protocol.ERROR:
            raise RemoteError(self.label, str(protocol.load_json(first[1]).get("message")))
        if first is None or first[0] != protocol.HELLO:
            raise RemoteError(self.label, "the shell agent did not start: " + self.ssh_error())
        self.engine = "sh"
        self.hello = _shallow(protocol.load_json(first[1]))
        return self.hello

    # -- what the engines read ------------------------------------------------

    def send_run(self, spec: JobSpec, *, stdin: bool) -> bool:
        """Start ``spec`` there; ``stdin``: the job reads what we forward."""
        if self.engine == "sh":
            try:
                data = shell.encode_run(spec)
            except shell.ShellEngineError as err:
                raise RemoteError(self.label, f"{err} (the host runs the shell agent)") from None
            return self.write(data)
        payload = {"op": "run", "stdin": stdin, **spec.to_wire()}
        return self.write(protocol.json_frame(protocol.SPEC, payload))

    def send_cancel(self, reason: str) -> bool:
        if self.engine == "sh":
            return self.write(shell.encode_cancel(reason))
        return self.write(protocol.json_frame(protocol.CANCEL, {"reason": reason}))

    def send_cancel_job(self, job_id: str, reason: str | None, policy: Policy | None) -> bool:
        if self.engine == "sh":
            try:
                return self.write(shell.encode_cancel_job(job_id, reason, policy))
            except shell.ShellEngineError as err:
                raise RemoteError(self.label, str(err)) from None
        spec: dict[str, Any] = {"op": "cancel", "job_id": job_id, "reason": reason}
        if policy is not None:
            spec["policy"] = policy.to_dict()
        return self.write(protocol.json_frame(protocol.SPEC, spec))

    def load_result(self, payload: bytes, policy_text: str | None) -> dict[str, Any]:
        if self.engine == "sh":
            return shell.decode_result(payload, policy_text)
        return protocol.load_json(payload)

    def close(self, timeout: float = 5.0) -> int | None:
        """Close our end, wait for ssh (kill it after ``timeout``); its status."""
        with self._write_lock:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        # Nothing reads its stdout any more: a host still writing (a flood we
        # refused) gets EPIPE and ends, instead of blocking until the kill.
        try:
            self.proc.stdout.close()
        except OSError:
            pass
        rc = self.proc.wait(timeout)
        if rc is None:
            self.kill()
            rc = self.proc.wait()
        self.proc.release()
        self._stderr_thread.join(timeout=2.0)
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        self._consume(len(self._buf))
        return rc

    def kill(self) -> None:
        """SIGKILL our ssh process (our unreaped child: its pid cannot be reused)."""
        self.proc.kill()


# -- one host ------------------------------------------------------------------


@dataclass
class HostResult:
    """How one host's job ended (or why it never ran)."""

    target: Target
    exit_status: int = 125
    error: str | None = None
    job_id: str | None = None
    returncode: int | None = None
    timed_out: bool = False
    reason: str | None = None
    cancelled: str | None = None  # None, "in-band" or "out-of-band"
    report: dict[str, Any] | None = None
    remote: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.target.label,
            "exit_status": self.exit_status,
            "error": self.error,
            "job_id": self.job_id,
            "returncode": self.returncode,
            "timed_out": self.timed_out,
            "reason": self.reason,
            "cancelled": self.cancelled,
            "remote": self.remote,
            "notes": self.notes,
            "report": self.report,
        }


def checked_result(label: str, data: dict[str, Any]) -> dict[str, Any]:
    """A RESULT's fields, checked (the host may be hostile); RemoteError if bad.

    The leader's status must be an int a process can have (-64..255), the
    report one :meth:`Report.from_dict` accepts (typed, finite numbers); it is
    kept as the dict that report writes back, so what we print was checked.
    """
    rc = data.get("returncode")
    if rc is not None and (type(rc) is not int or not -64 <= rc <= 255):
        raise RemoteError(label, f"the host sent a bad exit status {visible(repr(rc))[:40]}")
    timed_out = data.get("timed_out", False)
    if type(timed_out) is not bool:
        raise RemoteError(label, "the host sent a bad 'timed_out'")
    reason = data.get("reason")
    error = data.get("error")
    raw = data.get("report")
    report = None
    if raw is not None:
        try:
            report = Report.from_dict(raw).to_dict()
        except (MalformedReportError, ValueError, TypeError) as err:
            raise RemoteError(
                label, f"the host sent a malformed report: {visible(str(err))[:200]}"
            ) from None
    return {
        "returncode": rc,
        "timed_out": timed_out,
        "reason": None if reason is None else visible(str(reason))[:1000],
        "error": None if not error else visible(str(error))[:1000],
        "report": report,
    }


def exit_status(returncode: int | None, timed_out: bool, report: dict[str, Any] | None) -> int:
    """``tether run``'s conventions for one host's outcome."""
    complete = report is None or bool(report.get("complete", False))
    return supervise.exit_status(returncode, timed_out, complete=complete)


#: Most stdout a gathering sink (``-b``) keeps, all hosts together.
GATHER_LIMIT = 64 << 20


class OutputSink:
    """Where remote output goes: raw for one host, whole lines for many.

    ``prefix``: many hosts, so lines are kept whole and (unless ``labels`` is
    false, pdsh ``-N``) start with ``host: ``. ``gather``: stdout is kept per
    host (at most :data:`GATHER_LIMIT` bytes in all) for :meth:`gathered`
    instead of being written (clush ``-b``); stderr still streams.
    """

    def __init__(
        self,
        prefix: bool,
        stdout: Any = None,
        stderr: Any = None,
        *,
        labels: bool = True,
        gather: bool = False,
    ) -> None:
        import sys

        self.prefix = prefix
        self.labels = labels
        self.gather = gather
        self._streams = {
            protocol.STDOUT: stdout if stdout is not None else sys.stdout.buffer,
            protocol.STDERR: stderr if stderr is not None else sys.stderr.buffer,
        }
        self._partial: dict[tuple[str, bytes], bytes] = {}
        self._partial_total = 0
        self._kept: dict[str, bytearray] = {}
        self._kept_total = 0
        #: Hosts whose gathered output was cut at GATHER_LIMIT.
        self.truncated: set[str] = set()
        self._lock = threading.Lock()

    def write(self, label: str, kind: bytes, data: bytes) -> None:
        stream = self._streams[kind]
        with self._lock:
            if self.gather and kind == protocol.STDOUT:
                self._keep(label, data)
                return
            if not self.prefix:
                self._emit(stream, data)
                return
            key = (label, kind)
            held = self._partial.pop(key, b"")
            self._partial_total -= len(held)
            *lines, rest = (held + data).split(b"\n")
            if rest and (
                len(rest) > MAX_PARTIAL_LINE or self._partial_total + len(rest) > MAX_PARTIAL_TOTAL
            ):
                # Bytes without a newline are held to keep lines whole, but
                # never without bound (a host, or many, sending no newline).
                lines.append(rest)
                rest = b""
            if lines:
                head = self._head(label)
                self._emit(stream, b"".join(head + line + b"\n" for line in lines))
            if rest:
                self._partial[key] = rest
                self._partial_total += len(rest)

    def _head(self, label: str) -> bytes:
        return label.encode() + b": " if self.labels else b""

    def _keep(self, label: str, data: bytes) -> None:
        kept = self._kept.setdefault(label, bytearray())
        room = GATHER_LIMIT - self._kept_total
        if len(data) > room:
            self.truncated.add(label)
            data = data[: max(room, 0)]
        kept += data
        self._kept_total += len(data)

    def gathered(self) -> dict[str, bytes]:
        """Each host's stdout so far (``gather``), by label."""
        with self._lock:
            return {label: bytes(data) for label, data in self._kept.items()}

    def finish(self, label: str) -> None:
        """Flush a host's unterminated last lines."""
        if not self.prefix:
            return
        with self._lock:
            for kind in (protocol.STDOUT, protocol.STDERR):
                rest = self._partial.pop((label, kind), b"")
                self._partial_total -= len(rest)
                if rest:
                    self._emit(self._streams[kind], self._head(label) + rest + b"\n")

    @staticmethod
    def _emit(stream: Any, data: bytes) -> None:
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass


class HostRun:
    """One host's job: connect, run, stream, and cancel (in band or out of band)."""

    def __init__(
        self,
        target: Target,
        spec: JobSpec,
        ssh: SshOptions,
        sink: OutputSink,
        on_event: Any = None,
        *,
        stdin_fd: int | None = None,
    ) -> None:
        """One host's run of ``spec``; ``stdin_fd``: forward it to the job's stdin
        (None: the job gets /dev/null)."""
        self.target = target
        self.stdin_fd = stdin_fd
        self.label = target.label
        self.spec = spec
        self.ssh = ssh
        self.sink = sink
        self.on_event = on_event or (lambda: None)
        self._work = HostResult(target)
        #: Set when the host was given up on (its thread may still be unwinding).
        self._final: HostResult | None = None
        self.conn: Connection | None = None
        #: "connecting" (bootstrap), "starting" (run sent, no job id yet), "running".
        self._phase = "connecting"
        self.job_started_at: float | None = None
        self._oob_conns: list[Connection] = []
        self._closed_early = False
        self.job_id: str | None = None
        self.cancel_sent_at: float | None = None
        self.cancel_reason: str | None = None
        self.acked = False
        self.done = threading.Event()
        self.cancelled = threading.Event()
        self._oob: threading.Thread | None = None
        self._oob_result: HostResult | None = None
        self._lock = threading.Lock()
        self._stdin_credit = threading.Condition()
        self._stdin_in_flight = 0
        self.thread = threading.Thread(target=self._main, name=f"tether-{self.label}", daemon=True)

    @property
    def result(self) -> HostResult:
        """How the host's job ended (or why it never ran, or was given up on)."""
        final = self._final
        return final if final is not None else self._work

    def start(self) -> None:
        self.thread.start()

    # -- --timeout, enforced locally too ----------------------------------------

    def local_deadlines(self) -> tuple[float, float] | None:
        """(cancel at, give up at), monotonic, once the job started with a --timeout.

        The remote agent enforces the timeout and reports after its policy;
        a host silent for LOCAL_TIMEOUT_MARGIN beyond that is cancelled, and
        one still silent as long again is given up on.
        """
        started, timeout = self.job_started_at, self.spec.timeout
        if started is None or timeout is None or self.done.is_set():
            return None
        span = policy_span(self.spec.policy) + LOCAL_TIMEOUT_MARGIN
        return started + timeout + span, started + timeout + 2 * span

    def give_up(self, why: str) -> None:
        """End this host's part now: its result says why; its ssh processes are killed.

        The remote agent's dead man's switch (its stdin closed) ends the job there.
        """
        with self._lock:
            if self.done.is_set():
                return
            final = replace(self._work, notes=list(self._work.notes))
            final.error = why
            final.exit_status = 125
            self._final = final
            conns = [c for c in (self.conn, *self._oob_conns) if c is not None]
            self.done.set()
        for conn in conns:
            conn.kill()
        self.sink.finish(self.label)
        self.on_event()

    # -- cancel (called from the coordinating thread) -------------------------

    def cancel(self, reason: str) -> None:
        """Ask the remote agent to terminate the job (again: skip to the last step).

        Before the job id is known there is nothing to name in a cancel: until
        the agent's HELLO, the connection is closed at once (nothing runs yet,
        though the SPEC may have gone with the engine's offer); after it, the
        job's STARTED is awaited for the ack timeout, then the connection is
        closed (:meth:`cancel_out_of_band`) and the remote agent's dead man's
        switch ends whatever it started.
        """
        with self._lock:
            self.cancelled.set()
            self.cancel_reason = self.cancel_reason or reason
            conn, started, phase = self.conn, self.job_id is not None, self._phase
            if self.cancel_sent_at is None:
                self.cancel_sent_at = time.monotonic()
        if conn is not None and not started and phase == "connecting":
            conn.kill()
        elif conn is not None and started and not conn.send_cancel(reason):
            self.cancel_out_of_band("the connection is gone")

    def cancel_out_of_band(self, why: str) -> None:
        """Cancel over a new connection (once); the first one is then closed."""
        with self._lock:
            if self._oob is not None or self.done.is_set():
                return
            if self.job_id is None:
                # No id to cancel by: close the connection; the agent's dead
                # man's switch (stdin closed) ends what it started.
                conn = self.conn
                if conn is not None and not self._closed_early:
                    self._closed_early = True
                    self._work.notes.append(f"connection closed before the job id came ({why})")
                    conn.kill()
                return
            job_id = self.job_id
            self._oob = threading.Thread(
                target=self._run_oob, args=(job_id, why), name=f"tether-oob-{self.label}"
            )
            self._oob.daemon = True
        self._oob.start()

    def _run_oob(self, job_id: str, why: str) -> None:
        try:
            result = cancel_job(
                self.target,
                job_id,
                self.ssh,
                policy=self.spec.policy,
                reason=f"{self.cancel_reason or 'cancelled'}; out of band ({why})",
                on_connect=self._oob_conns.append,
            )
        except Exception as err:  # a bug or a broken host: its result says so, never a hang
            result = HostResult(self.target, job_id=job_id, cancelled="out-of-band")
            result.error = f"the out-of-band cancel failed: {type(err).__name__}: {err}"
        result.notes.insert(0, f"cancelled over a new connection: {why}")
        self._oob_result = result
        # The first connection is stale or hung: end it; its reader thread
        # then sees EOF and takes the out-of-band result.
        conn = self.conn
        if conn is not None:
            conn.kill()

    def ack_overdue(self, ack_timeout: float) -> bool:
        return (
            self.cancel_sent_at is not None
            and not self.acked
            and not (self.job_id is None and self._phase == "connecting")
            and not self._closed_early
            and not self.done.is_set()
            and self._oob is None
            and time.monotonic() - self.cancel_sent_at >= ack_timeout
        )

    # -- the host's thread ------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except RemoteError as err:
            self._work.error = err.message
            self._work.exit_status = err.exit_code
            if self.cancelled.is_set() and self.job_id is None:
                self._work.error = (
                    "cancelled before it started (the connection was closed; the remote "
                    "agent's dead man's switch ends anything it had started)"
                )
                self._work.exit_status = 125
        except Exception as err:  # a bug or a broken peer: one host, one line
            self._work.error = f"{type(err).__name__}: {err}"
            self._work.exit_status = 125
        finally:
            self.sink.finish(self.label)
            if self.conn is not None:
                self.conn.close(timeout=5.0)
            self.done.set()
            self.on_event()

    def _run(self) -> None:
        if self.cancelled.is_set():
            raise RemoteError(self.label, "cancelled before it started")
        conn = Connection(self.target, self.ssh)
        with self._lock:
            self.conn = conn
            # A cancel while ssh was being started found no connection to close.
            early = self.cancelled.is_set()
        if early:
            conn.kill()
            raise RemoteError(self.label, "cancelled before it started")
        sent = False

        def send_spec() -> None:
            nonlocal sent
            with self._lock:
                if self.cancelled.is_set():
                    raise RemoteError(self.label, "cancelled before it started")
            sent = True
            if not conn.send_run(self.spec, stdin=self.stdin_fd is not None):
                raise RemoteError(self.label, conn.ssh_error())

        # The SPEC goes with the engine's offer (Python agent), not after its HELLO.
        self._work.remote = conn.handshake(before_hello=send_spec)
        # From the agent's HELLO on, the SPEC may be running: a cancel waits
        # for the job id (phase "starting"). Before the agent sends it nothing
        # runs (it says HELLO, then reads the SPEC stage 1 holds), so a cancel
        # until it arrives closes the connection at once: stage 1 ends at EOF,
        # and an agent already past its HELLO ends its job by its dead man's
        # switch (the result says so).
        with self._lock:
            self._phase = "starting"
        if not sent:
            send_spec()
        # The job id must come within the handshake's deadline too: a host
        # that stalls before STARTED is that host's error, never a hang.
        start_deadline: float | None = time.monotonic() + HANDSHAKE_TIMEOUT
        while True:
            got = conn.read_frame(start_deadline if self.job_id is None else None)
            if got is None:
                self._connection_lost(conn)
                return
            kind, payload = got
            if kind in (protocol.STDOUT, protocol.STDERR):
                self.sink.write(self.label, kind, payload)
            elif kind == protocol.STARTED:
                data = protocol.load_json(payload)
                with self._lock:
                    self.job_id = self._work.job_id = str(data.get("job_id"))
                    self.job_started_at = time.monotonic()
                    self._phase = "running"
                    pending = self.cancelled.is_set()
                if pending:
                    # Cancelled while starting: deliver it now.
                    self.cancel(self.cancel_reason or "cancelled")
                elif self.stdin_fd is not None and conn.engine == "python":
                    threading.Thread(
                        target=self._forward_stdin,
                        args=(conn, self.stdin_fd),
                        name=f"tether-stdin-{self.label}",
                        daemon=True,
                    ).start()
                self.on_event()
            elif kind == protocol.STDIN_CREDIT:
                taken = int(protocol.load_json(payload).get("taken", 0))
                with self._stdin_credit:
                    self._stdin_in_flight -= taken
                    self._stdin_credit.notify()
            elif kind == protocol.ACK:
                self.acked = True
                self._work.cancelled = "in-band"
            elif kind == protocol.ERROR:
                # The host's words; of its exit status only what an ERROR can
                # mean (126/127: not executable/found), never its free choice.
                data = protocol.load_json(payload)
                code = data.get("exit_code")
                raise RemoteError(
                    self.label,
                    visible(str(data.get("message"))[:1000]),
                    code if code in _ERROR_STATUSES and type(code) is int else 125,
                )
            elif kind == protocol.RESULT:
                self._take_result(conn.load_result(payload, str(self.spec.policy)))
                return

    def _forward_stdin(self, conn: Connection, fd: int) -> None:
        """Our stdin to the job's, at most STDIN_WINDOW bytes ahead of it (as ssh)."""
        while not self.done.is_set():
            with self._stdin_credit:
                while self._stdin_in_flight >= protocol.STDIN_WINDOW and not self.done.is_set():
                    self._stdin_credit.wait(0.5)
                room = protocol.STDIN_WINDOW - self._stdin_in_flight
            try:
                data = os.read(fd, min(room, 1 << 16))
            except OSError:
                data = b""
            if data:
                with self._stdin_credit:
                    self._stdin_in_flight += len(data)
            if not conn.write(protocol.frame(protocol.STDIN, data)) or not data:
                return

    def _take_result(self, data: dict[str, Any]) -> None:
        checked = checked_result(self.label, data)
        r = self._work
        r.returncode = checked["returncode"]
        r.timed_out = checked["timed_out"]
        r.reason = checked["reason"]
        r.report = checked["report"]
        if checked["error"]:
            r.error = checked["error"]
            r.exit_status = 125
        else:
            r.exit_status = exit_status(r.returncode, r.timed_out, r.report)

    def _connection_lost(self, conn: Connection) -> None:
        """EOF before the RESULT: the remote agent's dead man's switch has fired.

        Confirm over a new connection (which also terminates the job if the
        agent could not) unless that is already under way.
        """
        why = conn.ssh_error()
        if self.job_id is None:
            raise RemoteError(self.label, f"connection lost before the job started ({why})")
        if self._oob is None:
            self.cancel_out_of_band(f"first connection lost: {why}")
        assert self._oob is not None
        self._oob.join()
        oob = self._oob_result
        assert oob is not None
        r = self._work
        r.cancelled = "out-of-band"
        r.report = oob.report
        r.notes.extend(oob.notes)
        r.reason = oob.reason
        if oob.error is not None:
            r.error = oob.error
            r.exit_status = 125
        elif self.cancelled.is_set():
            # Cancelled by us; the leader's own status died with its
            # supervisor, so there is none to pass on.
            r.notes.append("the leader's exit status is unknown (its supervisor was stopped)")
            r.exit_status = 125
        else:
            r.error = f"connection lost ({why}); the remote job was terminated"
            r.exit_status = 125


def _shallow(hello: dict[str, Any], depth: int = 3) -> dict[str, Any]:
    """A host's HELLO, kept for ``--json``: values nested deeper than ``depth``
    become None. A HELLO is flat; a hostile one nested hundreds deep (well
    within the frame cap) would make writing the document overflow the stack."""

    def keep(value: Any, level: int) -> Any:
        if isinstance(value, dict):
            if level >= depth:
                return None
            return {k: keep(v, level + 1) for k, v in value.items()}
        if isinstance(value, list):
            return None if level >= depth else [keep(v, level + 1) for v in value]
        return value

    return {k: keep(v, 1) for k, v in hello.items()}


def cancel_job(
    target: Target,
    job_id: str,
    ssh: SshOptions,
    *,
    policy: Policy | None = None,
    reason: str | None = None,
    on_connect: Callable[[Connection], object] | None = None,
) -> HostResult:
    """Out-of-band cancel: a new connection finds the job by id and terminates it.

    ``on_connect`` is given each connection made (so a caller giving up can kill it).
    """
    result = HostResult(target, job_id=job_id, cancelled="out-of-band")
    try:
        data = _cancel_over_new_connection(target, job_id, ssh, policy, reason, result, on_connect)
        if not data.get("found") and data.get("shell_job") and ssh.engine == "auto":
            # The Python engine answered, but the shell agent ran this job
            # (--remote-engine sh): ask that one.
            shell_ssh = replace(ssh, engine="sh")
            data = _cancel_over_new_connection(
                target, job_id, shell_ssh, policy, reason, result, on_connect
            )
        if not data.get("found"):
            result.notes.append(f"no live job {job_id} in the remote journal (already ended)")
            result.exit_status = 0
            return result
        notes = data.get("notes")
        if isinstance(notes, list):  # the host's words, for a terminal: escaped
            result.notes.extend(visible(str(n)[:1000]) for n in notes[:100])
        result.report = data.get("report")
        result.reason = (result.report or {}).get("reason")
        result.exit_status = 0 if (result.report or {}).get("complete") else 1
    except RemoteError as err:
        result.error = err.message
        result.exit_status = err.exit_code
    except protocol.ProtocolError as err:  # a payload that is not this protocol's
        result.error = RemoteError(target.label, str(err)).message
        result.exit_status = 125
    return result


def _cancel_over_new_connection(
    target: Target,
    job_id: str,
    ssh: SshOptions,
    policy: Policy | None,
    reason: str | None,
    result: HostResult,
    on_connect: Callable[[Connection], object] | None = None,
) -> dict[str, Any]:
    conn = Connection(target, ssh)
    if on_connect is not None:
        on_connect(conn)
    try:
        result.remote = conn.handshake()
        if not conn.send_cancel_job(job_id, reason, policy):
            raise RemoteError(target.label, conn.ssh_error())
        # The cancel's answer comes after a whole policy (its graces) at most.
        wait = HANDSHAKE_TIMEOUT + (policy_span(policy) if policy is not None else 600.0)
        got = conn.read_frame(time.monotonic() + wait)
        if got is None:
            raise RemoteError(target.label, "no answer to the cancel: " + conn.ssh_error())
        kind, payload = got
        if kind == protocol.ERROR:
            message = str(protocol.load_json(payload).get("message"))[:1000]
            raise RemoteError(target.label, visible(message))
        if kind != protocol.RESULT:
            raise RemoteError(target.label, f"unexpected frame {visible(repr(kind))}")
        data = conn.load_result(payload, str(policy) if policy is not None else None)
        report = data.get("report")
        if report is not None:
            data["report"] = checked_result(target.label, {"report": report})["report"]
        return data
    finally:
        conn.close(timeout=5.0)


def render_host_report(result: HostResult, prefix: bool) -> str:
    """The text report for one host (lines prefixed with the host for many)."""
    lines: list[str] = []
    if result.report is not None:
        try:
            lines.extend(Report.from_dict(result.report).render_text().splitlines())
        except MalformedReportError as err:
            lines.append(f"  error: the host sent a malformed report: {err}")
    lines.extend(f"  note: {n}" for n in result.notes)
    if not prefix:
        return "\n".join(lines)
    return "\n".join(f"{result.target.label}: {line}" for line in lines)


def worst(statuses: Sequence[int]) -> int:
    """The exit status of a fan-out: the largest of the hosts' (as pdsh -S)."""
    return max(statuses, default=0)
