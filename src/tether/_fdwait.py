"""Wait for one descriptor, at any number.

``select.select`` cannot take a descriptor numbered FD_SETSIZE (1024) or
above (ValueError "filedescriptor out of range"), and tether raises its own
RLIMIT_NOFILE: a fan-out holds three pipes per ssh and a cancel a pidfd per
member, so such numbers are real. ``poll`` takes any. Built-in modules only:
the remote agent imports this on every host job (no selectors, no time).
"""

from __future__ import annotations

import select

__all__ = ["wait_readable", "wait_writable"]

#: poll() takes its timeout in milliseconds as a C int: a longer wait is
#: made of waits of this length.
_MAX_MS = 2**31 - 1


def wait_readable(fd: int, timeout: float | None) -> bool:
    """True once ``fd`` is readable (or at EOF, hung up or in error), False
    after ``timeout`` seconds (None: no limit), as ``select.select([fd], [],
    [], timeout)`` says; an exited process's pidfd reads readable."""
    return _wait(fd, select.POLLIN, timeout)


def wait_writable(fd: int, timeout: float | None) -> bool:
    """True once ``fd`` takes a write (or is in error or hung up: the write
    then fails at once), False after ``timeout`` seconds (None: no limit),
    as ``select.select([], [fd], [], timeout)``."""
    return _wait(fd, select.POLLOUT, timeout)


def _wait(fd: int, events: int, timeout: float | None) -> bool:
    if fd < 0:
        # poll() would skip a negative fd and sleep the whole timeout.
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    poller = select.poll()
    poller.register(fd, events)
    if timeout is None:
        ready = poller.poll()
    else:
        # Rounded up, as select's microseconds would be: a wait rounded down
        # to 0 ms would make a caller's loop spin until its deadline. A
        # negative timeout is 0 here (poll's -1 means "forever").
        left = -int(-max(0.0, timeout) * 1000 // 1)
        while True:
            ready = poller.poll(min(left, _MAX_MS))
            left -= _MAX_MS
            if ready or left <= 0:
                break
    # Any event: select counts hang-up and error as readable (and error as
    # writable); a closed descriptor is EBADF there, as here.
    if ready and ready[0][1] & select.POLLNVAL:
        from errno import EBADF
        from os import strerror

        raise OSError(EBADF, strerror(EBADF))
    return bool(ready)
