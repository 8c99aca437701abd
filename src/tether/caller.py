"""The caller: the process that started tether, whose exit ends a job (unless asked not to).

A CI agent or a scheduler that dies must not leave its jobs behind: ``tether
run`` (local or ``--host``) watches its parent and terminates the job when the
parent exits, as on SIGHUP. ``--outlive-caller`` turns this off.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tether.errors import UsageError

if TYPE_CHECKING:
    from tether.process import ProcessHandle


def open_caller() -> ProcessHandle | None:
    """A verified handle on the process that started tether, to notice its exit.

    Not PR_SET_PDEATHSIG: that fires when the *thread* that forked us exits,
    and a threaded caller (a CI agent) may fork from a short-lived thread.

    Returns:
        The handle (the caller owns it and closes it), or None when tether was
        started by init (or is init): there is no caller to outlive.

    Raises:
        UsageError: the caller exited before the job started.
    """
    from tether.process import ProcessHandle

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
