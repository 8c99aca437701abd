"""The decision log's handlers (:mod:`tether.prune.log` loads this module, and
with it :mod:`logging`, only when decisions go somewhere)."""

from __future__ import annotations

import logging
import os
import stat
import time

from tether.log_handlers import PRIORITY
from tether.prune.log import IDENT

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO


class JournalStderr(logging.Handler):
    """``<N>``-prefixed lines on stderr, which journald turns into priorities."""

    def __init__(self, facility: int, stream: TextIO) -> None:
        super().__init__()
        self.facility = facility
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prio = self.facility * 8 + PRIORITY.get(record.levelno, 6)
            text = " ".join(self.format(record).split("\n"))
            self.stream.write(f"<{prio}>{text}\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)


class File(logging.Handler):
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
