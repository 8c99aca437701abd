"""Types every backend builds and :mod:`tether.process` re-exports.

They live here, not in :mod:`tether.process`, so a backend can construct them
without importing the module that imports the backend (psutil's ``_common``
plays the same part for its ``_ps<platform>`` modules).
"""

from __future__ import annotations

from enum import Enum

from tether._records import dataclass
from tether.identity import Identity


class Delivery(Enum):
    """What happened to a signal sent through a handle."""

    DELIVERED = "delivered"
    GONE = "gone"  # already exited: progress, not failure
    DENIED = "denied"  # EPERM: e.g. a setuid child of a non-root tether


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One row of a process table. Optional fields are None unless asked for."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    starttime: int  # clock ticks since boot (Linux) or create time in ns (psutil)
    state: str
    comm: str
    kernel_thread: bool = False
    uids: tuple[int, int, int, int] | None = None  # real, effective, saved, filesystem
    cmdline: tuple[str, ...] | None = None
    cgroup: str | None = None
    wchan: str | None = None

    @property
    def identity(self) -> Identity:
        return Identity(self.pid, self.starttime)

    def is_alive_as(self, starttime: int) -> bool:
        """This row is the process that started at ``starttime``, not yet
        exited (a zombie's pid still names it, but it holds no children)."""
        return self.starttime == starttime and self.state != "Z"

    def describe(self) -> str:
        if self.cmdline:
            return " ".join(self.cmdline)
        return f"[{self.comm}]"


#: Optional fields a snapshot can fill in.
FIELDS = frozenset({"uids", "cmdline", "cgroup", "wchan"})
