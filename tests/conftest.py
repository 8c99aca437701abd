"""Every test is checked for leaks: no process it started may outlive it.

Each test gets a unique TETHER_TEST_ID in the environment its children
inherit; tether jobs also carry TETHER_JOB_ID and a tether-* cgroup. After
the test, anything still alive with either, or any job cgroup left behind,
fails the test (and is then killed, by verified identity, so one leak does not
cascade into the next test).
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
from tether.journal import RUNTIME_DIR_VAR
from tether.linux import cgroupfs, procfs
from tether.linux.cgroupfs import JobCgroup
from tether.process import ProcessHandle

_suite: dict[str, str] = {}


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
    path = os.path.join(original, f"suite-{os.getpid()}")
    os.mkdir(path)
    JobCgroup(path).move(os.getpid())
    _suite["cgroup"] = path
    try:
        yield path
    finally:
        _suite.clear()
        JobCgroup(original).move(os.getpid())
        with contextlib.suppress(OSError):
            os.rmdir(path)


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


def _env_value(pid: int, name: bytes) -> bytes | None:
    try:
        with procfs.ProcDir(pid) as d:
            env = d.read("environ")
    except (procfs.ProcessGone, OSError):
        return None
    for entry in env.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key == name:
            return value
    return None


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
    # Processes started in the same clock tick as the test count as its own.
    not_before = procfs.own_starttime()
    try:
        yield
    finally:
        for var, value in ((TEST_VAR, old), (RUNTIME_DIR_VAR, old_journal)):
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value

    def leaks() -> list[procfs.Stat]:
        mine = {st.pid: st for st in processes_with_env(f"{TEST_VAR}={test_id}".encode())}
        for st in processes_with_env(b"TETHER_JOB_ID=", not_before):
            # Another suite's test (a concurrent run on this machine) is not ours.
            test = _env_value(st.pid, TEST_VAR.encode())
            if test is None or test == test_id.encode():
                mine.setdefault(st.pid, st)
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
