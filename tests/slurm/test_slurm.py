"""`tether epilog` (contrib/slurm/tether-epilog, as shipped) and `tether prune`
against a real slurmd, for each proctrack plugin this machine runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from slurm_cluster import Lab

from helpers import SRC, alive, wait_for


def gone(lab: Lab, *names: str) -> bool:
    marks = lab.marks()
    return not any(alive(*marks[n]) for n in names)


def prune(lab: Lab, *args: str) -> tuple[int, dict[str, Any], str]:
    """`tether prune` as root on the node, scoped to the test users."""
    users = [f"--user={u.pw_name}" for u in lab.users.values()]
    done = subprocess.run(
        [sys.executable, "-m", "tether.cli", "prune", "--json", "--no-syslog", *users, *args],
        capture_output=True,
        timeout=120,
        check=False,
        env={**lab.cluster.env, "PYTHONPATH": SRC, "TETHER_CONFIG": str(lab.cluster.tether_toml)},
        stdin=subprocess.DEVNULL,
    )
    out = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, out, done.stderr.decode(errors="replace")


def test_the_nodes_only_job_leaves_nothing(lab: Lab) -> None:
    modes = ("setsid", "daemon", "nohup", "ignore-term")
    lab.job("a", "only", *modes)
    names = [f"only-{m}" for m in modes]
    wait_for(lambda: all(n in lab.marks() for n in names), 60, "the job's processes")
    lab.end("only")
    # The env -i daemon escaped every proctrack plugin but cgroup: the Epilog
    # (scontrol: "No job steps exist on this node.") must still kill it.
    wait_for(lambda: gone(lab, *names), 60, "every process the job left")
    # slurmd drops a successful Epilog's output: the record is the log file.
    log_file = lab.cluster.decisions
    wait_for(lambda: log_file.exists() and "event=done" in log_file.read_text(), 60, "the record")
    log = log_file.read_text()
    if lab.cluster.plugin != "cgroup":  # under proctrack/cgroup Slurm emptied the job cgroup
        assert "event=stray action=killed" in log, log


def test_two_jobs_of_one_user_the_other_survives(lab: Lab) -> None:
    # The ended job's double-forked helper keeps its environment: an `env -i`
    # one could not be told from the other job's (docs/slurm-epilog.md).
    lab.job("a", "ended", "daemon-env", "setsid", "nohup")
    lab.job("a", "running", "daemon-env", "setsid")
    ended = ["ended-daemon-env", "ended-setsid", "ended-nohup"]
    wait_for(
        lambda: {*ended, "running-daemon-env", "running-setsid"} <= set(lab.marks()),
        60,
        "both jobs' processes",
    )
    lab.end("ended")
    wait_for(lambda: gone(lab, *ended), 60, "the ended job's strays")
    wait_for(lambda: lab.cluster.job_state(lab.jobs[0]) == "GONE", 60, "the ended job to be gone")
    marks = lab.marks()
    assert alive(*marks["running-setsid"]) and alive(*marks["running-daemon-env"])
    assert lab.cluster.job_state(lab.jobs[1]) == "RUNNING"


def test_prune_kill_spares_running_jobs(lab: Lab) -> None:
    lab.job("a", "ja", "setsid", "daemon-env")
    lab.job("b", "jb", "nohup")
    stray_line = lab.leave("daemon-env", "stray")  # a user process in no job
    from helpers import as_user

    subprocess.run(as_user(lab.users["a"], ["sh", "-c", stray_line]), check=True, timeout=60)
    wait_for(lambda: {"ja-setsid", "ja-daemon-env", "jb-nohup", "stray"} <= set(lab.marks()), 60)
    rc, out, err = prune(lab, "--kill", "--min-age", "0")
    assert rc == 0, err
    marks = lab.marks()
    assert {s["pid"] for s in out["strays"]} == {marks["stray"][0]}
    wait_for(lambda: gone(lab, "stray"), 30, "the stray")
    assert all(alive(*marks[n]) for n in ("ja-setsid", "ja-daemon-env", "jb-nohup"))
    assert [lab.cluster.job_state(j) for j in lab.jobs] == ["RUNNING", "RUNNING"]


def test_prune_spares_a_job_while_slurmd_is_stopped(lab: Lab) -> None:
    lab.job("a", "held", "setsid")
    wait_for(lambda: "held-setsid" in lab.marks(), 60)
    lab.cluster.stop_slurmd()  # a restart or an upgrade: the job runs on under slurmstepd
    rc, out, err = prune(lab, "--min-age", "0")
    assert rc == 0, err
    assert out["strays"] == [], out["strays"]
    assert any(s["name"] == "scontrol" and s["used"] for s in out["sources"]), out["sources"]
    assert alive(*lab.marks()["held-setsid"])


def test_bad_epilog_input_kills_nothing(lab: Lab) -> None:
    lab.job("a", "bystander", "setsid")
    wait_for(lambda: "bystander-setsid" in lab.marks(), 60)
    epilog = str(lab.cluster.base / "etc" / "tether-epilog")
    uid = str(lab.users["a"].pw_uid)
    conf = {"SLURM_CONF": str(lab.cluster.conf)}
    for env in (
        {},  # missing variables
        {**conf, "SLURM_JOB_ID": "999", "SLURM_JOB_UID": "0", "SLURM_JOB_USER": "root"},
        {**conf, "SLURM_JOB_ID": "999", "SLURM_JOB_USER": "no-such-user-xyz"},
        {**conf, "SLURM_JOB_ID": "x", "SLURM_JOB_UID": uid},
    ):
        done = subprocess.run(
            [*lab.cluster.enter(), "env", "-i", *(f"{k}={v}" for k, v in env.items()), epilog],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (env, done.stderr)
    assert alive(*lab.marks()["bystander-setsid"])
    assert lab.cluster.node_state() == "mixed" or lab.cluster.node_state() == "allocated"
    assert os.path.exists(lab.cluster.decisions)
