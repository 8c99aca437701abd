"""Fan-out: one job on many hosts, at most ``fanout`` connections at once.

The loop behind ``tether run --host/-w``, without the command line: it takes
parsed values (targets, a :class:`~tether.spec.JobSpec`, ssh options)
and returns each host's :class:`~tether.remote.client.HostResult`; printing
them, ``--json`` and the exit status are the CLI's (:mod:`tether.cli._remote`).

As locally, INT, TERM, HUP or QUIT sent to tether cancel every host (a second
INT makes each skip to its policy's last step), and so does the exit of the
caller unless ``outlive_caller``; a host that does not acknowledge a cancel
within ``cancel_timeout`` is cancelled again over a new connection.

A job's ``--timeout`` is enforced here too, should its host stop reporting:
see :meth:`~tether.remote.client.HostRun.local_deadlines` (cancelled once the
timeout, the policy's graces and a margin passed; given up on, its ssh
killed, after as much again). A cancel before a host's job id is known
closes that connection (at once until the agent's HELLO; after the ack
timeout once the agent is up), so INT and TERM are honoured in every phase.
"""

from __future__ import annotations

import os
import select
import time
from collections import deque
from collections.abc import Callable, Sequence

from tether._signals import SIGHUP
from tether.policy import format_duration
from tether.remote.client import HostResult, HostRun, OutputSink, SshOptions
from tether.remote.hostlist import Target
from tether.supervise import SignalInbox, forwarded_signals, signal_label

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tether.process import ProcessHandle
    from tether.spec import JobSpec


def fan_out(
    targets: Sequence[Target],
    spec: JobSpec,
    ssh: SshOptions,
    sink: OutputSink,
    *,
    fanout: int,
    cancel_timeout: float,
    outlive_caller: bool = True,
    stdin_fd: int | None = None,
    on_done: Callable[[HostResult], None] | None = None,
) -> list[HostResult]:
    """Run ``spec`` on every target, ``fanout`` at a time; each host's result, in order.

    Args:
        targets: the hosts, in the order their results are returned.
        spec: what to run on each.
        ssh: how to reach them.
        sink: where their output goes.
        fanout: hosts run at once; the others wait for a free slot (as pdsh -f).
        cancel_timeout: seconds a host may take to acknowledge a cancel before
            it is cancelled over a new connection.
        outlive_caller: keep running when tether's caller exits (by default
            its exit cancels every host, as a SIGHUP would).
        stdin_fd: forward this fd to the (single) host's job as its stdin.
        on_done: called with each host's result as that host ends (or is
            cancelled before it started), on the calling thread.

    Raises:
        UsageError: the caller exited before the jobs started.
    """
    from tether.caller import open_caller

    # As locally: the caller's exit (a CI agent, a scheduler) cancels every
    # host, as a SIGHUP would, unless --outlive-caller. (Nested try blocks,
    # not contextlib's ExitStack: contextlib is ~1 ms of a remote run's start.)
    caller = None if outlive_caller else open_caller()
    try:
        ev_r, ev_w = os.pipe()
        try:
            for fd in (ev_r, ev_w):
                os.set_blocking(fd, False)

            def on_event() -> None:
                try:
                    os.write(ev_w, b"x")
                except OSError:
                    pass

            with forwarded_signals() as inbox:
                runs = [HostRun(t, spec, ssh, sink, on_event, stdin_fd=stdin_fd) for t in targets]
                _drive(
                    runs,
                    inbox,
                    caller,
                    ev_r,
                    fanout=fanout,
                    cancel_timeout=cancel_timeout,
                    on_done=on_done or (lambda _result: None),
                )
        finally:
            os.close(ev_w)
            os.close(ev_r)
    finally:
        if caller is not None:
            caller.close()
    return [r.result for r in runs]


def _drive(
    runs: list[HostRun],
    inbox: SignalInbox,
    caller: ProcessHandle | None,
    ev_r: int,
    *,
    fanout: int,
    cancel_timeout: float,
    on_done: Callable[[HostResult], None],
) -> None:
    """Start hosts as slots free up; cancel them all on a signal or the caller's exit."""
    pending = deque(runs)
    active: list[HostRun] = []
    seen_signals = 0
    cancel_reason: str | None = None
    while pending or active:
        while pending and len(active) < fanout and cancel_reason is None:
            run = pending.popleft()
            active.append(run)
            run.start()
        caller_gone: str | None = None
        if caller is not None and cancel_reason is None and caller.has_exited():
            inbox.received.append(SIGHUP)
            caller_gone = f"the caller (pid {caller.pid}) exited"
        if len(inbox.received) > seen_signals:
            new = inbox.received[seen_signals:]
            seen_signals = len(inbox.received)
            if cancel_reason is None:
                cancel_reason = (
                    caller_gone or f"tether received {signal_label(new[0])} on the client"
                )
                for run in pending:
                    run.result.error = "cancelled before it started"
                    on_done(run.result)
                pending.clear()
                new = new[1:]
                for run in active:
                    run.cancel(cancel_reason)
            if new:
                # Every further signal: every host moves on to its next step.
                for run in active:
                    run.cancel(cancel_reason)
        now = time.monotonic()
        wake: float | None = None
        for run in active:
            deadlines = run.local_deadlines()
            if deadlines is None:
                continue
            cancel_at, give_up_at = deadlines
            if now >= give_up_at:
                waited = give_up_at - (run.job_started_at or now)
                run.give_up(
                    f"no report {format_duration(waited)} after the job started (--timeout "
                    f"{format_duration(run.spec.timeout or 0)}, the policy's graces and "
                    "margins); gave up on the host: its ssh was killed, the remote dead man's "
                    "switch ends the job"
                )
            elif now >= cancel_at and not run.cancelled.is_set():
                run.cancel(
                    f"no report within --timeout {format_duration(run.spec.timeout or 0)}, "
                    "the policy's graces and a margin (enforced by the client)"
                )
            wake = min(wake or give_up_at, cancel_at if now < cancel_at else give_up_at)
        # Any run with a cancel outstanding (a signal, or its local timeout).
        for run in active:
            if run.ack_overdue(cancel_timeout):
                run.cancel_out_of_band(
                    f"no acknowledgement within {format_duration(cancel_timeout)}"
                )
        # One reading of done per run: a host ending between two readings
        # would be dropped without its on_done.
        ended = [r for r in active if r.done.is_set()]
        for run in ended:
            on_done(run.result)
        active = [r for r in active if r not in ended]
        if not pending and not active:
            break
        poller = select.poll()
        poller.register(ev_r, select.POLLIN)
        poller.register(inbox.fileno, select.POLLIN)
        if caller is not None and caller.fileno >= 0 and cancel_reason is None:
            poller.register(caller.fileno, select.POLLIN)
        if cancel_reason is not None or any(r.cancel_sent_at is not None for r in active):
            wake = min(wake or now + 0.1, now + 0.1)
        poller.poll(None if wake is None else max(0, min(int((wake - now) * 1000) + 1, 2**31 - 1)))
        inbox.drain()
        try:
            os.read(ev_r, 4096)
        except OSError:
            pass
