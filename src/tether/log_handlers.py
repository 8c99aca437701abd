"""Where log records go: stderr (text or JSON lines), syslog, or journald.

Imported only once something is actually logged (see :mod:`tether.logs`):
this module imports :mod:`logging`. The pruner's decision log
(:mod:`tether.prune.log`) uses the same syslog transport and journal test.

- syslog: RFC 3164 datagrams to ``/dev/log`` (or ``$TETHER_SYSLOG_SOCKET``).
- journald: the native protocol (systemd.journal-fields(7), sd_journal_sendv):
  one datagram of ``KEY=VALUE`` lines to ``/run/systemd/journal/socket`` (or
  ``$TETHER_JOURNALD_SOCKET``), so event fields (``TETHER_JOB_ID``...) are
  searchable with ``journalctl TETHER_JOB_ID=...``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping

from tether.sanitize import json_safe, log_field

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

SYSLOG_SOCKET = "/dev/log"
SYSLOG_SOCKET_VAR = "TETHER_SYSLOG_SOCKET"
JOURNALD_SOCKET = "/run/systemd/journal/socket"
JOURNALD_SOCKET_VAR = "TETHER_JOURNALD_SOCKET"
#: The LogRecord attribute that carries an event's fields (job_id, pid, signal...).
FIELDS_ATTR = "tether_fields"

#: logging level -> syslog severity (also journald's PRIORITY).
PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def stderr_is_journal(env: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when ``JOURNAL_STREAM`` (``DEV:INODE``) matches our stderr (systemd.exec(5))."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def fields(**items: object) -> str:
    """``key=value`` pairs, values quoted when they hold spaces or quotes."""
    out = []
    for key, value in items.items():
        text = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
        # Values may be process names or remote text: escaped (tether.sanitize).
        text = log_field(text)
        if not text or any(c.isspace() or c in "\"'=" for c in text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(f"{key}={text}")
    return " ".join(out)


def _event_fields(record: logging.LogRecord) -> dict[str, object]:
    found = getattr(record, FIELDS_ATTR, None)
    return dict(found) if isinstance(found, dict) else {}


def _level_name(record: logging.LogRecord) -> str:
    return record.levelname.lower()


class TextFormatter(logging.Formatter):
    """``TS tether[PID] LEVEL LOGGER: MESSAGE key=value...`` (one line)."""

    def __init__(self, *, with_prefix: bool = True) -> None:
        super().__init__()
        self.with_prefix = with_prefix

    def format(self, record: logging.LogRecord) -> str:
        extra = _event_fields(record)
        # A forged newline or escape in a message must not forge a line.
        text = log_field(record.getMessage()) + (f" {fields(**extra)}" if extra else "")
        if not self.with_prefix:
            return text
        return (
            f"{_iso_time(record.created)} tether[{record.process}] {_level_name(record)} "
            f"{record.name}: {text}"
        )


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _iso_time(record.created),
            "level": _level_name(record),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _event_fields(record).items():
            out.setdefault(key, list(value) if isinstance(value, tuple) else value)
        # ensure_ascii: valid UTF-8 even with a non-UTF-8 argv (lone surrogates).
        return json.dumps(json_safe(out), default=str, ensure_ascii=True)


def _iso_time(created: float) -> str:
    """RFC 3339 UTC with milliseconds: sortable, and the same on every host."""
    whole = int(created)
    millis = int((created - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


class SysLog(logging.handlers.SysLogHandler):
    """A syslog handler that remembers a failed send instead of printing a traceback."""

    failure: str | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        why = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
        self.failure = f"syslog socket {self.address}: {why}"


class Journald(logging.Handler):
    """journald's native protocol: one datagram of fields per record."""

    def __init__(self, path: str, identifier: str = "tether") -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.failure: str | None = None
        self._sock: socket.socket | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            items: list[tuple[str, object]] = [
                ("MESSAGE", log_field(self.format(record))),
                ("PRIORITY", PRIORITY.get(record.levelno, 6)),
                ("SYSLOG_IDENTIFIER", self.identifier),
                ("SYSLOG_PID", record.process),
                ("LOGGER", record.name),
                ("CODE_FILE", record.pathname),
                ("CODE_LINE", record.lineno),
                ("CODE_FUNC", record.funcName),
            ]
            for key, value in _event_fields(record).items():
                text = ",".join(map(str, value)) if isinstance(value, list | tuple) else value
                items.append((f"TETHER_{key.upper()}", log_field(text)))
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(b"".join(_journal_field(k, str(v)) for k, v in items), self.path)
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        why = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
        self.failure = f"journald socket {self.path}: {why}"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        super().close()


def _journal_field(key: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        # A value with a newline is sent as KEY\n<64-bit LE length><bytes>\n.
        return key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key.encode() + b"=" + data + b"\n"


def make_handler(fmt: str, target: str, env: Mapping[str, str]) -> tuple[logging.Handler, str]:
    """The handler for ``target`` (stderr, syslog, journald, or auto) and what it is.

    auto: journald when systemd connected our stderr to the journal
    (``JOURNAL_STREAM``), else stderr.
    """
    if target == "auto":
        target = "journald" if stderr_is_journal(env) else "stderr"
    handler: logging.Handler
    if target == "journald":
        path = env.get(JOURNALD_SOCKET_VAR) or JOURNALD_SOCKET
        handler = Journald(path)
        # MESSAGE carries the text; the fields travel as journal fields.
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler, f"journald {path}"
    if target == "syslog":
        path = env.get(SYSLOG_SOCKET_VAR) or SYSLOG_SOCKET
        syslog = SysLog(address=path, socktype=socket.SOCK_DGRAM)
        syslog.ident = f"tether[{os.getpid()}]: "
        syslog.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(with_prefix=False))
        return syslog, f"syslog {path}"
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    return stream, "stderr"
