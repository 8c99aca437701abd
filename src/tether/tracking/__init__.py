"""How a job's members are found: one module per tracker behind :class:`Tracker`.

The job's members are the union of what the active trackers see; the
descendant walk then adds the children of every member.
"""

from tether.tracking.base import Table, Tracker, TrackerStatus

__all__ = ["Table", "Tracker", "TrackerStatus"]
