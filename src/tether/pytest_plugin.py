"""pytest plugin: a ``tether_job`` fixture, and per-test process leak detection.

Installed with tether (entry point ``pytest11``, name ``tether``); with
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it with ``-p tether``.

- ``tether_job(args, **options)`` starts a job (as :func:`tether.start`) that
  is terminated with its policy when the test ends; a termination that left a
  survivor fails the test with the report.
- ``--tether-leaks`` (or ``tether_leaks = true`` in the ini file) gives every
  test a marker, ``TETHER_TEST_ID=<random>``, in the environment its children
  inherit — processes started through :mod:`subprocess` directly too. A
  process of this user still carrying the test's marker once the test and its
  fixtures are over (after a short grace, ``tether_leak_grace``) is a leak: it
  is terminated by tether's engine (``TERM,2s,KILL``) and the test fails with
  the report of what leaked. Each pytest-xdist worker marks its own tests.

A process that clears its environment (``env -i``) carries no marker: the
leak check cannot see it (a ``tether_job`` still contains it, by cgroup or
session).
"""

from __future__ import annotations

import contextlib
import os
import select
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest

from tether.identity import Identity
from tether.process import ProcessHandle, ProcessInfo, read_environ, snapshot

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The environment variable that marks a test's processes.
TEST_ID_VAR = "TETHER_TEST_ID"
#: How leaked processes are terminated.
LEAK_POLICY = "TERM,2s,KILL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tether", "tether: processes that outlive a test")
    group.addoption(
        "--tether-leaks",
        action="store_true",
        default=False,
        help="fail a test that leaves a process it started running (and terminate it)",
    )
    parser.addini("tether_leaks", "fail tests that leak processes (as --tether-leaks)", type="bool")
    parser.addini(
        "tether_leak_grace",
        "seconds a test's processes get to exit after it ends (default 3)",
        default="3",
    )


def _enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("tether_leaks") or config.getini("tether_leaks"))


def pytest_report_header(config: pytest.Config) -> str | None:
    if _enabled(config):
        return f"tether: process leak check on ({TEST_ID_VAR} per test)"
    return None


@pytest.fixture
def tether_job() -> Iterator[Callable[..., Any]]:
    """``tether_job(args, **options)``: :func:`tether.start` for this test only.

    Every job it started is terminated with its policy when the test ends
    (last started, first ended); one that left a survivor fails the test.
    """
    from tether.job import Job, start

    jobs: list[Job] = []

    def start_job(args: Sequence[Any] | str, **options: Any) -> Job:
        job = start(args, **options)
        jobs.append(job)
        return job

    yield start_job
    failed = []
    for job in reversed(jobs):
        job.__exit__(None, None, None)
        if job.report is not None and not job.report.complete:
            failed.append(job.report.render_text())
    if failed:
        pytest.fail("tether_job: members survived the termination:\n" + "\n".join(failed))


@pytest.fixture(autouse=True)
def _tether_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    # Autouse and from a plugin: set up before the test's other fixtures and
    # torn down after them, so what they end is not a leak.
    if not _enabled(request.config):
        yield
        return
    test_id = uuid.uuid4().hex
    old = os.environ.get(TEST_ID_VAR)
    os.environ[TEST_ID_VAR] = test_id
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(TEST_ID_VAR, None)
        else:
            os.environ[TEST_ID_VAR] = old
    grace = float(request.config.getini("tether_leak_grace"))
    message = check_leaks(test_id, grace=grace)
    if message:
        pytest.fail(message, pytrace=False)


def marked(test_id: str) -> list[ProcessInfo]:
    """Live processes of this user whose environment carries ``test_id``."""
    entry = f"{TEST_ID_VAR}={test_id}".encode()
    me = os.getpid()
    uid = os.geteuid()
    out = []
    for info in snapshot(("uids", "cmdline")).values():
        if info.pid == me or info.state in ("Z", "X") or info.kernel_thread:
            continue
        if uid != 0 and (info.uids is None or info.uids[0] != uid):
            continue  # another user's environ is unreadable anyway
        env = read_environ(info.pid, info.starttime)
        if env is not None and entry in env.split(b"\0"):
            out.append(info)
    return out


def _wait_exit(infos: Sequence[ProcessInfo], grace: float) -> list[ProcessInfo]:
    """Wait up to ``grace`` seconds (on pidfds) for these to exit; those left."""
    handles = [h for i in infos if (h := ProcessHandle.open(i.pid, i.starttime)) is not None]
    try:
        deadline = time.monotonic() + grace
        while True:
            left = [h for h in handles if not h.has_exited()]
            remaining = deadline - time.monotonic()
            if not left or remaining <= 0:
                alive = {(h.pid, h.starttime) for h in left}
                return [i for i in infos if (i.pid, i.starttime) in alive]
            poller = select.poll()
            pollable = [h.fileno for h in left if h.fileno >= 0]
            for fd in pollable:
                poller.register(fd, select.POLLIN)
            wait = remaining if len(pollable) == len(left) else min(remaining, 0.05)
            poller.poll(max(1, int(wait * 1000)))
    finally:
        for h in handles:
            h.close()


def check_leaks(test_id: str, *, grace: float = 3.0) -> str | None:
    """None if nothing marked ``test_id`` is alive (after ``grace``); else
    terminate what is and return the failure message with the report."""
    leaked = _wait_exit(marked(test_id), grace)
    if not leaked:
        return None
    from tether.membership import Membership
    from tether.policy import Policy
    from tether.report import oneline
    from tether.terminate import terminate

    membership = Membership.for_identities(
        [Identity(i.pid, i.starttime) for i in leaked],
        name="test-marker",
        why=f"{TEST_ID_VAR}={test_id} in the environment",
        job_id=f"pytest-{test_id[:12]}",
        admit=lambda _info: True,
    )
    try:
        report = terminate(
            membership,
            Policy.parse(LEAK_POLICY),
            job_id=f"pytest-{test_id[:12]}",
            reason="leaked by the test",
        )
    finally:
        with contextlib.suppress(Exception):
            membership.close()
    lines = [
        f"pid {i.pid} ({oneline(i.describe(), 120)})" for i in sorted(leaked, key=lambda i: i.pid)
    ]
    return (
        f"tether: the test leaked {len(leaked)} process(es) still running after it ended: "
        + ", ".join(lines)
        + "\n"
        + report.render_text()
    )
