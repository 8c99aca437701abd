"""tether epilog as Slurm and Torque run it: environment or argv, no PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prune_support import Cgroups, Procs

from helpers import wait_for


def epilog(
    args: list[str], env: dict[str, str], torque: list[str] | None = None
) -> tuple[int, dict[str, Any], str]:
    argv = [sys.executable, "-m", "tether.cli", "epilog", "--json", "--no-syslog", *args]
    if torque is not None:
        argv += ["--", *torque]
    done = subprocess.run(
        argv, capture_output=True, timeout=120, check=False, env=env, stdin=subprocess.DEVNULL
    )
    out = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, out, done.stderr.decode(errors="replace")


def slurm_env(procs: Procs, job: str, user: str = "a") -> dict[str, str]:
    u = procs.users[user]
    # What slurmd gives an Epilog: no PATH. The journal is this test's.
    return {
        "SLURM_JOB_ID": job,
        "SLURM_JOB_UID": str(u.pw_uid),
        "SLURM_JOB_USER": u.pw_name,
        "TETHER_RUNTIME_DIR": os.environ["TETHER_RUNTIME_DIR"],
    }


def test_slurm_epilog_with_another_job_of_the_user(procs: Procs, cgroups: Cgroups) -> None:
    a = procs.users["a"].pw_uid
    in_cgroup = procs.start("a", "in-cgroup")
    cgroups.move(f"slurm/uid_{a}/job_76/step_batch", in_cgroup.pid)
    marked = procs.start("a", "marked", env=("SLURM_JOB_ID=76",))
    unrelated = procs.start("a", "unrelated")
    other_job = procs.start("a", "other-job")
    cgroups.move(f"slurm/uid_{a}/job_77/step_0", other_job.pid)
    other_user = procs.start("b", "other-user", env=("SLURM_JOB_ID=76",))
    rc, out, err = epilog(
        ["--batch", "none", "--slurm-cgroup-root", str(cgroups.root)], slurm_env(procs, "76")
    )
    assert rc == 0, err
    assert out["epilog"]["whole_user"] is False
    assert {s["pid"] for s in out["strays"]} == {in_cgroup.pid, marked.pid}
    assert all(s["rule"].startswith("left behind by ended job 76") for s in out["strays"])
    wait_for(lambda: not (in_cgroup.alive or marked.alive), what="the job's leftovers")
    assert unrelated.alive and other_job.alive and other_user.alive


def test_slurm_epilog_without_another_job_kills_all_of_the_user(
    procs: Procs, cgroups: Cgroups
) -> None:
    a = procs.users["a"].pw_uid
    in_cgroup = procs.start("a", "in-cgroup")
    cgroups.move(f"slurm/uid_{a}/job_76/step_batch", in_cgroup.pid)
    unrelated = procs.start("a", "unrelated")
    young = procs.start("a", "young")  # the job is over: no age floor by default
    other_user = procs.start("b", "other-user")
    b_job = procs.start("b", "b-job")
    cgroups.move(f"slurm/uid_{procs.users['b'].pw_uid}/job_80", b_job.pid)
    rc, out, err = epilog(
        ["--batch", "none", "--slurm-cgroup-root", str(cgroups.root)], slurm_env(procs, "76")
    )
    assert rc == 0, err
    assert out["epilog"]["whole_user"] is True
    assert {s["pid"] for s in out["strays"]} == {in_cgroup.pid, unrelated.pid, young.pid}
    wait_for(
        lambda: not (in_cgroup.alive or unrelated.alive or young.alive), what="user a's processes"
    )
    assert other_user.alive and b_job.alive


def test_torque_epilogue_argv_with_an_empty_environment(procs: Procs, tmp_path: Path) -> None:
    ended = procs.start("a", "ended-session", mode="session")
    marked = procs.start("a", "marked", env=("PBS_JOBID=123.server",))
    other = procs.start("a", "other-job", mode="session")
    unrelated = procs.start("a", "unrelated")
    sessions = tmp_path / "sessions"
    sessions.write_text(f"{other.sid()} 124.server tether-prune-a\n")
    torque = ["123.server", "tether-prune-a", "tether-prune-a", "jobname", str(ended.sid()),
              "ncpus=1", "cput=0", "batch", "acct", "0"]  # fmt: skip
    rc, out, err = epilog(["--batch", "none", "--sessions-file", str(sessions)], {}, torque)
    assert rc == 0, err
    assert out["epilog"] == {
        "job_id": "123.server",
        "uid": procs.users["a"].pw_uid,
        "user": "tether-prune-a",
        "whole_user": False,
    }
    assert {s["pid"] for s in out["strays"]} == {ended.pid, marked.pid}
    wait_for(lambda: not (ended.alive or marked.alive), what="the job's leftovers")
    assert other.alive and unrelated.alive


def test_epilog_dry_run_and_harmless_failures(procs: Procs) -> None:
    stray = procs.start("a", "stray")
    env = slurm_env(procs, "90")
    rc, out, err = epilog(["--batch", "none", "--dry-run"], env)
    assert rc == 0, err
    assert [s["pid"] for s in out["strays"]] == [stray.pid]
    assert out["strays"][0]["outcome"] == "would kill" and stray.signals() == []
    # Bad input never drains the node by accident: exit 0, unless --strict.
    for bad_env in (
        {},
        {**env, "SLURM_JOB_UID": "abc", "SLURM_JOB_USER": "no-such-user-xyz"},
        {**env, "SLURM_JOB_USER": "tether-prune-b"},
    ):
        rc, out, err = epilog(["--batch", "none"], bad_env)
        assert rc == 0 and out == {} and "nothing was killed" in err, err
        rc, out, err = epilog(["--batch", "none", "--strict"], bad_env)
        assert rc == 2 and out == {}
    rc, out, err = epilog(["--batch", "none", "--policy", "NOPE"], env)
    assert rc == 0 and "nothing was killed" in err
    rc, out, err = epilog(["--batch", "none"], {}, ["1.server", "no-such-user-xyz"])
    assert rc == 0 and "unknown user" in err
    assert stray.alive and stray.signals() == []


def test_epilog_with_an_unreadable_job_list_kills_only_the_job(
    procs: Procs, cgroups: Cgroups, tmp_path: Path
) -> None:
    a = procs.users["a"].pw_uid
    in_cgroup = procs.start("a", "in-cgroup")
    cgroups.move(f"slurm/uid_{a}/job_76", in_cgroup.pid)
    marked = procs.start("a", "marked", env=("SLURM_JOB_ID=76",))
    unrelated = procs.start("a", "unrelated")
    args = ["--batch", "none", "--slurm-cgroup-root", str(cgroups.root),
            "--sessions-file", str(tmp_path / "missing")]  # fmt: skip
    rc, out, err = epilog(args, slurm_env(procs, "76"))
    assert rc == 0, err
    assert "only the ended job's own processes" in err
    assert [s["pid"] for s in out["strays"]] == [in_cgroup.pid]
    wait_for(lambda: not in_cgroup.alive, what="the job's cgroup member")
    assert marked.alive and unrelated.alive
    rc, out, err = epilog([*args, "--strict", "--dry-run"], slurm_env(procs, "76"))
    assert rc == 2


def test_epilog_of_a_system_user_does_nothing(procs: Procs) -> None:
    stray = procs.start("a", "stray")
    env = {**slurm_env(procs, "5"), "SLURM_JOB_UID": "0", "SLURM_JOB_USER": "root"}
    rc, out, err = epilog(["--batch", "none"], env)
    assert rc == 0, err
    assert stray.alive
    # --json still gets its document, with nothing to kill.
    assert out["epilog"]["uid"] == 0 and out["mode"] == "dry-run"
    assert out["strays"] == []
