"""Environment-cookie tracker: ``TETHER_JOB_ID=<id>`` in a process's environment.

A cookie is evidence for killing, never for exemption: anyone can set one.
It survives re-parenting to init and leaving the session, and is lost by
``env -i`` (the cgroup or subreaper trackers cover that). It counts only for
processes of the job owner's uid (:func:`tether.evidence.cookie_counts`).
"""

from __future__ import annotations

import os

from tether.evidence import cookie_counts
from tether.process import read_environ
from tether.tracking.base import Table

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

COOKIE_VAR = "TETHER_JOB_ID"


def new_cookie() -> str:
    return os.urandom(12).hex()


class CookieTracker:
    name = "cookie"

    def __init__(self, cookie: str, not_before: int, owner_uid: int | None = None) -> None:
        self.entry = f"{COOKIE_VAR}={cookie}".encode()
        # A job's process cannot be older than the job: only read the
        # environment of processes started since, which keeps the scan cheap.
        self.not_before = not_before
        # The supervisor runs as the job's owner unless told otherwise.
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        found = []
        for p in table.values():
            if p.pid in members or p.starttime < self.not_before or p.kernel_thread:
                continue
            env = read_environ(p.pid, p.starttime)
            if (
                env is not None
                and environ_has(env, self.entry)
                and cookie_counts(p, self.owner_uid)
            ):
                found.append(p.pid)
        return found


def environ_has(data: bytes, entry: bytes) -> bool:
    """True if the NUL-separated environment ``data`` holds ``entry`` exactly."""
    return data.startswith(entry + b"\0") or (b"\0" + entry + b"\0") in data or data == entry
