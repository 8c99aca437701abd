"""The planner in-process, on real processes: races, services, tags, commands."""

from __future__ import annotations

from pathlib import Path

from prune_support import Cgroups, Procs

from tether.job import kill_gid
from tether.policy import Policy
from tether.prune import (
    DecisionLog,
    PruneOptions,
    Scontrol,
    SessionList,
    execute,
    plan,
)
from tether.prune.classify import EXEMPT_SYSTEM, EXEMPT_YOUNG
from tether.prune.scan import Table, scan
from tether.tracking.gid import processes_with_supplementary_gid


def options(procs: Procs, **kw: object) -> PruneOptions:
    uids = frozenset(u.pw_uid for u in procs.users.values())
    return PruneOptions(min_uid=1000, users=uids, **kw)  # type: ignore[arg-type]


def test_a_job_starting_during_the_scan_survives(procs: Procs, tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.write_text("")
    started = []

    def scanner() -> Table:
        # The job starts after the pruner began, and the batch system records
        # it (the sessions file) before the pruner reads the job list.
        job = procs.start("a", "new-job", mode="session")
        sessions.write_text(f"{job.sid()} 77 tether-prune-a\n")
        started.append(job)
        return scan()

    # No age floor: the re-read job list alone must save it.
    p = plan(options(procs, min_age=0.0), [SessionList(path=str(sessions))], scanner=scanner)
    job = started[0]
    assert job.pid not in {s.pid for s in p.strays}
    assert p.legit[job.pid] == "sessions-file job 77"
    outcome = execute(p, kill=True, policy=Policy.parse("KILL"), log=DecisionLog(enabled=False))
    assert not outcome.failed and job.alive


def test_a_young_process_is_never_a_stray(procs: Procs) -> None:
    young = procs.start("a", "young")
    p = plan(options(procs), [])  # the default 60 s floor
    assert young.pid not in {s.pid for s in p.strays}
    assert p.exempt[EXEMPT_YOUNG] >= 1


def test_system_slice_services_are_never_strays(procs: Procs, cgroups: Cgroups) -> None:
    service = procs.start("a", "service")
    stray = procs.start("a", "stray")
    cgroups.move("system.slice/user-daemon.service", service.pid)
    p = plan(options(procs, min_age=0.0), [], system_slice=str(cgroups.root / "system.slice"))
    assert [s.pid for s in p.strays] == [stray.pid]
    assert p.exempt[EXEMPT_SYSTEM] >= 1


def test_sessions_command_and_scontrol_output(procs: Procs) -> None:
    job = procs.start("a", "job", mode="session")
    step = procs.start("b", "step")
    stray = procs.start("a", "stray")
    listing = f"echo '# from the batch system'; echo '{job.sid()} 88'"
    scontrol = (
        "printf 'PID      JOBID    STEPID   LOCALID GLOBALID\\n"
        f"{step.pid} 91 0 0 0\\n-1 91 batch - -\\n'"
    )
    p = plan(
        options(procs, min_age=0.0),
        [SessionList(command=["sh", "-c", listing]), Scontrol(["sh", "-c", scontrol])],
    )
    assert [s.pid for s in p.strays] == [stray.pid]
    jobs = {(j.source, j.job_id): j.uid for j in p.jobs}
    assert jobs == {
        ("sessions-command", "88"): procs.users["a"].pw_uid,
        ("scontrol", "91"): procs.users["b"].pw_uid,
    }


def test_tag_gid_finds_processes_that_left_their_session(procs: Procs) -> None:
    gid = 64123  # no user is a member of it
    u = procs.users["a"]
    tagged = procs.start(
        "a", "tagged", setpriv=(f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", f"--groups={gid}")
    )
    untagged = procs.start("a", "untagged")
    assert processes_with_supplementary_gid(gid) == [tagged.identity]
    p = plan(options(procs, min_age=0.0, gid=gid), [])
    assert [s.pid for s in p.strays] == [tagged.pid]
    assert "carries group 64123" in p.strays[0].rule
    assert untagged.alive
    report = kill_gid(gid, policy=Policy.parse("TERM,5s,KILL"))
    assert report.complete
    assert [(m.pid, m.outcome, m.found_by) for m in report.members] == [
        (tagged.pid, "killed", ("gid",))
    ]
    assert not tagged.alive and untagged.alive
