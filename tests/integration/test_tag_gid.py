"""Supplementary-group tagging (`tether run --tag-gid`, `tether kill --gid`).

The tag survives setsid, a double fork and a cleared environment, so it finds
the one escapee no other tracker can see when neither a cgroup nor a
subreaper is in use.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import (
    alive,
    is_root,
    kill_identity,
    proc_stat,
    tether_cmd,
    wait_for_exec,
    wait_for_file,
)

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (uid 0) to tag groups")

TAG = 47113  # a gid no user is a member of


def groups(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    return set()


def escapee_script(tmp_path: Path) -> str:
    # Double fork + setsid + env -i: found by no session, cookie or parent link.
    return (
        f"(setsid env -i sh -c 'echo $$ > {tmp_path}/escapee; exec sleep 300' &); "
        f"while [ ! -e {tmp_path}/go ]; do sleep 0.05; done"
    )


def read_escapee(tmp_path: Path) -> tuple[int, int]:
    pid = int(wait_for_file(tmp_path / "escapee"))
    wait_for_exec(pid, "sleep")
    st = proc_stat(pid)
    assert st is not None
    return pid, st.starttime


def test_tagged_escapee_is_found_by_the_job(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    proc = subprocess.Popen(
        tether_cmd("run", "-q", "--tag-gid", str(TAG), "--trackers", "session,walk",
                   "--timeout", "30s", "--json", str(report_file),
                   "--", "sh", "-c", escapee_script(tmp_path)),
    )  # fmt: skip
    escapee = read_escapee(tmp_path)
    try:
        assert TAG in groups(escapee[0])
        (tmp_path / "go").touch()
        assert proc.wait(timeout=30) == 0
        report = json.loads(report_file.read_text())
        found = {m["pid"]: m for m in report["members"]}
        assert found[escapee[0]]["found_by"] == ["gid"]
        assert found[escapee[0]]["outcome"] == "killed"
        assert not alive(*escapee)
    finally:
        kill_identity(*escapee)


def test_kill_by_gid(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        tether_cmd("run", "-q", "--tag-gid", str(TAG), "--", "sh", "-c", escapee_script(tmp_path))
    )
    escapee = read_escapee(tmp_path)
    try:
        done = subprocess.run(
            tether_cmd("kill", "--gid", str(TAG), "--json", "-"), capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert escapee[0] in {m["pid"] for m in report["members"]}
        assert not alive(*escapee)
        # The job's leader carried the tag too: tether run saw it killed.
        assert proc.wait(timeout=30) == 128 + 15
    finally:
        kill_identity(*escapee)
        (tmp_path / "go").touch()
        proc.wait(timeout=30)


def test_kill_needs_exactly_one_target() -> None:
    for args in (("kill",), ("kill", "--gid", "5", "1234")):
        done = subprocess.run(tether_cmd(*args), capture_output=True, check=False)
        assert done.returncode == 2
        assert done.stderr.decode() == "tether: give either a PID or --gid GID\n"


def test_tag_gid_needs_root() -> None:
    from helpers import as_user, ensure_unprivileged_user, user_python

    user = ensure_unprivileged_user()
    python = user_python(user)
    if python is None:
        pytest.skip("no Python the unprivileged user can run with tether importable")
    done = subprocess.run(
        as_user(user, [*python, "-m", "tether.cli", "run", "--tag-gid", str(TAG), "--", "true"]),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 125
    assert done.stderr.decode() == (
        "tether: tagging a job with a group (--tag-gid) needs root (CAP_SETGID)\n"
    )
