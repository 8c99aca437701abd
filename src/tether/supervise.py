"""The one loop that supervises a running job.

``tether run``, the remote agent and the library's ``run()`` differ only in
what they watch besides the job (a caller, a connection) and what they do
with the result; the rules live here once:

- the **deadline** (``JobSpec.timeout``) starts the policy with reason
  ``timeout``;
- a **cancel signal** (INT, TERM, HUP, QUIT by default) starts it; every
  later one (or a further cancel from a peer) moves the policy on to its next
  step at once (CI runners send INT, then TERM, then KILL);
- a **passed-on signal** (USR1, USR2, WINCH, and HUP as PID 1: reload,
  reopen logs, resize) goes to the leader through its verified handle while
  it runs, as tini and dumb-init do (see :func:`signal_roles`);
- the **caller's death** starts it as a SIGHUP would;
- when the leader exits by itself, **leftovers** are terminated, or waited
  for (``leftovers="wait"``: until the tree empties, the deadline, or a
  signal);
- the termination runs in a worker thread, so this loop keeps serving the
  caller's extra I/O (the agent's channel: output, stdin, CANCEL frames)
  while the engine waits out a grace.

Signal handlers are installed by :func:`forwarded_signals`, a context manager
that restores every handler and the wakeup fd it changed, however it exits
(trio's ``_signal_handler`` is the model).
"""

from __future__ import annotations

import os
import select
import time

from tether import _signals
from tether._records import dataclass
from tether.policy import MAX_POLL_MS
from tether.report import Report
from tether.spec import Leftovers
from tether.terminate import Progress

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Mapping
    from typing import Protocol

    from tether.job import Job
    from tether.process import ProcessHandle
else:
    Protocol = object  # for mypy only: nothing subclasses or isinstance-checks Channel

#: Signals that cancel a supervised job, as ``timeout`` forwards them.
FORWARDED = (_signals.SIGINT, _signals.SIGTERM, _signals.SIGHUP, _signals.SIGQUIT)
#: Signals passed on to the leader by default: programs reload on HUP (as PID
#: 1, where nothing hangs up), reopen logs on USR1/USR2, redraw on WINCH. Left
#: at their default action, USR1/USR2 would kill tether and HUP a container.
PASSED_ON = (_signals.SIGUSR1, _signals.SIGUSR2, _signals.SIGWINCH)
#: Signals a ``--foreground`` job gets from the terminal itself (it shares the
#: terminal's process group): tether neither cancels on them nor passes them on.
FROM_TERMINAL = (_signals.SIGINT, _signals.SIGQUIT)

EXIT_LEFTOVERS = 123
EXIT_TIMEOUT = 124
EXIT_FAILED = 125


@dataclass(frozen=True)
class SignalRoles:
    """What a supervisor does with each signal it handles.

    Attributes:
        cancel: start the policy (a further one moves it on a step).
        forward: passed on to the leader while it runs.
        absorb: caught and dropped (a handler, not SIG_IGN, so the job does
            not inherit the disposition): ``--foreground``'s INT and QUIT,
            which the terminal sends to the job itself.
    """

    cancel: tuple[int, ...]
    forward: tuple[int, ...] = ()
    absorb: tuple[int, ...] = ()


def signal_roles(
    *,
    forward: frozenset[_signals.Signal] = frozenset(),
    cancel_on: frozenset[_signals.Signal] | None = None,
    foreground: bool = False,
    pid1: bool | None = None,
    hup_ignored: bool = False,
) -> SignalRoles:
    """The roles of signals for a job (``JobSpec.forward``/``cancel_on``/``foreground``).

    Defaults: INT, TERM, QUIT and HUP cancel; USR1, USR2 and WINCH are passed
    on. As PID 1 (``pid1``: default ``os.getpid() == 1``, a container's
    entrypoint) HUP is passed on too: the tini/dumb-init contract (forward,
    reap, exit with the child's status). A signal named in ``forward`` is
    passed on; ``cancel_on`` replaces the cancelling set, and a default one it
    leaves out is passed on. With ``foreground``, INT and QUIT (unless named)
    are absorbed. With ``hup_ignored`` (started under nohup) HUP, unless
    named, keeps its SIG_IGN, which the job inherits.
    """
    if pid1 is None:
        pid1 = os.getpid() == 1
    named = set(forward) | set(cancel_on or ())
    untouched = {_signals.SIGHUP} - named if hup_ignored else set()
    absorb = set(FROM_TERMINAL) - named if foreground else set()
    if cancel_on is None:
        cancel = set(FORWARDED) - {_signals.SIGHUP} if pid1 else set(FORWARDED)
        cancel -= set(forward) | absorb
    else:
        cancel = set(cancel_on)
    passed = (set(PASSED_ON) | set(FORWARDED) | set(forward)) - cancel - absorb
    return SignalRoles(
        cancel=tuple(sorted(cancel - untouched)),
        forward=tuple(sorted(passed - untouched)),
        absorb=tuple(sorted(absorb)),
    )


class SignalInbox:
    """Signals received while installed, and a pipe that wakes a poll() on each."""

    def __init__(self, fileno: int) -> None:
        #: Cancel signals, in order (they start and advance the policy).
        self.received: list[int] = []
        #: Signals to pass on to the leader, not yet passed.
        self.to_forward: list[int] = []
        #: Read end of the wakeup pipe: readable after every signal.
        self.fileno = fileno

    def _record(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    def _pass_on(self, signum: int, _frame: object) -> None:
        self.to_forward.append(signum)

    def drain(self) -> None:
        try:
            os.read(self.fileno, 4096)
        except (BlockingIOError, InterruptedError):
            pass


def _wake_only(_signum: int, _frame: object) -> None:
    """SIGCHLD: only wakes the loop (through the wakeup fd) to reap orphans.
    An absorbed signal: nothing to do."""


def forwarded_signals(
    signals: tuple[int, ...] = FORWARDED,
    *,
    wake_on_child: bool = False,
    roles: SignalRoles | None = None,
) -> _SignalsInstalled:
    """Record ``signals`` in a :class:`SignalInbox` while the block runs.

    With ``roles``, its cancel signals are recorded instead, its forward
    signals queued for the leader and its absorbed ones dropped. Every
    handler and the wakeup fd are restored on the way out, by an exception
    too. Main thread only (``signal.signal`` requires it).
    """
    return _SignalsInstalled(roles.cancel if roles is not None else signals, wake_on_child, roles)


class _SignalsInstalled:
    """:func:`forwarded_signals`' context manager (a class: contextlib, with
    collections and functools, is ~4 ms of a start)."""

    def __init__(
        self, signals: tuple[int, ...], wake_on_child: bool, roles: SignalRoles | None
    ) -> None:
        self._signals = signals
        self._wake_on_child = wake_on_child
        self._roles = roles
        self._old: dict[int, _signals.Handler] = {}
        self._old_wakeup: int | None = None
        self._fds: tuple[int, int] | None = None

    def __enter__(self) -> SignalInbox:
        roles = self._roles
        rfd, wfd = self._fds = os.pipe()
        inbox = SignalInbox(rfd)
        old = self._old
        try:
            for fd in (rfd, wfd):
                os.set_blocking(fd, False)
            for s in self._signals:
                old[s] = _signals.signal(s, inbox._record)
            for s in roles.forward if roles is not None else ():
                old[s] = _signals.signal(s, inbox._pass_on)
            for s in roles.absorb if roles is not None else ():
                old[s] = _signals.signal(s, _wake_only)
            if self._wake_on_child:
                old[_signals.SIGCHLD] = _signals.signal(_signals.SIGCHLD, _wake_only)
            self._old_wakeup = _signals.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        except BaseException:
            self._restore()
            raise
        return inbox

    def __exit__(self, *_exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        try:
            if self._old_wakeup is not None:
                _signals.set_wakeup_fd(self._old_wakeup)
            for s, handler in self._old.items():
                _signals.signal(s, handler)
        finally:
            if self._fds is not None:
                os.close(self._fds[0])
                os.close(self._fds[1])
                self._fds = None


def signal_label(signum: int) -> str:
    return f"SIG{_signals.Signal(signum).name.removeprefix('SIG')}"


class Channel(Protocol):
    """I/O a supervisor serves besides the job (the remote agent's connection).

    supervise() polls its fds with the job's, during the termination too,
    and asks it whether the peer wants the job cancelled.
    """

    def wanted(self) -> Mapping[int, int]:
        """fd -> poll events to wait for now."""
        ...

    def ready(self, fd: int, events: int) -> None:
        """One of :meth:`wanted`'s fds is ready."""
        ...

    def cancel_request(self) -> tuple[str, int] | None:
        """(reason, how many cancels the peer has sent), if it asked for one."""
        ...

    def linger(self, complete: bool) -> float:
        """After the termination: how long to go on serving (e.g. draining the
        job's output pipes); 0 to return at once."""
        ...

    def idle(self) -> bool:
        """Nothing is left to serve (the output pipes reached EOF)."""
        ...


@dataclass(frozen=True)
class RunOutcome:
    """How a supervised job ended.

    Attributes:
        report: the final termination's report.
        returncode: the leader's status (-N: killed by signal N), None if it
            could not be collected.
        timed_out: the deadline started the termination.
        reason: why the termination started.
        signals: signals the supervisor received, in order.
        error: the termination itself failed (the report is then empty).
        leftovers: members alive when the leader exited by itself (counted
            only for ``JobSpec.fail_on_leftovers``, else 0).
        forwarded: signals passed on to the leader, in order.
    """

    report: Report | None
    returncode: int | None
    timed_out: bool
    reason: str
    signals: tuple[int, ...] = ()
    error: BaseException | None = None
    leftovers: int = 0
    forwarded: tuple[int, ...] = ()

    @property
    def exit_status(self) -> int:
        """``tether run``'s status, as coreutils ``timeout``."""
        return self.status()

    def status(self, *, preserve_status: bool = False) -> int:
        """``tether run``'s status; ``preserve_status`` as ``timeout --preserve-status``."""
        return exit_status(
            self.returncode,
            self.timed_out,
            complete=self.report is not None and self.report.complete and self.error is None,
            leftovers=self.leftovers > 0,
            preserve_status=preserve_status,
        )


def exit_status(
    returncode: int | None,
    timed_out: bool,
    *,
    complete: bool,
    leftovers: bool = False,
    preserve_status: bool = False,
) -> int:
    """125 members survived (or no status); 124 timed out (unless
    ``preserve_status``: the leader's status then); 123 members were left when
    the leader exited (``fail_on_leftovers``); 128+N killed by N; else rc."""
    if not complete:
        return EXIT_FAILED
    if timed_out and not preserve_status:
        return EXIT_TIMEOUT
    if leftovers and not timed_out:
        return EXIT_LEFTOVERS
    if returncode is None:
        return EXIT_FAILED
    return 128 - returncode if returncode < 0 else returncode


#: Why a job whose leader exited by itself is terminated (its leftovers, if any).
_AFTER_EXIT = "leftovers after the leader exited"


class _Termination:
    """The engine's run on a worker thread; its end wakes the loop through a pipe.

    ``inline``: the tree is proven empty already, so the run finds nothing to
    wait for and returns at once: it runs here, without a thread (whose start
    and hand-over of the GIL cost more than the run itself).
    """

    def __init__(
        self,
        job: Job,
        reason: str,
        advances: Callable[[], int],
        on_progress: Callable[[Progress], None] | None,
        *,
        inline: bool = False,
    ) -> None:
        self.reason = reason
        self.report: Report | None = None
        self.error: BaseException | None = None
        self.done_r, self._done_w = os.pipe()

        def work() -> None:
            try:
                self.report = job.cancel(reason, advances=advances, on_progress=on_progress)
            except BaseException as err:
                self.error = err
            finally:
                os.write(self._done_w, b"x")

        self._thread: threading.Thread | None = None
        if inline:
            work()
        else:
            # Imported here: a job that ends by itself needs no thread, and
            # threading is ~1 ms of a start.
            import threading

            self._thread = threading.Thread(target=work, name="tether-terminate", daemon=True)
            self._thread.start()

    @property
    def finished(self) -> bool:
        return self.report is not None or self.error is not None

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
        os.close(self.done_r)
        os.close(self._done_w)


def supervise(
    job: Job,
    *,
    inbox: SignalInbox,
    timeout: float | None = None,
    leftovers: Leftovers = "terminate",
    caller: ProcessHandle | None = None,
    channel: Channel | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_forward: Callable[[int, bool], None] | None = None,
    who: str = "tether",
    clock: Callable[[], float] = time.monotonic,
) -> RunOutcome:
    """Watch ``job`` until it ends or must be cancelled; terminate what is left.

    Always returns with the job terminated (its report kept by the job), even
    when the termination failed (``RunOutcome.error``). Waits are event-driven:
    the leader's pidfd, the signal pipe, the caller's pidfd, the channel's fds.
    ``who`` names the supervisor in reasons ("tether received SIGTERM").
    Signals in ``inbox.to_forward`` are passed on to the leader while it runs
    (``on_forward(signal, delivered)`` after each); once the termination has
    started, or the leader is gone, they are dropped.
    """
    deadline = None if timeout is None else clock() + timeout
    timed_out = False
    termination: _Termination | None = None
    leader_exited = False
    left_behind = 0
    forwarded: list[int] = []

    def pass_on() -> None:
        while inbox.to_forward:
            sig = inbox.to_forward.pop(0)
            # Through the leader's verified handle (Job.send_signal): once it
            # has exited, nothing is sent — its pid may be someone else's.
            delivered = termination is None and job.returncode is None
            if delivered:
                job.send_signal(sig)
                forwarded.append(sig)
            if on_forward is not None:
                on_forward(sig, delivered)

    linger_until: float | None = None
    signals_at_start = cancels_at_start = 0

    def peer_cancels() -> int:
        request = channel.cancel_request() if channel is not None else None
        return request[1] if request is not None else 0

    def advances() -> int:
        # Every further cancel moves the policy on one step at once — a CI
        # runner's TERM after its INT, a repeated Ctrl-C, a peer's second
        # CANCEL — so the runner's own KILL never finds the job still in a
        # grace it has already given up on.
        further_signals = len(inbox.received) - signals_at_start
        further_cancels = peer_cancels() - max(cancels_at_start, 1)
        return max(0, further_signals) + max(0, further_cancels)

    def why_cancel() -> str | None:
        if caller is not None and caller.has_exited():
            inbox.received.append(_signals.SIGHUP)  # as the caller's hangup would
            return f"the caller (pid {caller.pid}) exited"
        if inbox.received:
            return f"{who} received {signal_label(inbox.received[0])}"
        request = channel.cancel_request() if channel is not None else None
        return request[0] if request is not None else None

    while True:
        if termination is None:
            why = why_cancel()
            if why is None and leader_exited and leftovers == "wait":
                # The leader is gone: wait for the rest to exit by itself (the
                # wait wakes on a signal: the job's wake fd is the inbox's).
                emptied = job.wait_tree(None if deadline is None else max(0.0, deadline - clock()))
                pass_on()  # nothing to pass on to: the leader is gone
                if inbox.received:
                    why = f"{who} received a signal while waiting for leftovers"
                elif deadline is not None and clock() >= deadline and job.members():
                    timed_out, why = True, "timeout"
                elif emptied or (deadline is not None and clock() >= deadline):
                    why = _AFTER_EXIT
                else:
                    # Woken by a SIGCHLD (an adopted orphan exited) or a
                    # passed-on signal: the leftovers are still waited for.
                    continue
            elif why is None and leader_exited:
                why = _AFTER_EXIT
            elif why is None and deadline is not None and clock() >= deadline:
                timed_out, why = True, "timeout"
            if why is not None:
                pass_on()  # what came before the cancel still reaches the leader
                signals_at_start = len(inbox.received)
                cancels_at_start = peer_cancels()
                # The usual end: the leader exited and left nothing behind.
                inline = why == _AFTER_EXIT and job.tree_proven_empty()
                termination = _Termination(job, why, advances, on_progress, inline=inline)
        elif termination.finished:
            if linger_until is None:
                complete = termination.report is not None and termination.report.complete
                linger_until = clock() + (channel.linger(complete) if channel is not None else 0)
            if channel is None or channel.idle() or clock() >= linger_until:
                break

        # -- wait for the next event --------------------------------------
        fds: dict[int, int] = {}
        waits: list[float] = []
        if termination is None:
            fds[inbox.fileno] = select.POLLIN
            if not leader_exited:
                if job.leader_fileno >= 0:
                    fds[job.leader_fileno] = select.POLLIN
                else:
                    waits.append(0.05)  # no pidfd (psutil backend): look again soon
            if caller is not None and caller.fileno >= 0:
                fds[caller.fileno] = select.POLLIN
            if deadline is not None:
                waits.append(deadline - clock())
        elif linger_until is None:
            # Until the top of the loop has seen the termination finish: had
            # it finished since that check, its byte ends this poll at once
            # (a poll on nothing, without a timeout, would never return).
            # The signal pipe is the engine's now (the job's wake fd):
            # draining it here would hide a second INT from its waits.
            fds[termination.done_r] = select.POLLIN
        if linger_until is not None:
            waits.append(linger_until - clock())
        if termination is None:
            # Before the first wait on a running job, its record (see
            # Job.record_running); a leader seen exited first may spare it.
            job.record_running(unless_exited=not leader_exited)
        channel_fds = channel.wanted() if channel is not None else {}
        poller = select.poll()
        for fd, events in {**fds, **channel_fds}.items():
            poller.register(fd, events)
        # Clamped to poll's int milliseconds: a longer wait loops (MAX_POLL_MS).
        ready = poller.poll(
            None if not waits else min(MAX_POLL_MS, max(0, int(min(waits) * 1000) + 1))
        )
        if termination is None:
            # Drained *before* looking at what woke us: a signal landing after
            # the checks above leaves its byte for the next poll.
            inbox.drain()
            pass_on()
            if not leader_exited and job.leader_status() is not None:
                leader_exited = True
                if job.spec.fail_on_leftovers:
                    # Counted now, before they are terminated (or waited for).
                    left_behind = sum(1 for m in job.members() if m.pid != job.pid)
            # A SIGCHLD: an orphan the subreaper adopted has exited. Reap it
            # now, or zombies pile up for the job's whole life (tether as a
            # container's PID 1 must reap like an init).
            job.reap_adopted()
        if channel is not None:
            for fd, events in ready:
                if fd in channel_fds:
                    channel.ready(fd, events)

    termination.join()
    return RunOutcome(
        report=termination.report,
        returncode=job.returncode,
        timed_out=timed_out,
        reason=termination.reason,
        signals=tuple(inbox.received),
        error=termination.error,
        leftovers=left_behind,
        forwarded=tuple(forwarded),
    )
