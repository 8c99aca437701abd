"""Typed errors raised by tether.

::

    TetherError
     ├── UsageError            bad input: a policy, signal, duration, pid, command
     │    ├── PolicyError
     │    └── UnsafeTargetError  pid <= 1, tether itself or one of its ancestors
     ├── CommandNotFoundError  (also FileNotFoundError)   -> exit 127
     ├── CommandNotExecutableError (also PermissionError) -> exit 126
     ├── NoSuchProcessError    (also ProcessLookupError)
     ├── TrackerError          a tracker could not be set up or used
     └── JournalError          the journal of live jobs cannot be used
"""

from __future__ import annotations


class TetherError(Exception):
    """Base of every error tether raises on purpose."""

    exit_code = 125


class UsageError(TetherError, ValueError):
    """The caller asked for something that cannot be done as written."""


class PolicyError(UsageError):
    """A termination policy, signal name or duration does not parse."""


class UnsafeTargetError(UsageError):
    """The target is pid <= 1, tether itself, or one of tether's ancestors."""

    def __init__(self, pid: int, why: str) -> None:
        super().__init__(f"refusing to kill pid {pid}: {why}")
        self.pid = pid
        self.why = why

    def __reduce__(self) -> tuple[type[UnsafeTargetError], tuple[int, str]]:
        return (type(self), (self.pid, self.why))


class CommandNotFoundError(TetherError, FileNotFoundError):
    """The job's command does not exist (exit status 127, as in `timeout`)."""

    exit_code = 127

    def __init__(self, command: str) -> None:
        super().__init__(f"command not found: {command}")
        self.command = command

    def __str__(self) -> str:
        return f"command not found: {self.command}"

    def __reduce__(self) -> tuple[type[CommandNotFoundError], tuple[str]]:
        return (type(self), (self.command,))


class CommandNotExecutableError(TetherError, PermissionError):
    """The job's command exists but cannot be executed (exit status 126)."""

    exit_code = 126

    def __init__(self, command: str) -> None:
        super().__init__(f"command not executable: {command}")
        self.command = command

    def __str__(self) -> str:
        return f"command not executable: {self.command}"

    def __reduce__(self) -> tuple[type[CommandNotExecutableError], tuple[str]]:
        return (type(self), (self.command,))


class NoSuchProcessError(TetherError, ProcessLookupError):
    """The process named by the caller does not exist (or no longer does)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"no such process: {pid}")
        self.pid = pid

    def __str__(self) -> str:
        return f"no such process: {self.pid}"

    def __reduce__(self) -> tuple[type[NoSuchProcessError], tuple[int]]:
        return (type(self), (self.pid,))


class TrackerError(TetherError):
    """A tracker could not be set up or used."""


class JournalError(TetherError):
    """The journal of live jobs cannot be read or written (a job is not started
    untracked because of it)."""


for _cls in (
    TetherError,
    UsageError,
    PolicyError,
    UnsafeTargetError,
    CommandNotFoundError,
    CommandNotExecutableError,
    NoSuchProcessError,
    TrackerError,
    JournalError,
):
    _cls.__module__ = "tether"
