"""tether's pytest plugin, run by pytester in a pytest of its own: a leaking
test fails and names the leak (and the leak is terminated), a clean test
passes, pytest-xdist workers check their own tests, tether_job contains."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import SRC, processes_with_env

pytest_plugins = ["pytester"]

LEAKY = """
import subprocess, pathlib

def test_leaks(tmp_path):
    # Started through subprocess directly, never waited for.
    proc = subprocess.Popen(["sleep", "3600"])
    pathlib.Path({pidfile!r}).write_text(str(proc.pid))
    proc.returncode = 0  # silence Popen's "still running" warning

def test_clean():
    subprocess.run(["sh", "-c", "sleep 0 & wait"], check=True)
"""


@pytest.fixture(autouse=True)
def _src_on_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    # The subprocess pytest must import this checkout's tether; set through
    # monkeypatch, so the tests that run after these do not inherit it.
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    return pytester.runpytest_subprocess(*args, timeout=300)


def test_leaking_test_fails_and_names_the_leak(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    pytester.makepyfile(LEAKY.format(pidfile=str(pidfile)))
    result = _run(pytester, "--tether-leaks")
    result.assert_outcomes(passed=2, errors=1)
    pid = int(pidfile.read_text())
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            f"*the test leaked 1 process(es)*pid {pid} (sleep 3600)*",
        ]
    )
    # ... and it was terminated, by the engine, with a report.
    result.stdout.fnmatch_lines(["*killed*"])
    assert not any(st.pid == pid for st in processes_with_env(b""))


def test_clean_tests_pass_and_the_ini_option_works(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import subprocess
        def test_clean():
            subprocess.run(["sh", "-c", "sleep 0 & wait"], check=True)
        """
    )
    pytester.makeini("[pytest]\ntether_leaks = true\naddopts = -p no:cacheprovider\n")
    result = pytester.runpytest_subprocess(timeout=300)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["tether: process leak check on*"])


def test_xdist_workers_check_their_own_tests(pytester: pytest.Pytester, tmp_path: Path) -> None:
    files = {}
    for n in range(2):
        files[f"test_leaky{n}"] = LEAKY.format(pidfile=str(tmp_path / f"pid{n}"))
    pytester.makepyfile(**files)
    result = _run(pytester, "--tether-leaks", "-n", "2")
    result.assert_outcomes(passed=4, errors=2)
    for n in range(2):
        pid = int((tmp_path / f"pid{n}").read_text())
        result.stdout.fnmatch_lines([f"*pid {pid} (sleep 3600)*"])


def test_tether_job_fixture_contains_what_the_job_starts(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    pytester.makepyfile(
        f"""
        import os, time, pathlib
        def test_service(tether_job):
            job = tether_job(["sh", "-c", "setsid sleep 3600 & echo $! >{pidfile}; wait"],
                             policy="TERM,2s,KILL")
            pidfile = pathlib.Path({str(pidfile)!r})
            while not pidfile.exists() or not pidfile.read_text():
                time.sleep(0.01)
            assert job.poll() is None
        """
    )
    result = _run(pytester, "--tether-leaks")
    result.assert_outcomes(passed=1)
    pid = int(pidfile.read_text())
    assert not any(st.pid == pid for st in processes_with_env(b""))
