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

import logging
import logging.handlers
import os
import socket
import stat
import sys
import time
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
#: Where decisions go when there is no syslog socket and no file was named.
DEFAULT_LOG_FILE = "/var/log/tether/prune.log"

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


class _File(logging.Handler):
    """Appends ``TIME tether-prune[PID]: LEVEL MESSAGE`` lines to a file.

    The file is opened once, without following a symlink, created 0640; a
    missing parent directory is created 0750 (root's, for a root pruner).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o750, exist_ok=True)
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640
        )
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{path} is not a regular file")
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.created))
            text = " ".join(self.format(record).split("\n"))
            line = f"{when} {IDENT}[{os.getpid()}]: {record.levelname.lower()} {text}\n"
            os.write(self.fd, line.encode("utf-8", "backslashreplace"))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


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
        self.logger = logging.Logger(IDENT)  # not registered globally: one per run
        self.logger.propagate = False
        self.problem: str | None = None
        self.target = "none"
        if not enabled:
            return
        code = FACILITIES[facility]
        handler: logging.Handler
        path = socket_path or env.get(SOCKET_ENV) or DEFAULT_SOCKET
        journal = stderr_is_journal(env)
        if file_path is None and socket_path is None and not journal and not _is_socket(path):
            file_path = DEFAULT_LOG_FILE  # no syslog here: keep a record anyway
        if file_path:
            self.to_file(file_path)
            return
        if socket_path is None and stderr_is_journal(env):
            handler = _JournalStderr(code, sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.target = "journal (stderr)"
        else:
            # Connection errors are not raised here: they surface at the first
            # record and are kept in ``failure`` (logging never raises).
            handler = _SysLog(address=path, facility=code, socktype=socket.SOCK_DGRAM)
            handler.ident = f"{IDENT}[{os.getpid()}]: "
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.target = f"syslog {path} ({facility})"
        self.logger.addHandler(handler)

    def to_file(self, path: str) -> None:
        """From now on, append to ``path`` (a file named in the configuration)."""
        self.close()
        try:
            handler = _File(path)
        except OSError as err:
            self.problem = f"cannot append to {path}: {err.strerror or err}"
            self.target = "none"
            return
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.target = f"file {path}"
        self.problem = None
        self.logger.addHandler(handler)

    @property
    def enabled(self) -> bool:
        """Whether lines go anywhere (False with --no-syslog, or no usable file)."""
        return bool(self.logger.handlers)

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
