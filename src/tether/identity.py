"""A process, not just a number: (pid, start time).

A pid alone names whichever process holds it now; the pair names one process
for its whole life, because a reused pid comes with a later start time. Every
signal tether sends goes to an identity checked right before it (or to a
pidfd opened while the identity was proven).
"""

from __future__ import annotations

from tether._records import NamedTuple


class Identity(NamedTuple):
    """(pid, start time) of one process.

    ``starttime`` is in clock ticks since boot on Linux (field 22 of
    ``/proc/PID/stat``), or the creation time in nanoseconds where psutil
    supplies the process table. A NamedTuple is a tuple: it compares, hashes,
    sorts and serialises to JSON exactly like ``(pid, starttime)``.
    """

    pid: int
    starttime: int
