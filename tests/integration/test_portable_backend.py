"""The psutil backend (macOS, BSD) runs the session/pgid and walk path.

It is forced on Linux here, in child interpreters, with
``TETHER_PROCESS_BACKEND=psutil`` (read once, when ``tether._platform`` is
first imported), so the code path a Mac takes is exercised against real
processes. One test takes /proc away entirely: tether must then get every
process fact through psutil, never from /proc itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import alive, is_root, processes_with_env, wait_for
from tether._platform import BACKEND_VAR
from tether._platform.linux import procfs
from tether.journal import RUNTIME_DIR_VAR

SCRIPT = r"""
import json, sys, time
from tether import _platform
assert _platform.NAME == "psutil", _platform.NAME
import tether

job_sh = "sleep 100 & sh -c 'trap \"\" TERM; echo ready; sleep 100' & wait"
with tether.start(["sh", "-c", job_sh], policy="TERM,500ms,KILL", stdout=-1) as job:
    job._popen.stdout.readline()
    members = [(p.pid, p.starttime) for p in job.members()]
    report = job.cancel()
json.dump({"members": members, "report": report.to_dict()}, sys.stdout)
"""


def psutil_env(**extra: str) -> dict[str, str]:
    return {**os.environ, BACKEND_VAR: "psutil", **extra}


def test_psutil_backend_terminates_session_tree() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=psutil_env(),
    )
    data = json.loads(out.stdout)
    report = data["report"]
    assert report["complete"]
    used = {t["name"] for t in report["trackers"] if t["used"]}
    assert used == {"session", "walk"}
    assert len(data["members"]) >= 3
    by_cmd = {m["cmdline"]: m for m in report["members"]}
    ignorer = next(m for c, m in by_cmd.items() if "trap" in c and not c.startswith("sh -c sleep"))
    assert ignorer["ended_by"] == "KILL"
    assert any(m["ended_by"] == "TERM" for m in report["members"])
    # psutil identities are create times in ns, not /proc ticks: check liveness by pid.
    for pid, _start in data["members"]:
        assert not alive_any(pid)


def alive_any(pid: int) -> bool:
    try:
        with procfs.ProcDir(pid) as d:
            return d.stat().state not in ("Z", "X") and alive(pid, d.stat().starttime)
    except (procfs.ProcessGone, OSError):
        return False


def test_unknown_backend_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import tether.process"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, BACKEND_VAR: "plan9"},
    )
    assert done.returncode != 0
    assert f"{BACKEND_VAR}='plan9': choose one of linux, psutil" in done.stderr


#: A library caller that is SIGKILLed while its job runs: the job's watchdog
#: (started with -S, which hides site-packages and psutil with them) must
#: load the psutil backend to take over and terminate the tree.
CRASH_SCRIPT = r"""
import os, signal, sys, time
from tether import _platform
assert _platform.NAME == "psutil", _platform.NAME
import tether

marks = sys.argv[1]
job = tether.start(
    ["sh", "-c", f"sleep 300 & echo $! > {marks}/bg; sleep 300"], policy="TERM,2s,KILL"
)
deadline = time.monotonic() + 20
while not os.path.exists(f"{marks}/bg") and time.monotonic() < deadline:
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_watchdog_recovers_with_psutil_backend(tmp_path: Path) -> None:
    mark = f"TETHER_CRASH_MARK={uuid.uuid4().hex}"
    name, _, value = mark.partition("=")
    errfile = tmp_path / "stderr"
    with errfile.open("w") as errf:
        caller = subprocess.Popen(
            [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)],
            stderr=errf,
            env=psutil_env(**{name: value}),
        )
        assert caller.wait(timeout=60) == -signal.SIGKILL
    wait_for((tmp_path / "bg").exists, 5.0, "the job's background child")

    def marked() -> list[str]:
        return [f"pid {st.pid} ({st.comm})" for st in processes_with_env(mark.encode())]

    # The watchdog carries the mark too: it exits once the tree is gone.
    wait_for(lambda: not marked(), 20.0, "the watchdog to terminate the tree and exit")
    journal = os.environ[RUNTIME_DIR_VAR]
    wait_for(lambda: not os.listdir(journal), 5.0, "the journal record to be removed")
    err = errfile.read_text()
    assert f"supervisor pid {caller.pid} of job" in err, err
    assert "nothing left" in err and "Traceback" not in err, err


# -- tether.run with no /proc at all --------------------------------------------

#: Runs in a private mount namespace where /proc is gone (lazily unmounted)
#: and a fresh proc is mounted at argv[1] for psutil alone. An audit hook,
#: installed once psutil is imported and pointed there, records every path
#: under /proc that tether (or anything else in this interpreter) opens or
#: lists: a direct read would also fail for real.
NO_PROC_SCRIPT = r"""
import json, os, sys

proc_path, out_path = sys.argv[1], sys.argv[2]
touched = []


def audit(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args:
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str) and (path == "/proc" or path.startswith("/proc/")):
            touched.append(f"{event} {path}")


assert not os.path.exists("/proc/self"), "/proc is still mounted"
import psutil  # its import probes /proc/stat (and copes): not tether's doing

psutil.PROCFS_PATH = proc_path
sys.addaudithook(audit)

import tether
from tether import _platform

# A background child and an orphan that left the leader (re-parented to
# init, still in the job's session), both left behind for the run's
# leftover termination. The leader lives a second first: long enough for the
# watchdog to start and, if it could not see its supervisor without /proc,
# to take it for dead and terminate the job under it.
leader = 'sleep 300 & sh -c "sleep 300 &"; sleep 1; echo leader-done'
done = tether.run(["sh", "-c", leader], timeout=60, policy="TERM,5s,KILL")
report = done.report.to_dict()
json.dump(
    {
        "backend": _platform.NAME,
        "returncode": done.returncode,
        "timed_out": done.timed_out,
        "report": report,
        "touched": touched,
    },
    open(out_path, "w"),
)
"""

#: Exit status of the shell prefix when proc cannot be mounted here.
CANNOT_MOUNT = 77


def test_run_with_psutil_backend_and_no_proc(tmp_path: Path) -> None:
    if not is_root():
        pytest.skip("needs root: unshare --mount and mount -t proc")
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    fresh = tmp_path / "proc"
    fresh.mkdir()
    out = tmp_path / "out.json"
    mark = f"TETHER_NOPROC_MARK={uuid.uuid4().hex}"
    # Mount the fresh proc and drop /proc while both are still readable;
    # from the exec on, nothing in the namespace has a /proc.
    fail = f"exit {CANNOT_MOUNT}"
    prefix = f'mount -t proc proc "$1" || {fail}; umount -l /proc || {fail}; shift; exec "$@"'
    argv = [
        unshare, "--mount", "--propagation", "private", "--",
        "sh", "-c", prefix, "sh", str(fresh),
        sys.executable, "-c", NO_PROC_SCRIPT, str(fresh), str(out),
    ]  # fmt: skip
    name, _, value = mark.partition("=")
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=psutil_env(**{name: value}),
        )
    finally:
        # The tree is identified by the mark in its environment, read from
        # the real /proc out here: every process of it must be gone.
        def marked() -> list[str]:
            return [f"pid {st.pid} ({st.comm})" for st in processes_with_env(mark.encode())]

        try:
            wait_for(lambda: not marked(), timeout=5.0, what="the job's processes to be gone")
        except AssertionError:
            pytest.fail(f"processes of the job outlived it: {marked()}")
    if done.returncode == CANNOT_MOUNT:
        pytest.skip(f"cannot mount a fresh proc in a new mount namespace: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    # The watchdog shares this stderr: it must neither have taken its
    # supervisor for dead nor failed.
    assert "tether watchdog" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "leader-done" in done.stdout
    data = json.loads(out.read_text())
    assert data["touched"] == [], "tether read /proc itself"
    assert data["backend"] == "psutil"
    assert data["returncode"] == 0 and not data["timed_out"]
    report = data["report"]
    assert report["complete"], report
    assert report["survivors"] == []
    used = {t["name"] for t in report["trackers"] if t["used"]}
    assert used == {"session", "walk"}
    # The background child and the orphan (a scan may catch either just
    # before its exec of sleep): both were left running and ended by TERM.
    termed = [m for m in report["members"] if m["ended_by"] == "TERM"]
    assert len(termed) >= 2, report["members"]
