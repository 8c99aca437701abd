"""tether prune on real processes of real users: what goes, what stays, and why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prune_support import Cgroups, Procs

from helpers import tether_cmd, wait_for

SCOPE = ("--user", "tether-prune-a", "--user", "tether-prune-b", "--user", "tether-prune-c")


def prune(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    """Run `tether prune --json` scoped to the test users; (status, JSON, stderr)."""
    done = subprocess.run(
        tether_cmd("prune", "--json", "--no-syslog", "--batch", "none", *SCOPE, *args),
        capture_output=True,
        timeout=120,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    out = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, out, done.stderr.decode(errors="replace")


def test_only_strays_go_while_other_jobs_run(procs: Procs, tmp_path: Path) -> None:
    stray_a = procs.start("a", "stray-a")
    stray_a2 = procs.start("a", "stray-a2")
    stray_b = procs.start("b", "stray-b")
    # The same user's other job, known to the batch system by its session.
    job_a = procs.start("a", "job-a", mode="session")
    # A third user's job under a root tether supervisor (its journal record is
    # in this test's TETHER_RUNTIME_DIR, as /run/tether would be).
    ready = procs.dir / "job-c.ready"
    job_c = subprocess.Popen(
        tether_cmd(
            "run",
            "--",
            "setpriv",
            f"--reuid={procs.users['c'].pw_uid}",
            f"--regid={procs.users['c'].pw_gid}",
            "--init-groups",
            "sh",
            "-c",
            f"echo $$ > {ready}.tmp && mv {ready}.tmp {ready} && exec sleep 600",
        ),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(ready.exists, timeout=30, what="job c")
        job_c_pid = int(ready.read_text())
        sessions = tmp_path / "sessions"
        sessions.write_text(f"# sid job user\n{job_a.sid()} 4242 tether-prune-a\n")
        rc, out, err = prune("--kill", "--min-age", "0", "--sessions-file", str(sessions), "-v")
        assert rc == 0, err
        assert {s["pid"] for s in out["strays"]} == {stray_a.pid, stray_a2.pid, stray_b.pid}
        assert all(s["outcome"] == "killed" for s in out["strays"]), out["strays"]
        wait_for(lambda: not (stray_a.alive or stray_a2.alive or stray_b.alive), what="strays")
        assert job_a.alive
        assert job_c.poll() is None and os.path.exists(f"/proc/{job_c_pid}")
        reasons = {e["pid"]: e["reason"] for e in out["exempt_user_processes"]}
        assert reasons[job_a.pid] == "in sessions-file job 4242"
        assert reasons[job_c_pid].startswith("in tether job ")
        # Each stray was TERMed (the first step) and died of it.
        assert all(signal.SIGTERM in s.signals() for s in (stray_a, stray_a2, stray_b))
    finally:
        job_c.send_signal(signal.SIGTERM)
        job_c.wait(timeout=60)


def test_spoofed_cookie_does_not_save_a_stray(procs: Procs) -> None:
    ready = procs.dir / "job.ready"
    job = subprocess.Popen(
        tether_cmd(
            "run",
            "--",
            "setpriv",
            f"--reuid={procs.users['a'].pw_uid}",
            f"--regid={procs.users['a'].pw_gid}",
            "--init-groups",
            "sh",
            "-c",
            f'echo "$$ $TETHER_JOB_ID" > {ready}.tmp && mv {ready}.tmp {ready} && exec sleep 600',
        ),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(ready.exists, timeout=30, what="the job")
        member, cookie = ready.read_text().split()
        # Same user, the live job's own cookie, but not a member.
        spoof = procs.start("a", "spoof", env=(f"TETHER_JOB_ID={cookie}",))
        rc, out, err = prune("--kill", "--min-age", "0")
        assert rc == 0, err
        assert [s["pid"] for s in out["strays"]] == [spoof.pid]
        wait_for(lambda: not spoof.alive, what="the spoofing stray")
        assert os.path.exists(f"/proc/{member}") and job.poll() is None
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)


def test_setuid_style_process_is_skipped(procs: Procs) -> None:
    uid = procs.users["a"].pw_uid
    gid = procs.users["a"].pw_gid
    # ruid above the floor, euid (and so suid, fsuid) root: a setuid program.
    setuid = procs.start(
        "a", "setuid", setpriv=(f"--ruid={uid}", "--euid=0", f"--regid={gid}", "--clear-groups")
    )
    plain = procs.start("a", "plain")
    with open(f"/proc/{setuid.pid}/status") as f:
        uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
    assert uids == [str(uid), "0", "0", "0"]
    rc, out, err = prune("--kill", "--min-age", "0")
    assert rc == 0, err
    assert [s["pid"] for s in out["strays"]] == [plain.pid]
    assert setuid.alive and setuid.signals() == []
    assert out["exempt"]["a uid below the floor (system account or setuid)"] >= 1


def test_dry_run_sends_no_signal(procs: Procs) -> None:
    strays = [procs.start("a", "dry-a"), procs.start("b", "dry-b")]
    rc, out, err = prune("--min-age", "0")
    assert rc == 0, err
    assert out["mode"] == "dry-run" and out["report"] is None
    assert {s["pid"] for s in out["strays"]} == {s.pid for s in strays}
    assert {s["outcome"] for s in out["strays"]} == {"would kill"}
    for s in strays:
        # No handler ran (TERM, HUP, INT, QUIT, USR1/2, CONT, ALRM), none is
        # pending, and it was never stopped (SIGSTOP cannot be caught).
        assert s.alive and s.signals() == []
        with open(f"/proc/{s.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        assert int(status["SigPnd"], 16) == 0 and int(status["ShdPnd"], 16) == 0
        assert status["State"].split()[0] == "S"


def test_young_processes_and_filters(procs: Procs) -> None:
    young = procs.start("a", "young")
    rc, out, _ = prune("--kill")  # default --min-age 60s
    assert rc == 0 and out["strays"] == []
    assert young.alive and out["exempt"]["younger than --min-age"] >= 1
    rc, out, _ = prune("--min-age", "0", "--exclude-comm", "^python", "--kill")
    assert rc == 0 and out["strays"] == [] and young.alive
    rc, out, _ = prune("--min-age", "0", "--exclude-user", "tether-prune-a", "--kill")
    assert rc == 0 and out["strays"] == [] and young.alive
    rc, out, _ = prune("--min-age", "0", "--older-than", "1h")
    assert rc == 0 and out["strays"] == []
    rc, out, _ = prune("--min-age", "0", "--min-cputime", "1h")
    assert rc == 0 and out["strays"] == []
    rc, out, _ = prune("--min-age", "0", "--orphans-only")
    assert [s["pid"] for s in out["strays"]] == [young.pid]
    assert out["strays"][0]["orphan"] is True


def test_orphans_only_spares_a_process_whose_parent_lives(procs: Procs) -> None:
    child = procs.start("a", "child", mode="session")  # its parent is this test
    orphan = procs.start("a", "orphan")
    rc, out, _ = prune("--min-age", "0", "--orphans-only")
    assert rc == 0
    assert [s["pid"] for s in out["strays"]] == [orphan.pid]
    rc, out, _ = prune("--min-age", "0")
    assert {s["pid"] for s in out["strays"]} == {orphan.pid, child.pid}


def test_slurm_job_cgroups_are_legitimate(procs: Procs, cgroups: Cgroups) -> None:
    a = procs.users["a"].pw_uid
    v1_job = procs.start("a", "slurm-v1")
    v2_job = procs.start("b", "slurm-v2")
    stray = procs.start("a", "stray")
    cgroups.move(f"slurm/uid_{a}/job_101/step_batch", v1_job.pid)
    cgroups.move("system.slice/slurmstepd.scope/job_102/step_0/user/task_0", v2_job.pid)
    rc, out, err = prune("--min-age", "0", "--kill", "--slurm-cgroup-root", str(cgroups.root))
    assert rc == 0, err
    assert [s["pid"] for s in out["strays"]] == [stray.pid], (out["jobs"], out["sources"])
    jobs = {j["job_id"]: j["uid"] for j in out["jobs"] if j["source"] == "slurm-cgroup"}
    assert jobs == {"101": a, "102": procs.users["b"].pw_uid}
    assert v1_job.alive and v2_job.alive
    wait_for(lambda: not stray.alive, what="the stray")


def test_unknown_user_and_bad_config_kill_nothing(procs: Procs, tmp_path: Path) -> None:
    stray = procs.start("a", "stray")
    done = subprocess.run(
        tether_cmd("prune", "--kill", "--min-age", "0", "--user", "no-such-user-xyz"),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 2
    assert b"unknown user 'no-such-user-xyz'" in done.stderr
    bad = tmp_path / "tether.toml"
    bad.write_text("[prune]\nmin_uid = 1000\nexclude_comm = ['(unclosed']\n")
    rc, out, err = prune("--kill", "--min-age", "0", "--config", str(bad))
    assert rc == 2 and out == {}
    assert f"{bad}:3" in err, err
    bad.write_text("[prune]\nmin_uid = 0\n")
    rc, out, err = prune("--kill", "--min-age", "0", "--config", str(bad))
    assert rc == 2 and f"{bad}:2" in err, err
    rc, out, err = prune("--kill", "--min-age", "0", "--policy", "TERM,soon,KILL")
    assert rc == 2 and "--policy: unknown signal 'soon'" in err
    rc, out, err = prune("--kill", "--min-age", "0", "--sessions-file", str(tmp_path / "nope"))
    assert rc == 2 and "nothing was killed" in err
    assert stray.alive and stray.signals() == []


def test_config_file_lists_apply(procs: Procs, tmp_path: Path) -> None:
    stray = procs.start("a", "stray")
    conf = tmp_path / "tether.toml"
    conf.write_text('[prune]\nexclude_users = ["tether-prune-a"]\nmin_age = "0s"\n')
    rc, out, _ = prune("--kill", "--config", str(conf))
    assert rc == 0 and out["strays"] == [] and stray.alive
    assert out["options"]["min_age"] == 0


def test_unreadable_proc_entry_is_left_alone(procs: Procs) -> None:
    hidden = procs.start("a", "hidden")
    seen = procs.start("a", "seen")
    # A private mount namespace where one stray's status reads as empty.
    argv = tether_cmd(
        "prune", "--json", "--no-syslog", "--batch", "none", *SCOPE, "--min-age", "0", "--kill"
    )
    script = f'mount --bind /dev/null /proc/{hidden.pid}/status && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv],
        capture_output=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0 and b"unshare" in done.stderr:
        pytest.skip(f"unshare -m failed: {done.stderr.decode(errors='replace')}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [s["pid"] for s in out["strays"]] == [seen.pid]
    assert [u["pid"] for u in out["unreadable"]] == [hidden.pid]
    assert "unexpected contents" in out["unreadable"][0]["error"]
    assert hidden.alive and hidden.signals() == []
    wait_for(lambda: not seen.alive, what="the readable stray")


def test_unprivileged_pruner_with_hidepid_reports_unreadable(procs: Procs) -> None:
    stray = procs.start("b", "stray")
    user = procs.users["a"]
    from helpers import as_user, user_python

    py = user_python(user)
    assert py is not None
    inner = as_user(
        user,
        [*py, "-m", "tether.cli", "prune", "--json", "--no-syslog", "--batch", "none",
         *SCOPE, "--min-age", "0", "--kill"],
    )  # fmt: skip
    script = 'mount -t proc -o hidepid=1 proc /proc && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *inner],
        capture_output=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0 and b"mount" in done.stderr:
        pytest.skip(f"cannot mount proc with hidepid: {done.stderr.decode(errors='replace')}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert stray.pid in {u["pid"] for u in out["unreadable"]}
    assert all("Operation not permitted" in u["error"] for u in out["unreadable"])
    assert out["strays"] == [] and stray.alive


def test_text_output_names_the_rule(procs: Procs) -> None:
    stray = procs.start("a", "stray")
    done = subprocess.run(
        tether_cmd("prune", "--no-syslog", "--batch", "none", *SCOPE, "--min-age", "0"),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0
    text = done.stdout.decode()
    assert f"{stray.pid:>7} tether-prune" in text and "would kill" in text
    assert "why: user process (every uid >= 1000) in no live job" in text
    assert stray.alive


def test_help_documents_exit_status() -> None:
    for command in ("prune", "epilog"):
        done = subprocess.run(
            tether_cmd(command, "--help"), capture_output=True, check=True, env=dict(os.environ)
        )
        assert b"EXIT STATUS" in done.stdout
    assert sys.executable


def test_tagged_escapee_of_a_live_tether_job_is_legitimate(procs: Procs, tmp_path: Path) -> None:
    """A root job's --tag-gid vouches for a process that left its session (no cgroup)."""
    tag = 47114
    ready = procs.dir / "tagged.ready"
    go = procs.dir / "tagged.go"
    user = procs.users["c"]
    escapee = (
        f"(setsid setpriv --reuid={user.pw_uid} --regid={user.pw_gid} --keep-groups "
        f"sh -c 'echo $$ > {ready}.tmp && mv {ready}.tmp {ready} && exec sleep 600' &); "
        f"while [ ! -e {go} ]; do sleep 0.05; done"
    )
    job = subprocess.Popen(
        tether_cmd("run", "-q", "--tag-gid", str(tag), "--trackers", "session,walk",
                   "--", "sh", "-c", escapee),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(ready.exists, timeout=30, what="the tagged escapee")
        pid = int(ready.read_text())
        rc, out, err = prune("--min-age", "0", "-v")
        assert rc == 0, err
        assert pid not in {s["pid"] for s in out["strays"]}
        reasons = {e["pid"]: e["reason"] for e in out["exempt_user_processes"]}
        assert reasons[pid].startswith("in tether job ")
    finally:
        go.touch()
        job.wait(timeout=60)  # the job's end takes the escapee with it (found by gid)
