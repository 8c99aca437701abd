"""tether run / kill as a real non-root user: no cgroup, subreaper still works, EPERM reported."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import alive, as_user, ensure_unprivileged_user, is_root, user_python, wait_for_file
from tether._platform.linux import procfs
from tether.process import ProcessHandle

LIVENESS = 30.0

pytestmark = pytest.mark.skipif(
    not is_root(), reason="creating and switching to an unprivileged user needs root"
)


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    return ensure_unprivileged_user()


@pytest.fixture(scope="module")
def user_tether(user: pwd.struct_passwd) -> list[str]:
    py = user_python(user)
    if py is None:
        pytest.skip(f"no Python interpreter that uid {user.pw_uid} can run with tether importable")
    return [*py, "-m", "tether.cli"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory both root and the unprivileged user can write (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="tether-unpriv-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def identity(pid: int) -> tuple[int, int]:
    with procfs.ProcDir(pid) as d:
        return pid, d.stat().starttime


def kill_identities(idents: list[tuple[int, int]]) -> None:
    for pid, st in idents:
        h = ProcessHandle.open(pid, st)
        if h is not None:
            h.send_signal(signal.SIGKILL)
            h.close()


# Every escape a non-root job can try; each pid lands in a file of its own.
_ESCAPES = r"""
d=$1
(sleep 100 & echo $! > "$d/dfork") &
setsid sleep 100 & echo $! > "$d/setsid"
sh -c 'trap "" TERM; echo $$ > "$1/ignorer"; while :; do sleep 1; done' sh "$d" &
env -i sleep 100 & echo $! > "$d/envi"
(setsid env -i sleep 100 & echo $! > "$d/everything") &
wait
"""
_ESCAPE_NAMES = ("dfork", "setsid", "ignorer", "envi", "everything")


def test_escapes_are_gone_after_timeout(
    user: pwd.struct_passwd, user_tether: list[str], shared_dir: Path
) -> None:
    report_file = shared_dir / "report.json"
    proc = subprocess.Popen(
        as_user(
            user,
            [
                *user_tether, "run", "-q", "--timeout", "3s", "--policy", "TERM,300ms,KILL,2s",
                "--json", str(report_file), "--", "sh", "-c", _ESCAPES, "sh", str(shared_dir),
            ],
        ),
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    members: list[tuple[int, int]] = []
    try:
        for name in _ESCAPE_NAMES:
            members.append(identity(int(wait_for_file(shared_dir / name))))
        for pid, _ in members:
            uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()
            assert int(uids[0]) == user.pw_uid, "the job must run as the unprivileged user"
        _, err = proc.communicate(timeout=LIVENESS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = [m for m in members if alive(*m)]
        kill_identities(left)
    assert proc.returncode == 124, err
    assert not left, f"survived tether run as uid {user.pw_uid}: {left}"

    report = json.loads(report_file.read_text())
    assert report["complete"] is True
    assert report["reason"] == "timeout"
    pids = {m["pid"]: m for m in report["members"]}
    for pid, _ in members:
        assert pid in pids, f"pid {pid} was not found as a member"
        assert pids[pid]["outcome"] == "killed"
    trackers = {t["name"]: t for t in report["trackers"]}
    assert trackers["cgroup"]["used"] is False
    assert f"uid {user.pw_uid}" in trackers["cgroup"]["reason"]
    assert trackers["subreaper"]["used"] is True
    assert any("pid hopper" in c for c in report["caveats"]), report["caveats"]
    # Only the subreaper can have found the double-forked, setsid, env -i sleep.
    assert "subreaper" in pids[members[-1][0]]["found_by"]


# A tree whose leader is the user's but one member stays root: the leader
# (started by root in a new session) forks a child, then drops to the user.
# The user's `tether kill` finds the child (same session, child of the leader)
# and may not signal it: EPERM must be reported, never a silent success.
_MIXED_TREE = """
import os, signal, subprocess, sys
d, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kid = subprocess.Popen(["sleep", "100"])
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
with open(d + "/kid.tmp", "w") as f:
    f.write(str(kid.pid))
os.rename(d + "/kid.tmp", d + "/kid")
signal.pause()
"""


def test_kill_reports_a_member_it_may_not_signal(
    user: pwd.struct_passwd, user_tether: list[str], shared_dir: Path
) -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", _MIXED_TREE, str(shared_dir), str(user.pw_uid), str(user.pw_gid)],
        start_new_session=True,
    )
    members: list[tuple[int, int]] = []
    try:
        kid = int(wait_for_file(shared_dir / "kid"))
        members = [identity(leader.pid), identity(kid)]
        status = Path(f"/proc/{kid}/status").read_text()
        assert status.split("Uid:")[1].split()[:4] == ["0"] * 4
        status = Path(f"/proc/{leader.pid}/status").read_text()
        assert status.split("Uid:")[1].split()[0] == str(user.pw_uid)

        report_file = shared_dir / "kill.json"
        done = subprocess.run(
            as_user(
                user,
                [
                    *user_tether, "kill", "--policy", "TERM,300ms,KILL,500ms",
                    "--json", str(report_file), str(leader.pid),
                ],
            ),
            capture_output=True,
            text=True,
            timeout=LIVENESS,
            check=False,
        )  # fmt: skip
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == 1, done.stdout + done.stderr
        report = json.loads(report_file.read_text())
        assert report["complete"] is False
        by_pid = {m["pid"]: m for m in report["members"]}
        assert by_pid[kid]["outcome"] == "denied", report["members"]
        assert by_pid[leader.pid]["outcome"] == "killed", report["members"]
        survivors = {s["pid"]: s for s in report["survivors"]}
        assert kid in survivors
        assert "permission denied" in survivors[kid]["reason"]
        assert f"SURVIVOR pid {kid}" in done.stdout
        assert alive(*members[1]), "the root-owned member cannot have been killed by the user"
        leader.wait(timeout=LIVENESS)
        assert leader.returncode == -signal.SIGTERM
    finally:
        kill_identities(members)
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_a_tracker_asked_for_by_name_that_cannot_work_is_an_error(
    user: pwd.struct_passwd, user_tether: list[str]
) -> None:
    # Before, as a user `--trackers cgroup` tracked nothing: the leftovers kept
    # running and the report said "confirmed empty by the kernel".
    done = subprocess.run(
        as_user(user, [*user_tether, "run", "--trackers", "cgroup", "--", "true"]),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 125
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tether: tracker cgroup was asked for but cannot be used: ")
    assert "--trackers auto" in lines[0]
    auto = subprocess.run(
        as_user(user, [*user_tether, "run", "--trackers", "session,walk", "--", "true"]),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert auto.returncode == 0, auto.stderr
