"""Fan-out: one job on many hosts, at most ``fanout`` connections at once.

The loop behind ``tether run --host/-w``, without the command line: it takes
parsed values (targets, a :class:`~tether.remote.client.RunSpec`, ssh options)
and returns each host's :class:`~tether.remote.client.HostResult`; printing
them, ``--json`` and the exit status are the CLI's (:mod:`tether.cli._remote`).

As locally, INT, TERM, HUP or QUIT sent to tether cancel every host (a second
INT makes each skip to its policy's last step), and so does the exit of the
caller unless ``outlive_caller``; a host that does not acknowledge a cancel
within ``cancel_timeout`` is cancelled again over a new connection.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections import deque
from collections.abc import Sequence

from tether.policy import format_duration
from tether.remote.client import HostResult, HostRun, OutputSink, RunSpec, SshOptions
from tether.remote.hostlist import Target

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def fan_out(
    targets: Sequence[Target],
    spec: RunSpec,
    ssh: SshOptions,
    sink: OutputSink,
    *,
    fanout: int,
    cancel_timeout: float,
    outlive_caller: bool = True,
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

    Raises:
        UsageError: the caller exited before the jobs started.
    """
    from tether.caller import open_caller

    ev_r, ev_w = os.pipe()
    wake_r, wake_w = os.pipe()
    for fd in (ev_r, ev_w, wake_r, wake_w):
        os.set_blocking(fd, False)

    def on_event() -> None:
        with contextlib.suppress(OSError):
            os.write(ev_w, b"x")

    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    # As locally: the caller's exit (a CI agent, a scheduler) cancels every
    # host, as a SIGHUP would, unless --outlive-caller.
    try:
        caller = None if outlive_caller else open_caller()
    except BaseException:
        for fd in (ev_r, ev_w, wake_r, wake_w):
            os.close(fd)
        raise
    old_handlers = {s: signal.signal(s, on_signal) for s in _FORWARDED}
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    runs = [HostRun(t, spec, ssh, sink, on_event) for t in targets]
    pending = deque(runs)
    active: list[HostRun] = []
    seen_signals = 0
    cancel_reason: str | None = None
    caller_gone: str | None = None
    try:
        while pending or active:
            while pending and len(active) < fanout and cancel_reason is None:
                run = pending.popleft()
                active.append(run)
                run.start()
            if caller is not None and cancel_reason is None and caller.has_exited():
                received.append(signal.SIGHUP)
                caller_gone = f"the caller (pid {caller.pid}) exited"
            if len(received) > seen_signals:
                new = received[seen_signals:]
                seen_signals = len(received)
                if cancel_reason is None:
                    name = signal.Signals(new[0]).name
                    cancel_reason = caller_gone or f"tether received {name} on the client"
                    for run in pending:
                        run.result.error = "cancelled before it started"
                    pending.clear()
                    new = new[1:]
                    for run in active:
                        run.cancel(cancel_reason)
                if any(s == signal.SIGINT for s in new):
                    # A second INT: every host skips to the policy's last step.
                    for run in active:
                        run.cancel(cancel_reason)
            if cancel_reason is not None:
                for run in active:
                    if run.ack_overdue(cancel_timeout):
                        run.cancel_out_of_band(
                            f"no acknowledgement within {format_duration(cancel_timeout)}"
                        )
            active = [r for r in active if not r.done.is_set()]
            if not pending and not active:
                break
            wait_ms = 100 if cancel_reason is not None else None
            poller = select.poll()
            poller.register(ev_r, select.POLLIN)
            poller.register(wake_r, select.POLLIN)
            if caller is not None and caller.fileno >= 0 and cancel_reason is None:
                poller.register(caller.fileno, select.POLLIN)
            poller.poll(wait_ms)
            for fd in (ev_r, wake_r):
                with contextlib.suppress(OSError):
                    os.read(fd, 4096)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        for fd in (ev_r, ev_w, wake_r, wake_w):
            os.close(fd)
        if caller is not None:
            caller.close()
    return [r.result for r in runs]
