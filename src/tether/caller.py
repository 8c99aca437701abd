"""The caller: the process that started tether, whose exit ends a job (unless asked not to).

A CI agent or a scheduler that dies must not leave its jobs behind: ``tether
run`` (local or ``--host``) watches its parent and terminates the job when the
parent exits, as on SIGHUP. ``--outlive-caller`` turns this off, and so does
starting tether with SIGHUP ignored (``nohup tether run ... &``): whoever did
that asked for a job that survives its caller, and gets one however quickly
the caller exits (no start-up race decides it).
"""

from __future__ import annotations

import os

from tether import _signals
from tether.errors import UsageError

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tether.process import ProcessHandle


def hangup_ignored() -> bool:
    """SIGHUP was ignored when tether started (nohup, ``trap '' HUP``).

    Read before tether installs any handler of its own. An ignored signal
    stays ignored across exec, so the job inherits nohup's intent too.
    """
    return _signals.getsignal(_signals.SIGHUP) == _signals.SIG_IGN


def open_caller() -> ProcessHandle | None:
    """A verified handle on the process that started tether, to notice its exit.

    Not PR_SET_PDEATHSIG: that fires when the *thread* that forked us exits,
    and a threaded caller (a CI agent) may fork from a short-lived thread.

    Returns:
        The handle (the caller owns it and closes it), or None when there is
        no caller to watch: tether was started with SIGHUP ignored (nohup:
        see :func:`hangup_ignored`), or by init (or is init).

    Raises:
        UsageError: the caller exited before the job started.
    """
    from tether.process import ProcessHandle

    if hangup_ignored():
        return None  # nohup: outlive the caller, deterministically
    ppid = os.getppid()
    if ppid <= 1:
        return None  # started by init (or as init): no caller to outlive
    handle = ProcessHandle.open(ppid)
    if handle is None or os.getppid() != ppid:
        # The parent exited between the two looks: we were already orphaned.
        if handle is not None:
            handle.close()
        raise UsageError(f"the caller (pid {ppid}) exited before the job started")
    return handle
