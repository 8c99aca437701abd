"""How ``tether run`` ends: --preserve-status, --fail-on-leftovers (and the
API's fail_on_leftovers), and no zombie of its own (the watchdog) left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from helpers import tether_cmd, wait_for_file


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tether_cmd("run", *args), check=False, capture_output=True, text=True, timeout=60
    )


def _trapping(tmp_path: Path, status: int) -> list[str]:
    """sh that writes a marker in its TERM trap and exits ``status`` there."""
    trap = f"trap 'echo TERM >{tmp_path}/term; exit {status}' TERM; sleep 30 & wait"
    return ["sh", "-c", trap]


def test_timeout_is_124_and_preserve_status_keeps_the_commands(tmp_path: Path) -> None:
    plain = _run("--timeout", "0.2s", "--", *_trapping(tmp_path, 3))
    assert wait_for_file(tmp_path / "term") == "TERM\n"
    assert plain.returncode == 124, plain.stderr
    (tmp_path / "term").unlink()
    kept = _run("--timeout", "0.2s", "--preserve-status", "--", *_trapping(tmp_path, 3))
    assert wait_for_file(tmp_path / "term") == "TERM\n"
    assert kept.returncode == 3, kept.stderr


def test_preserve_status_of_a_leader_killed_by_the_policy_is_128_plus_n() -> None:
    done = _run("--timeout", "0.2s", "--preserve-status", "-k", "0.1s", "--", "sh", "-c",
                "trap '' TERM; sleep 30")  # fmt: skip
    assert done.returncode == 128 + 9, done.stderr


def test_fail_on_leftovers_exits_123_and_says_why(tmp_path: Path) -> None:
    leaky = ["sh", "-c", "sleep 30 & exit 0"]
    assert _run("--", *leaky).returncode == 0
    done = _run("--fail-on-leftovers", "--json-file", str(tmp_path / "r.json"), "--", *leaky)
    assert done.returncode == 123, done.stderr
    assert "1 member(s) were still running when the command exited (status 0)" in done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["complete"] and report["reason"] == "leftovers after the leader exited"
    clean = _run("--fail-on-leftovers", "--", "sh", "-c", "exit 4")
    assert clean.returncode == 4  # nothing left: the command's own status


def test_fail_on_leftovers_counts_leftovers_that_were_waited_for() -> None:
    # 2 s: the leftover must still run when the leader's exit is seen, on a
    # loaded machine too (0.2 s was not always enough beside a full suite).
    done = _run("--fail-on-leftovers", "--wait-leftovers", "--", "sh", "-c", "sleep 2 & exit 0")
    assert done.returncode == 123, done.stderr


def test_api_fail_on_leftovers_with_check_raises() -> None:
    leaky = ["sh", "-c", "sleep 30 & exit 0"]
    assert tether.run(leaky, check=True).returncode == 0
    with pytest.raises(tether.JobFailedError) as caught:
        tether.run(leaky, check=True, fail_on_leftovers=True)
    assert caught.value.returncode == 123
    assert caught.value.report is not None and len(caught.value.report.killed) == 1


#: A subreaper runs `tether run`: whatever tether leaves behind re-parents to
#: it (as to a container's init). After tether's exit it lists its children.
ORPHAN_CATCHER = """\
import json, os, subprocess, sys
from tether._platform.linux import prctl
prctl.set_child_subreaper(True)
done = subprocess.run(sys.argv[1:])
children = []
for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/children") as f:
        children += f.read().split()
states = {}
for pid in children:
    with open(f"/proc/{pid}/stat") as f:
        states[pid] = f.read().rpartition(")")[2].split()[0]
print(json.dumps({"rc": done.returncode, "children": states}))
"""


def test_tether_run_leaves_no_watchdog_behind(tmp_path: Path) -> None:
    catcher = tmp_path / "catcher.py"
    catcher.write_text(ORPHAN_CATCHER)
    for _ in range(5):  # it was a race tether lost 159 times in 162
        done = subprocess.run(
            [sys.executable, str(catcher), *tether_cmd("run", "--", "true")],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out == {"rc": 0, "children": {}}
