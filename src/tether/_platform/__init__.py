"""The process backend, chosen once at import.

Two backends implement the same module-level interface (:class:`Backend`);
this package picks one the first time it is imported and re-exports its
functions, so the rest of tether never branches on the platform (psutil's
``_psplatform`` selection and trio's ``_subprocess_platform`` are the model):

- :mod:`tether._platform.linux`: the process table from /proc through
  per-process dirfds, pidfd handles, cgroup v2, the child subreaper. Chosen
  on Linux.
- :mod:`tether._platform.psutil`: psutil's process table and (pid, create
  time) handles; no cgroups, subreaper or environments. Chosen elsewhere
  (macOS, BSD).

``TETHER_PROCESS_BACKEND=psutil`` (or ``linux``) in the environment forces a
backend, for tests: the Linux machine then runs the code path a Mac takes.
It is read once, here, at import; child processes tether starts with Python
(the watchdog) inherit it with the rest of the environment, so a job's
record is always written and read by the same backend. Any other value is
an error.

What a backend can do is asked through its capability flags
(:data:`HAS_CGROUPS`, :data:`HAS_SUBREAPER`, :data:`HAS_ENVIRON`) or its
:data:`NAME`, never through ``sys.platform``. Code using a Linux-only
feature behind a flag (cgroups, the subreaper) imports the seam it needs
from :mod:`tether._platform.linux` directly; everything about processes goes
through :mod:`tether.process`.
"""

from __future__ import annotations

import os
import sys

from tether._platform._common import Delivery, ProcessInfo
from tether.errors import UsageError

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Protocol
else:
    Protocol = object  # for mypy only: nothing subclasses or isinstance-checks these

#: Environment variable that forces a backend: ``linux`` or ``psutil``.
BACKEND_VAR = "TETHER_PROCESS_BACKEND"
BACKENDS = ("linux", "psutil")


class Backend(Protocol):
    """The module-level interface of a backend (checked by mypy on both).

    Start times are opaque integers, comparable only within one backend:
    clock ticks since boot on Linux, create time in ns under psutil. A handle
    is (pid, start time, fd); fd is a pidfd, or -1 where there are none.
    """

    NAME: str
    HAS_CGROUPS: bool  # job cgroups can be tried (a probe still decides)
    HAS_SUBREAPER: bool  # PR_SET_CHILD_SUBREAPER exists
    HAS_ENVIRON: bool  # other processes' environments can be read (the cookie tracker)
    HAS_PIDFD: bool  # handles are pidfds: signals cannot reach a reused pid, exits are events

    def read_process(self, pid: int, fields: Collection[str]) -> ProcessInfo | None: ...
    def snapshot(self, fields: Collection[str]) -> dict[int, ProcessInfo]: ...
    def read_environ(self, pid: int, starttime: int) -> bytes | None: ...
    def is_pid_namespace_init(self, pid: int, starttime: int) -> bool: ...
    def own_starttime(self) -> int: ...
    def starttime_to_epoch(self, starttime: int) -> float: ...
    def boot_id(self) -> str: ...
    def open_process(self, pid: int, starttime: int | None) -> tuple[int, int] | None: ...
    def send_signal(self, pid: int, starttime: int, fd: int, sig: int) -> Delivery: ...
    def has_exited(self, pid: int, starttime: int, fd: int) -> bool: ...
    def exit_event_fd(self, fd: int) -> int: ...


def _wanted() -> str:
    forced = os.environ.get(BACKEND_VAR, "").strip().lower()
    if forced and forced not in BACKENDS:
        raise UsageError(f"{BACKEND_VAR}={forced!r}: choose one of {', '.join(BACKENDS)}")
    if forced:
        return forced
    return "linux" if sys.platform.startswith("linux") else "psutil"


def _load() -> Backend:
    if _wanted() == "linux":
        if not sys.platform.startswith("linux"):
            raise UsageError(f"{BACKEND_VAR}=linux: this is {sys.platform}, not Linux")
        from tether._platform import linux

        return linux
    try:
        from tether._platform import psutil
    except ImportError as err:
        raise UsageError(f"the psutil process backend needs the psutil package: {err}") from None
    return psutil


_impl = _load()

NAME = _impl.NAME
HAS_CGROUPS = _impl.HAS_CGROUPS
HAS_SUBREAPER = _impl.HAS_SUBREAPER
HAS_ENVIRON = _impl.HAS_ENVIRON
HAS_PIDFD = _impl.HAS_PIDFD

read_process = _impl.read_process
snapshot = _impl.snapshot
read_environ = _impl.read_environ
is_pid_namespace_init = _impl.is_pid_namespace_init
own_starttime = _impl.own_starttime
starttime_to_epoch = _impl.starttime_to_epoch
boot_id = _impl.boot_id
open_process = _impl.open_process
send_signal = _impl.send_signal
has_exited = _impl.has_exited
exit_event_fd = _impl.exit_event_fd

__all__ = [
    "BACKENDS",
    "BACKEND_VAR",
    "HAS_CGROUPS",
    "HAS_ENVIRON",
    "HAS_PIDFD",
    "HAS_SUBREAPER",
    "NAME",
    "Backend",
    "boot_id",
    "exit_event_fd",
    "has_exited",
    "is_pid_namespace_init",
    "open_process",
    "own_starttime",
    "read_environ",
    "read_process",
    "send_signal",
    "snapshot",
    "starttime_to_epoch",
]
