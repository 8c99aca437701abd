"""The errors of ``run(check=True)``: subclasses of subprocess's own.

A module of their own, imported when one is raised or named: subprocess
(with locale, re, enum, threading, selectors and warnings) is ~10 ms of a
start, and `tether run` never needs it (issue 15). ``tether.JobFailedError``
and ``tether.job.JobFailedError`` name these classes.
"""

from __future__ import annotations

import subprocess

from tether.errors import TetherError

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tether.report import Report


class JobFailedError(TetherError, subprocess.CalledProcessError):
    """``check=True`` and the leader exited with a non-zero status.

    A :class:`subprocess.CalledProcessError` (``returncode``, ``cmd``,
    ``output``/``stdout``, ``stderr``) that also carries the job's ``report``.
    """

    def __init__(
        self,
        returncode: int,
        cmd: Any,
        output: Any = None,
        stderr: Any = None,
        report: Report | None = None,
    ) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)
        self.report = report


class JobTimeoutError(TetherError, subprocess.TimeoutExpired):
    """``check=True`` and the timeout expired: the tree was terminated.

    A :class:`subprocess.TimeoutExpired` (``cmd``, ``timeout``, the output
    captured until the end) that also carries the job's ``report``.
    """

    exit_code = 124

    def __init__(
        self,
        cmd: Any,
        timeout: float,
        output: Any = None,
        stderr: Any = None,
        report: Report | None = None,
    ) -> None:
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)
        self.report = report


JobFailedError.__module__ = JobTimeoutError.__module__ = "tether"
