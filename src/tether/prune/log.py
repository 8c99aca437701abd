"""Every decision of the pruner, to syslog or to the systemd journal.

Under systemd (``JOURNAL_STREAM`` names the device and inode of our stderr)
lines go to stderr with an ``<N>`` priority prefix, which journald strips and
turns into the entry's priority (sd-daemon(3)). Otherwise a
:class:`logging.handlers.SysLogHandler` sends RFC 3164 datagrams to
``/dev/log`` (or the socket given) with the ident ``tether-prune``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from typing import TextIO

# The transport is shared with tether's own event log (--log-target syslog).
from tether.log_handlers import PRIORITY as _PRIORITY
from tether.log_handlers import SYSLOG_SOCKET as DEFAULT_SOCKET
from tether.log_handlers import SYSLOG_SOCKET_VAR as SOCKET_ENV
from tether.log_handlers import SysLog as _SysLog
from tether.log_handlers import fields, stderr_is_journal

__all__ = ["DEFAULT_FACILITY", "FACILITIES", "IDENT", "DecisionLog", "fields", "stderr_is_journal"]

IDENT = "tether-prune"
DEFAULT_FACILITY = "authpriv"

FACILITIES = {
    name: code
    for name, code in logging.handlers.SysLogHandler.facility_names.items()
    if name not in ("security",)  # an alias of auth
}


class _JournalStderr(logging.Handler):
    def __init__(self, facility: int, stream: TextIO) -> None:
        super().__init__()
        self.facility = facility
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prio = self.facility * 8 + _PRIORITY.get(record.levelno, 6)
            text = " ".join(self.format(record).split("\n"))
            self.stream.write(f"<{prio}>{text}\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)


class DecisionLog:
    """Where decisions go. ``problem`` holds why syslog could not be used, if so."""

    def __init__(
        self,
        *,
        facility: str = DEFAULT_FACILITY,
        socket_path: str | None = None,
        enabled: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        if facility not in FACILITIES:
            raise ValueError(
                f"unknown syslog facility {facility!r} (one of {', '.join(sorted(FACILITIES))})"
            )
        env = dict(os.environ) if env is None else env
        self.logger = logging.Logger(IDENT)  # not registered globally: one per run
        self.logger.propagate = False
        self.problem: str | None = None
        self.target = "none"
        if not enabled:
            return
        code = FACILITIES[facility]
        handler: logging.Handler
        if socket_path is None and stderr_is_journal(env):
            handler = _JournalStderr(code, sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.target = "journal (stderr)"
        else:
            path = socket_path or env.get(SOCKET_ENV) or DEFAULT_SOCKET
            # Connection errors are not raised here: they surface at the first
            # record and are kept in ``failure`` (logging never raises).
            handler = _SysLog(address=path, facility=code, socktype=socket.SOCK_DGRAM)
            handler.ident = f"{IDENT}[{os.getpid()}]: "
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.target = f"syslog {path} ({facility})"
        self.logger.addHandler(handler)

    def info(self, message: str) -> None:
        self.logger.info(message)

    def warning(self, message: str) -> None:
        self.logger.warning(message)

    def error(self, message: str) -> None:
        self.logger.error(message)

    @property
    def failure(self) -> str | None:
        """Why sending to syslog failed during the run (None if it never did)."""
        for handler in self.logger.handlers:
            if isinstance(handler, _SysLog) and handler.failure is not None:
                return handler.failure
        return None

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
