"""Signal numbers with their names, without the :mod:`signal` module.

``import signal`` builds three IntEnums from ``_signal`` at import time and
imports :mod:`enum` for them (with functools, collections and types): ~2-5 ms
of every start of `tether run` on a 2-core machine (issue 15). tether needs
the numbers, the names and ``_signal``'s functions, all of which ``_signal``
has; :class:`Signal` is the one thing the enum gave: an int that knows its
name. A Signal equals and hashes as its number, so it mixes with the
caller's ``signal.SIGTERM`` in sets, dicts and comparisons.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    # _signal has no stub of its own: it is signal's C half, and signal's
    # functions are _signal's own (re-exported, or wrapped to turn ints into
    # enum members, which Signal stands in for here).
    from signal import (
        _HANDLER,
        default_int_handler,
        getsignal,
        pidfd_send_signal,
        pthread_kill,
        pthread_sigmask,
        set_wakeup_fd,
        signal,
        valid_signals,
    )

    Handler = _HANDLER

    # Plain ints here, as _signal has them (signal's stub types them as
    # members of its enums).
    SIG_BLOCK: int
    SIG_DFL: int
    SIG_IGN: int
    SIG_SETMASK: int
    SIG_UNBLOCK: int
    SIGALRM: int
    SIGBUS: int
    SIGCHLD: int
    SIGCONT: int
    SIGFPE: int
    SIGHUP: int
    SIGILL: int
    SIGINT: int
    SIGKILL: int
    SIGPIPE: int
    SIGQUIT: int
    SIGSEGV: int
    SIGSTOP: int
    SIGSYS: int
    SIGTERM: int
    SIGTRAP: int
    SIGTSTP: int
    SIGTTIN: int
    SIGTTOU: int
    SIGUSR1: int
    SIGUSR2: int
    SIGWINCH: int
else:
    from _signal import *  # noqa: F403


def _table() -> tuple[dict[int, str], dict[str, int]]:
    """number -> name, name -> number: every SIGxxx constant, as
    ``signal.Signals`` has them. Where two names share a number (SIGABRT and
    SIGIOT, SIGCHLD and SIGCLD, SIGIO and SIGPOLL) the enum's member is the
    one first in sort order, and the other is its alias."""
    by_name = {
        name: number
        for name, number in globals().items()  # _signal's, star-imported above
        if name.startswith("SIG") and not name.startswith("SIG_") and name.isupper()
    }
    by_number: dict[int, str] = {}
    for name, number in sorted(by_name.items(), key=lambda item: (item[1], item[0])):
        by_number.setdefault(number, name)
    return by_number, by_name


_BY_NUMBER, _BY_NAME = _table()


class Signal(int):
    """A signal number that knows its name, as a ``signal.Signals`` member:
    ``Signal(15).name == "SIGTERM"``; ``Signal(35)`` (a real-time signal
    without a name of its own) raises ValueError, as ``Signals(35)`` does.
    Integers only: ``Signal("15")`` raises ValueError as ``Signals("15")``
    does (int() would read it, and " 15" too); True and 15.0, which
    ``Signals`` takes for the numbers they equal, are refused as well."""

    __slots__ = ()

    def __new__(cls, number: int) -> Signal:
        if not isinstance(number, int) or isinstance(number, bool) or int(number) not in _BY_NUMBER:
            raise ValueError(f"{number!r} is not a valid Signal")
        return super().__new__(cls, number)

    @property
    def name(self) -> str:
        return _BY_NUMBER[int(self)]

    @property
    def value(self) -> int:
        return int(self)

    @classmethod
    def named(cls, name: str) -> Signal:
        """``Signal.named("SIGTERM")``, as ``signal.Signals["SIGTERM"]``
        (KeyError for no such name; aliases such as SIGIOT are accepted)."""
        return cls(_BY_NAME[name])

    def __repr__(self) -> str:
        return f"<Signal.{self.name}: {int(self)}>"

    # int's own, where a subclass would otherwise print its repr.
    __str__ = int.__repr__

    def __reduce__(self) -> tuple[type[Signal], tuple[int]]:
        return Signal, (int(self),)


def name_of(number: int) -> str | None:
    """``15`` -> ``"SIGTERM"``; None for a number without a name."""
    return _BY_NUMBER.get(number)


__all__ = [
    "SIGALRM", "SIGBUS", "SIGCHLD", "SIGCONT", "SIGFPE", "SIGHUP", "SIGILL", "SIGINT",
    "SIGKILL", "SIGPIPE", "SIGQUIT", "SIGSEGV", "SIGSTOP", "SIGSYS", "SIGTERM", "SIGTRAP",
    "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIG_BLOCK",
    "SIG_DFL", "SIG_IGN", "SIG_SETMASK", "SIG_UNBLOCK", "Signal", "default_int_handler",
    "getsignal", "name_of", "pidfd_send_signal", "pthread_kill", "pthread_sigmask",
    "set_wakeup_fd", "signal", "valid_signals",
]  # fmt: skip
