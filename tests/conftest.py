"""Every test is checked for leaks: no process it started may outlive it.

Each test gets a unique TETHER_TEST_ID in the environment its children
inherit (remote tests send it over SSH), and a journal directory of its own.
After the test, anything still alive with that id, a tether-* cgroup left
behind in this suite's cgroup, or a journal record left behind fails the test
(the processes are then killed, by verified identity, so one leak does not
cascade into the next test). Processes with another test's id, or none, are
never touched: other suites may be running on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from helpers import TEST_VAR, cgroup2_mount, processes_with_env, wait_for
from tether._platform.linux import cgroupfs, procfs
from tether._platform.linux.cgroupfs import JobCgroup
from tether.journal import RUNTIME_DIR_VAR
from tether.process import ProcessHandle

_suite: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """The suite runs as from a terminal, whatever started it. A background
    job of a shell without job control (`.ci/run &`, a cron line) inherits
    SIGINT and SIGQUIT ignored, and an ignored signal stays ignored across
    exec: a job's `trap ... INT` is then void and Ctrl-C under asyncio.run
    is never seen, which the tests of those features would take for bugs.
    Under nohup, SIGHUP is ignored the same way, and `tether run` takes that
    for "outlive the caller" (tether.caller.hangup_ignored): the tests of
    caller death and of HUP forwarding need it at its default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def suite_cgroup() -> Iterator[str | None]:
    """Run the suite in a cgroup of its own, so job cgroups are counted per suite.

    Two suites on one machine (helpers, a CI retry) would otherwise see each
    other's tether-* cgroups as leaks.
    """
    probe = cgroupfs.probe()
    if probe.parent is None or os.geteuid() != 0:
        yield None
        return
    original = probe.parent
    _remove_stale_suites(original)
    path = os.path.join(original, f"suite-{os.getpid()}")
    # A suite killed before its teardown leaves its cgroup, and its pid comes
    # round again: reuse it.
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    JobCgroup(path).move(os.getpid())
    _suite["cgroup"] = path
    try:
        yield path
    finally:
        _suite.clear()
        JobCgroup(original).move(os.getpid())
        # Busy while this process's keeper (it leaves after us) is in it:
        # the next suite removes it (_remove_stale_suites).
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _remove_stale_suites(parent: str) -> None:
    """The cgroups of earlier suites whose process is gone: empty now (their
    keepers left after them), so removed; a populated one stays."""
    for entry in os.scandir(parent):
        pid = entry.name.removeprefix("suite-")
        if entry.name.startswith("suite-") and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                os.rmdir(entry.path)


def _job_cgroups() -> set[str]:
    root = _suite.get("cgroup") or cgroup2_mount()
    out: set[str] = set()
    if root is None:
        return out
    for dirpath, dirs, _files in os.walk(root):
        for d in dirs:
            if d.startswith("tether-"):
                out.add(os.path.join(dirpath, d))
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    test_id = uuid.uuid4().hex
    old = os.environ.get(TEST_VAR)
    os.environ[TEST_VAR] = test_id
    # A journal per test: records left behind are leaks too.
    journal = tempfile.mkdtemp(prefix="tether-journal-")
    old_journal = os.environ.get(RUNTIME_DIR_VAR)
    os.environ[RUNTIME_DIR_VAR] = journal
    cgroups_before = _job_cgroups()
    try:
        yield
    finally:
        for var, value in ((TEST_VAR, old), (RUNTIME_DIR_VAR, old_journal)):
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value

    def leaks() -> list[procfs.Stat]:
        # Only this test's processes: a job without a test id (a benchmark,
        # another suite on this machine) is not ours to judge, let alone kill.
        mine = {st.pid: st for st in processes_with_env(f"{TEST_VAR}={test_id}".encode())}
        mine.pop(os.getpid(), None)
        return list(mine.values())

    with contextlib.suppress(AssertionError):
        wait_for(lambda: not leaks(), timeout=3.0, what="test processes to exit")
    left = leaks()
    for st in left:
        h = ProcessHandle.open(st.pid, st.starttime)
        if h is not None:
            h.send_signal(signal.SIGKILL)
            h.close()
    new_cgroups = _job_cgroups() - cgroups_before
    for path in new_cgroups:
        cg = JobCgroup(path)
        try:
            cg.thaw()
            cg.kill()
            cg.wait_empty(2.0)
        except OSError:
            pass
        cg.remove()
    records = sorted(os.listdir(journal))
    shutil.rmtree(journal, ignore_errors=True)
    if left or new_cgroups or records:
        pytest.fail(
            "test leaked: "
            + ", ".join(f"pid {st.pid} ({st.comm})" for st in left)
            + (f" cgroups {sorted(new_cgroups)}" if new_cgroups else "")
            + (f" journal records {records}" if records else ""),
            pytrace=False,
        )
