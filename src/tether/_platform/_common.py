"""Types every backend builds and :mod:`tether.process` re-exports.

They live here, not in :mod:`tether.process`, so a backend can construct them
without importing the module that imports the backend (psutil's ``_common``
plays the same part for its ``_ps<platform>`` modules).
"""

from __future__ import annotations

from tether._records import dataclass
from tether.identity import Identity

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar


class Delivery:
    """What happened to a signal sent through a handle: one of three values,
    compared with ``is``. Not an Enum: enum (with functools, collections and
    types) is ~2 ms of every start of `tether run` (issue 15)."""

    __slots__ = ("name", "value")

    DELIVERED: ClassVar[Delivery]
    GONE: ClassVar[Delivery]  # already exited: progress, not failure
    DENIED: ClassVar[Delivery]  # EPERM: e.g. a setuid child of a non-root tether

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"<Delivery.{self.name}: {self.value!r}>"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # The one instance again (as an Enum member): copy, deepcopy and
        # pickle keep `is Delivery.GONE` true.
        return _delivery, (self.name,)


def _delivery(name: str) -> Delivery:
    value = getattr(Delivery, name)
    assert isinstance(value, Delivery)
    return value


Delivery.DELIVERED = Delivery("DELIVERED", "delivered")
Delivery.GONE = Delivery("GONE", "gone")
Delivery.DENIED = Delivery("DENIED", "denied")


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
