"""CI runners' cancel sequences, with their real signal timing.

A runner that cancels a step signals the step's process (tether), waits,
signals again and finally SIGKILLs it. Measured before: GitHub Actions (INT,
TERM 7.5 s later, KILL at 10 s) left a TERM-ignoring child alive for 20 s,
since only a second INT moved tether on, and the watchdog restarted the
policy from its first step after the runner's KILL. Now every further signal
moves the policy one step on, and the watchdog resumes the step the journal
recorded. The policies here are the ones docs/ci-runners.md recommends.

Each job has a polite child (its TERM handler writes a marker and exits) and
a stubborn one (logs every TERM it gets and carries on): the test asserts
the polite handler ran once, the stubborn one saw exactly one TERM (nobody
started the policy over), and nothing is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from helpers import alive, read_marks, tether_cmd, wait_for, wait_for_marks

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    marks, name, polite = sys.argv[1], sys.argv[2], sys.argv[3] == "polite"
    def on_term(signum, frame):
        with open(os.path.join(marks, name + ".terms"), "a") as f:
            f.write(f"{signal.Signals(signum).name}\\n")
        if polite:
            os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the runner's tether gets INT
    with open(os.path.join(marks, f".{name}.tmp"), "w") as f:
        with open(f"/proc/{os.getpid()}/stat") as st:
            f.write(f"{os.getpid()} {st.read().rsplit(')', 1)[1].split()[19]}\\n")
    os.rename(os.path.join(marks, f".{name}.tmp"), os.path.join(marks, name + ".pid"))
    while True:
        time.sleep(3600)
    """
)

#: Signal, seconds after the cancel, and what the runner signals: the step's
#: process, or its process group (it started the step as a group leader).
Sequence_ = Sequence[tuple[float, int, str]]

RUNNERS: dict[str, tuple[Sequence_, str]] = {
    # actions/runner: SIGINT, 7.5 s, SIGTERM, 2.5 s, then the process tree is killed.
    "github-actions": (((0.0, signal.SIGINT, "proc"), (7.5, signal.SIGTERM, "proc"),
                        (10.0, signal.SIGKILL, "group")), "INT,5s,TERM,2s,KILL"),
    # gitlab-runner (shell executor): SIGTERM to the process group, SIGKILL 10 s later.
    "gitlab-runner": (((0.0, signal.SIGTERM, "group"), (10.0, signal.SIGKILL, "group")),
                      "TERM,8s,KILL"),
    # Jenkins durable-task sh step: SIGTERM, then SIGKILL after 10 s.
    "jenkins": (((0.0, signal.SIGTERM, "group"), (10.0, signal.SIGKILL, "group")),
                "TERM,8s,KILL"),
    # buildkite-agent: cancel-signal (SIGTERM) to the group, cancel-grace-period 10 s, SIGKILL.
    "buildkite": (((0.0, signal.SIGTERM, "group"), (10.0, signal.SIGKILL, "group")),
                  "TERM,8s,KILL"),
}  # fmt: skip


def _start(tmp_path: Path, policy: str) -> tuple[subprocess.Popen[bytes], Path]:
    marks = tmp_path / "marks"
    marks.mkdir()
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    script = (
        f'"{sys.executable}" "{child}" "{marks}" polite polite & '
        f'"{sys.executable}" "{child}" "{marks}" stubborn stubborn & wait'
    )
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(
            tether_cmd("run", "--policy", policy, "--json-file", str(tmp_path / "report.json"),
                       "--", "sh", "-c", script),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # the runner starts each step as a process group
        )  # fmt: skip
    return proc, marks


def _play(proc: subprocess.Popen[bytes], sequence: Sequence_) -> list[str]:
    """Send the runner's signals on its schedule; what found tether already gone."""
    t0 = time.monotonic()
    missed = []
    for at, sig, where in sequence:
        while (left := t0 + at - time.monotonic()) > 0 and proc.poll() is None:
            time.sleep(min(left, 0.05))
        if proc.poll() is not None:
            missed.append(signal.Signals(sig).name)
            continue
        if where == "group":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    proc.wait(timeout=30)
    return missed


def _terms(marks: Path, name: str) -> list[str]:
    path = marks / f"{name}.terms"
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_runner_cancel_sequence_with_the_recommended_policy(tmp_path: Path, runner: str) -> None:
    sequence, policy = RUNNERS[runner]
    proc, marks = _start(tmp_path, policy)
    ids = wait_for_marks(marks, ["polite", "stubborn"])
    missed = _play(proc, sequence)
    # tether finished its policy, report included, before the runner's KILL.
    assert "SIGKILL" in missed, f"the runner had to SIGKILL tether (rc {proc.returncode})"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["complete"] is True
    assert _terms(marks, "polite") == ["SIGTERM"]
    assert _terms(marks, "stubborn") == ["SIGTERM"]
    assert not any(alive(*ident) for ident in ids.values())
    by_pid = {m["pid"]: m for m in report["members"]}
    assert by_pid[ids["stubborn"][0]]["ended_by"] == "KILL"
    assert by_pid[ids["polite"][0]]["ended_by"] == "TERM"


def test_github_actions_term_moves_the_default_policy_on(tmp_path: Path) -> None:
    # The default TERM,10s,KILL: the runner's TERM (7.5 s after its INT) ends
    # the grace at once, so the job is empty before the runner's KILL at 10 s.
    sequence, _policy = RUNNERS["github-actions"]
    proc, marks = _start(tmp_path, "TERM,10s,KILL")
    ids = wait_for_marks(marks, ["polite", "stubborn"])
    missed = _play(proc, sequence)
    assert "SIGKILL" in missed, "the runner had to SIGKILL tether"
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["signal"] for s in report["steps"]] == ["TERM", "KILL"]
    assert report["steps"][1]["started_at"] >= 7.0, "KILL came before the runner's TERM"
    assert _terms(marks, "stubborn") == ["SIGTERM"]
    assert not any(alive(*ident) for ident in ids.values())


def test_watchdog_resumes_the_step_reached_after_the_runner_kills_tether(tmp_path: Path) -> None:
    # The runner SIGKILLs tether in the middle of TERM's grace: the watchdog
    # takes over from the journal and goes on to KILL once the grace left is
    # spent — it does not start over with a second TERM and a fresh grace.
    proc, marks = _start(tmp_path, "TERM,4s,KILL")
    ids = wait_for_marks(marks, ["polite", "stubborn"])
    os.killpg(proc.pid, signal.SIGTERM)
    wait_for(lambda: _terms(marks, "stubborn") == ["SIGTERM"], what="the stubborn child's TERM")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(lambda: not any(alive(*i) for i in ids.values()), 30, "the watchdog to finish")
    assert _terms(marks, "stubborn") == ["SIGTERM"], "the watchdog started the policy over"
    assert _terms(marks, "polite") == ["SIGTERM"]
    # The watchdog says so once it has proven the tree empty, which can come a
    # little after the last member is seen dead here: wait (bounded) for it.
    stderr = tmp_path / "stderr"
    wait_for(lambda: "nothing left" in stderr.read_text(), 30, "the watchdog's final line")
    assert "Traceback" not in stderr.read_text()
    assert set(read_marks(marks)) == {"polite", "stubborn"}
