"""The tracker Protocol and the record of which trackers a job used."""

from __future__ import annotations

from tether._records import dataclass
from tether.errors import UsageError
from tether.process import ProcessInfo

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Protocol
else:
    Protocol = object  # for mypy only: nothing subclasses or isinstance-checks these

Table = dict[int, ProcessInfo]

#: Tracker names, strongest first.
TRACKER_NAMES = ("cgroup", "subreaper", "session", "cookie", "walk")


def parse_tracker_names(spec: str | Sequence[str] | frozenset[str] | None) -> frozenset[str]:
    """``"auto"``/None -> every tracker; ``"cgroup,session"`` or a list -> those."""
    if spec is None or spec == "auto":
        return frozenset(TRACKER_NAMES)
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in TRACKER_NAMES]
    if unknown or not names:
        given = ", ".join(unknown) or "(none)"
        raise UsageError(f"unknown tracker {given}; choose from {', '.join(TRACKER_NAMES)}")
    return frozenset(names)


class Tracker(Protocol):
    """Finds members of one job from a process-table snapshot."""

    name: str

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        """Pids in ``table`` this tracker says belong to the job.

        ``members`` holds the pids already found by stronger trackers, so a
        costly tracker (the cookie reads every environment) can skip them.
        """
        ...


@dataclass(frozen=True)
class TrackerStatus:
    """Whether a tracker was used for a job, and why (not)."""

    name: str
    used: bool
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {'used' if self.used else 'not used'} ({self.reason})"
