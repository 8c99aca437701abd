"""Process identity under pid reuse, and members the kernel will not let die (D state)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from helpers import alive, cgroup2_mount, is_root, tether_cmd, wait_for, wait_for_file
from tether._platform.linux import procfs
from tether._platform.linux.cgroupfs import JobCgroup
from tether.journal import JobRecord, Journal
from tether.process import Delivery, ProcessHandle

PY = sys.executable
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
REUSE_ATTEMPTS = 50
LIVENESS = 30.0

needs_root = pytest.mark.skipif(not is_root(), reason="forcing pid reuse needs root")


def starttime(pid: int) -> int:
    with procfs.ProcDir(pid) as d:
        return d.stat().starttime


def spawn_with_pid(pid: int, argv: list[str]) -> subprocess.Popen[bytes]:
    """A new child that has exactly ``pid`` (which must be free), or skip the test."""
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip(f"pid reuse cannot be forced: {NS_LAST_PID} is not writable")
    for _ in range(REUSE_ATTEMPTS):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(argv)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    pytest.skip(
        f"pid reuse could not be forced: pid {pid} not reassigned in {REUSE_ATTEMPTS} tries"
    )


@needs_root
def test_handle_never_signals_a_reused_pid() -> None:
    child = subprocess.Popen(["sleep", "100"])
    handle = ProcessHandle.open(child.pid)
    assert handle is not None
    newcomer = None
    try:
        old_start = handle.starttime
        child.kill()
        child.wait()  # reaped: the pid is free for reuse
        newcomer = spawn_with_pid(child.pid, ["sleep", "100"])
        assert handle.pid == newcomer.pid
        assert handle.has_exited()
        assert handle.send_signal(signal.SIGTERM) is Delivery.GONE
        assert handle.send_signal(signal.SIGKILL) is Delivery.GONE
        assert newcomer.poll() is None
        assert alive(newcomer.pid, starttime(newcomer.pid))
        if starttime(newcomer.pid) != old_start:  # reuse within one clock tick is possible
            # A handle asked for the old identity refuses the newcomer.
            assert ProcessHandle.open(newcomer.pid, old_start) is None
            assert handle.read() is None
    finally:
        handle.close()
        if newcomer is not None:
            newcomer.kill()
            newcomer.wait()


_LEADER = """
import subprocess, sys, time
d = sys.argv[1]
kid = subprocess.Popen(["sleep", "100"])
open(d + "/kid", "w").write(str(kid.pid))
kid.wait()  # the leader reaps it: its pid is free
open(d + "/reaped", "w").write("1")
time.sleep(100)
"""


@needs_root
def test_job_member_scanned_before_reuse_is_not_confused(tmp_path: Path) -> None:
    newcomer = None
    with tether.start([PY, "-c", _LEADER, str(tmp_path)], policy="TERM,1s,KILL,2s") as job:
        try:
            kid = int(wait_for_file(tmp_path / "kid"))
            wait_for(lambda: kid in job.found_by(), what="the member to be scanned")
            os.kill(kid, signal.SIGKILL)  # by pid: it is alive and unreaped here
            wait_for_file(tmp_path / "reaped")
            newcomer = spawn_with_pid(kid, ["sleep", "100"])
            report = job.cancel("test")
            assert newcomer.poll() is None, "tether signalled the process that reused the pid"
            assert alive(newcomer.pid, starttime(newcomer.pid))
            assert report.complete
            rec = [m for m in report.members if m.pid == kid]
            assert len(rec) == 1, report.members
            assert rec[0].outcome == "exited"
            assert rec[0].signals == ()
            assert rec[0].cmdline.startswith("sleep")
        finally:
            if newcomer is not None:
                newcomer.kill()
                newcomer.wait()


# -- D state -------------------------------------------------------------------


def freezer_mount() -> str | None:
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and fields[2] == "cgroup" and "freezer" in fields[3].split(","):
                return fields[1]
    return None


@contextlib.contextmanager
def v1_freezer(tmp_name: str) -> Iterator[Path]:
    mount = freezer_mount()
    if mount is None:
        pytest.skip("no cgroup v1 freezer controller mounted (needed for a D-state process)")
    if not is_root():
        pytest.skip("creating a cgroup v1 freezer needs root")
    path = Path(mount) / tmp_name
    path.mkdir()
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            (path / "freezer.state").write_text("THAWED")
        # The frozen members had a KILL pending: they die now; then the dir can go.
        wait_for(lambda: not (path / "cgroup.procs").read_text().strip(), 10.0, "thawed exit")
        path.rmdir()


def freeze(freezer: Path, pid: int) -> None:
    (freezer / "cgroup.procs").write_text(str(pid))
    (freezer / "freezer.state").write_text("FROZEN")
    wait_for(lambda: (freezer / "freezer.state").read_text().strip() == "FROZEN", 5.0, "FROZEN")
    with procfs.ProcDir(pid) as d:
        assert d.stat().state == "D"


def remove_job_cgroup(path: str | None) -> None:
    """tether leaves a job cgroup it could not confirm empty; clear it after the thaw."""
    if path is None or not os.path.isdir(path):
        return
    cg = JobCgroup(path)  # no events fd: poll cgroup.events (wait_empty needs the fd)
    with contextlib.suppress(OSError):
        cg.kill()
    wait_for(lambda: not cg.populated(), 5.0, f"{path} to empty")
    cg.remove()


def reap_given_up_record() -> None:
    """A job whose members survived keeps its journal record (state "survivors")
    until `tether reap` finds the tree empty."""
    entries = list(Journal.default().entries())
    assert len(entries) == 1 and isinstance(entries[0], JobRecord), entries
    assert entries[0].state == "survivors"
    done = subprocess.run(tether_cmd("reap"), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert b"given up by its supervisor; terminated, nothing left" in done.stdout
    assert not list(Journal.default().entries())


def test_frozen_member_is_reported_as_survivor(tmp_path: Path) -> None:
    with v1_freezer(f"tether-test-{os.getpid()}-lib") as freezer:
        job = tether.start(
            ["sh", "-c", f"sleep 100 & echo $! > {tmp_path}/pid; wait"],
            policy="TERM,200ms,KILL,1s",
        )
        pid = 0
        try:
            pid = int(wait_for_file(tmp_path / "pid"))
            wait_for(lambda: pid in job.found_by(), what="the member to be scanned")
            freeze(freezer, pid)
            start = time.monotonic()
            report = job.cancel("test")
            elapsed = time.monotonic() - start
            assert elapsed < LIVENESS, "the wait for a D-state member must be bounded"
            assert report.complete is False
            survivors = {s.pid: s for s in report.survivors}
            assert pid in survivors, report.survivors
            s = survivors[pid]
            assert s.state == "D"
            assert "D state" in s.reason
            wchan = Path(f"/proc/{pid}/wchan")
            if wchan.exists() and wchan.read_text() not in ("", "0"):
                assert s.wchan, "wchan was readable but not reported"
            rec = next(m for m in report.members if m.pid == pid)
            assert rec.outcome == "survived"
            assert f"SURVIVOR pid {pid} state D" in report.render_text()
            assert report.to_dict()["survivors"][0]["pid"] == pid
        finally:
            (freezer / "freezer.state").write_text("THAWED")
            job.cancel("cleanup")
            if pid:
                wait_for(lambda: _gone_or_zombie(pid), 10.0, "the thawed member")
            job._popen.wait(timeout=10)  # the leader, killed by the policy
            remove_job_cgroup(job.cgroup_path)
            reap_given_up_record()


def test_frozen_member_makes_cli_exit_125(tmp_path: Path) -> None:
    errfile = tmp_path / "stderr"
    # A file, not a pipe: the frozen survivor holds tether's stderr open after tether exits.
    with v1_freezer(f"tether-test-{os.getpid()}-cli") as freezer, errfile.open("w") as errf:
        proc = subprocess.Popen(
            tether_cmd(
                "run", "-q", "--policy", "TERM,200ms,KILL,1s", "--",
                "sh", "-c", f"sleep 100 & echo $! > {tmp_path}/pid; wait",
            ),
            stderr=errf,
        )  # fmt: skip
        cgroup_path = None
        pid = 0
        try:
            pid = int(wait_for_file(tmp_path / "pid"))
            mount = cgroup2_mount()
            rel = procfs.parse_cgroup_v2(Path(f"/proc/{pid}/cgroup").read_bytes())
            if mount is not None and rel and "tether-" in rel:
                cgroup_path = os.path.join(mount, rel.lstrip("/"))
            freeze(freezer, pid)
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=LIVENESS)
            assert time.monotonic() - start < LIVENESS
            err = errfile.read_text()
            assert proc.returncode == 125, err
            assert "Traceback" not in err
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            assert "survived" in lines[0]
            assert f"pid {pid} (D)" in lines[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            (freezer / "freezer.state").write_text("THAWED")
            if pid:
                # Thawed, it dies of the pending KILL; tether is gone, so make sure.
                h = ProcessHandle.open(pid)
                if h is not None:
                    h.send_signal(signal.SIGKILL)
                    h.close()
                wait_for(lambda: _gone_or_zombie(pid), 10.0, "the thawed member")
            remove_job_cgroup(cgroup_path)
            reap_given_up_record()


def _gone_or_zombie(pid: int) -> bool:
    try:
        with procfs.ProcDir(pid) as d:
            return d.stat().state in ("Z", "X")
    except (procfs.ProcessGone, OSError):
        return True


def test_job_cgroup_from_path_can_wait_empty() -> None:
    """The leak guard and remove_job_cgroup rebuild a JobCgroup from a bare path."""
    mount = cgroup2_mount()
    if mount is None or not is_root():
        pytest.skip("needs root and a cgroup2 mount")
    parent = os.path.join(mount, (procfs_own_cgroup() or "/").lstrip("/"))
    path = os.path.join(parent, f"tether-test-empty-{os.getpid()}")
    os.mkdir(path)
    cg = JobCgroup(path)
    try:
        assert cg.wait_empty(0.1) is True
    finally:
        assert cg.remove()


def procfs_own_cgroup() -> str | None:
    return procfs.parse_cgroup_v2(Path("/proc/self/cgroup").read_bytes())
