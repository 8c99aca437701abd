"""Every decision of the pruner, to syslog, the systemd journal or a file.

Under systemd (``JOURNAL_STREAM`` names the device and inode of our stderr)
lines go to stderr with an ``<N>`` priority prefix, which journald strips and
turns into the entry's priority (sd-daemon(3)). Otherwise a
:class:`logging.handlers.SysLogHandler` sends RFC 3164 datagrams to
``/dev/log`` (or the socket given) with the ident ``tether-prune``. Where no
syslog socket exists (a container, a minimal compute image) or a file is
named (``prune.log_file``, ``--log-file``), lines are appended to a file:
slurmd 22.05 discards a successful Epilog's output, so without one nothing
would record what was killed.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False

if TYPE_CHECKING:
    import logging

# logging and the syslog transport (shared with tether's own event log,
# --log-target syslog, in tether.log_handlers) are imported only when a
# decision goes somewhere: a dry run with --no-syslog does not load them.

__all__ = ["DEFAULT_FACILITY", "FACILITIES", "IDENT", "DecisionLog", "fields", "stderr_is_journal"]

IDENT = "tether-prune"
DEFAULT_FACILITY = "authpriv"
#: Where decisions go when there is no syslog socket and no file was named.
DEFAULT_LOG_FILE = "/var/log/tether/prune.log"

#: syslog(3) facility codes, as logging.handlers.SysLogHandler.facility_names
#: has them (without "security", an alias of auth); a test pins the two equal.
FACILITIES = {
    "auth": 4, "authpriv": 10, "console": 14, "cron": 9, "daemon": 3, "ftp": 11,
    "kern": 0, "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
    "local5": 21, "local6": 22, "local7": 23, "lpr": 6, "mail": 2, "news": 7,
    "ntp": 12, "solaris-cron": 15, "syslog": 5, "user": 1, "uucp": 8,
}  # fmt: skip


def fields(**items: object) -> str:
    """``key=value`` pairs for a decision line (:func:`tether.log_handlers.fields`)."""
    from tether.log_handlers import fields as _fields

    return _fields(**items)


def stderr_is_journal(env: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is connected to the journal (:mod:`tether.log_handlers`)."""
    from tether.log_handlers import stderr_is_journal as _is_journal

    return _is_journal(env)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class DecisionLog:
    """Where decisions go. ``problem`` holds why syslog could not be used, if so."""

    def __init__(
        self,
        *,
        facility: str = DEFAULT_FACILITY,
        socket_path: str | None = None,
        enabled: bool = True,
        env: dict[str, str] | None = None,
        file_path: str | None = None,
    ) -> None:
        if facility not in FACILITIES:
            raise ValueError(
                f"unknown syslog facility {facility!r} (one of {', '.join(sorted(FACILITIES))})"
            )
        env = dict(os.environ) if env is None else env
        self.logger: logging.Logger | None = None
        self.problem: str | None = None
        self.target = "none"
        if not enabled:
            return
        import logging
        import socket

        from tether.log_handlers import SYSLOG_SOCKET, SYSLOG_SOCKET_VAR
        from tether.log_handlers import SysLog as _SysLog
        from tether.prune._handlers import JournalStderr

        code = FACILITIES[facility]
        handler: logging.Handler
        path = socket_path or env.get(SYSLOG_SOCKET_VAR) or SYSLOG_SOCKET
        journal = stderr_is_journal(env)
        if file_path is None and socket_path is None and not journal and not _is_socket(path):
            file_path = DEFAULT_LOG_FILE  # no syslog here: keep a record anyway
        if file_path:
            self.to_file(file_path)
            return
        if socket_path is None and stderr_is_journal(env):
            handler = JournalStderr(code, sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.target = "journal (stderr)"
        else:
            # Connection errors are not raised here: they surface at the first
            # record and are kept in ``failure`` (logging never raises).
            handler = _SysLog(address=path, facility=code, socktype=socket.SOCK_DGRAM)
            handler.ident = f"{IDENT}[{os.getpid()}]: "
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.target = f"syslog {path} ({facility})"
        self._add(handler)

    def _add(self, handler: logging.Handler) -> None:
        if self.logger is None:
            import logging

            self.logger = logging.Logger(IDENT)  # not registered globally: one per run
            self.logger.propagate = False
        self.logger.addHandler(handler)

    def to_file(self, path: str) -> None:
        """From now on, append to ``path`` (a file named in the configuration)."""
        import logging

        from tether.prune._handlers import File

        self.close()
        try:
            handler = File(path)
        except OSError as err:
            self.problem = f"cannot append to {path}: {err.strerror or err}"
            self.target = "none"
            return
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.target = f"file {path}"
        self.problem = None
        self._add(handler)

    @property
    def enabled(self) -> bool:
        """Whether lines go anywhere (False with --no-syslog, or no usable file)."""
        return self.logger is not None and bool(self.logger.handlers)

    def info(self, message: str) -> None:
        if self.logger is not None:
            self.logger.info(message)

    def warning(self, message: str) -> None:
        if self.logger is not None:
            self.logger.warning(message)

    def error(self, message: str) -> None:
        if self.logger is not None:
            self.logger.error(message)

    @property
    def failure(self) -> str | None:
        """Why sending to syslog failed during the run (None if it never did)."""
        if self.logger is None:
            return None
        from tether.log_handlers import SysLog

        for handler in self.logger.handlers:
            if isinstance(handler, SysLog) and handler.failure is not None:
                return handler.failure
        return None

    def close(self) -> None:
        if self.logger is None:
            return
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
