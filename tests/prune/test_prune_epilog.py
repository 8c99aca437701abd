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
    args: list[str], env: dict[str, str], torque: list[str] | None = None, *, syslog: bool = False
) -> tuple[int, dict[str, Any], str]:
    quiet = [] if syslog else ["--no-syslog"]
    argv = [sys.executable, "-m", "tether.cli", "epilog", "--json", *quiet, *args]
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
        ["--batch", "none", "--force", "--slurm-cgroup-root", str(cgroups.root)],
        slurm_env(procs, "76"),
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
        ["--batch", "none", "--force", "--slurm-cgroup-root", str(cgroups.root)],
        slurm_env(procs, "76"),
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
    rc, out, err = epilog(
        ["--batch", "none", "--force", "--sessions-file", str(sessions)], {}, torque
    )
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
    rc, out, err = epilog(["--batch", "none", "--force", "--dry-run"], env)
    assert rc == 0, err
    assert [s["pid"] for s in out["strays"]] == [stray.pid]
    assert out["strays"][0]["outcome"] == "would kill" and stray.signals() == []
    # Bad input never drains the node by accident: exit 0, unless --strict.
    for bad_env in (
        {},
        {**env, "SLURM_JOB_UID": "abc", "SLURM_JOB_USER": "no-such-user-xyz"},
        {**env, "SLURM_JOB_USER": "tether-prune-b"},
    ):
        rc, out, err = epilog(["--batch", "none", "--force"], bad_env)
        assert rc == 0 and out == {} and "nothing was killed" in err, err
        rc, out, err = epilog(["--batch", "none", "--force", "--strict"], bad_env)
        assert rc == 2 and out == {}
    rc, out, err = epilog(["--batch", "none", "--force", "--policy", "NOPE"], env)
    assert rc == 0 and "nothing was killed" in err
    rc, out, err = epilog(["--batch", "none", "--force"], {}, ["1.server", "no-such-user-xyz"])
    assert rc == 0 and "unknown user" in err
    assert stray.alive and stray.signals() == []


def test_epilog_with_an_unreadable_job_list_kills_nothing(
    procs: Procs, cgroups: Cgroups, tmp_path: Path
) -> None:
    # Which other jobs run here is unknown, and under Slurm neither the ended
    # job's cgroup (gone) nor its session (none given) can stand in: nothing.
    a = procs.users["a"].pw_uid
    in_cgroup = procs.start("a", "in-cgroup")
    cgroups.move(f"slurm/uid_{a}/job_76", in_cgroup.pid)
    marked = procs.start("a", "marked", env=("SLURM_JOB_ID=76",))
    log = tmp_path / "decisions.log"
    args = ["--batch", "none", "--force", "--slurm-cgroup-root", str(cgroups.root),
            "--sessions-file", str(tmp_path / "missing")]  # fmt: skip
    rc, out, err = epilog([*args, "--log-file", str(log)], slurm_env(procs, "76"), syslog=True)
    assert rc == 0, err
    assert out == {} and "nothing was killed" in err and "missing" in err
    assert "nothing killed" in log.read_text()
    rc, out, err = epilog([*args, "--strict"], slurm_env(procs, "76"))
    assert rc == 2
    assert in_cgroup.alive and marked.alive
    assert in_cgroup.signals() == [] and marked.signals() == []


def test_epilog_refuses_batch_none_unless_forced(procs: Procs) -> None:
    # --batch none hides the user's other running jobs: their processes would die.
    stray = procs.start("a", "stray")
    rc, out, err = epilog(["--batch", "none"], slurm_env(procs, "91"))
    assert rc == 0 and out == {} and "--force" in err and "nothing was killed" in err
    rc, out, err = epilog(["--batch", "none", "--strict"], slurm_env(procs, "91"))
    assert rc == 2
    assert stray.alive and stray.signals() == []


def test_epilog_ignores_prunes_min_age(procs: Procs, tmp_path: Path) -> None:
    # The documented tether.toml sets [prune] min_age = "5m" for sweeps; the
    # job is over, so the epilog's floor is 0 unless --min-age says otherwise.
    config = tmp_path / "tether.toml"
    config.write_text('[prune]\nmin_age = "5m"\n')
    young = procs.start("a", "young")
    env = {**slurm_env(procs, "92"), "TETHER_CONFIG": str(config)}
    rc, out, err = epilog(["--batch", "none", "--force", "--dry-run"], env)
    assert rc == 0, err
    assert out["options"]["min_age"] == 0 and [s["pid"] for s in out["strays"]] == [young.pid]
    rc, out, err = epilog(["--batch", "none", "--force", "--dry-run", "--min-age", "5m"], env)
    assert out["strays"] == [] and out["options"]["min_age"] == 300
    assert young.alive


def test_epilog_of_a_system_user_does_nothing(procs: Procs) -> None:
    stray = procs.start("a", "stray")
    env = {**slurm_env(procs, "5"), "SLURM_JOB_UID": "0", "SLURM_JOB_USER": "root"}
    rc, out, err = epilog(["--batch", "none", "--force"], env)
    assert rc == 0, err
    assert stray.alive
    # --json still gets its document, with nothing to kill.
    assert out["epilog"]["uid"] == 0 and out["mode"] == "dry-run"
    assert out["strays"] == []
