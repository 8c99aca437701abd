"""A read that fails is not an empty answer, on the paths that decide.

Out of descriptors (EMFILE) a read of /proc or of a cgroup fails; where that
failure read as "no such process", "no member" or "no service", tether took
a supervised job for orphaned, named fewer processes than cgroup.kill took
without saying so, froze or killed a cgroup that held tether itself, and
the pruner took a system service's processes for strays. Each scenario runs
in a child python whose fd limit leaves exactly ``k`` descriptors free
around the call under test (``with_free(k)``, as in test_fd_limit.py: the
limit another thread's descriptors would leave), and writes what it saw as
JSON.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fd_child import LOW, run_child, run_sleeps_child

from helpers import cgroup_writable, kill_identity, proc_stat

needs_cgroup = pytest.mark.skipif(not cgroup_writable(), reason="needs cgroup v2 write access")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a process of another uid)")


def _child_low(tmp_path: Path, body: str, args: tuple[str, ...] = ()) -> dict[str, Any]:
    return run_child(tmp_path, body, LOW, args=args)


# -- "is it alive?" out of descriptors -----------------------------------------


def test_a_supervised_job_out_of_descriptors_is_not_taken_for_orphaned(tmp_path: Path) -> None:
    """is_alive() read a stat-only row with a non-strict read: EMFILE read as
    "no such process", so `tether reap` (recovery.job_state) took a running,
    supervised job for orphaned and would terminate it, the pruner's
    TetherJobs (JobRecord.supervisor_alive) dropped it (its processes read
    as strays; an unreadable boot id made its record another boot's), the
    ancestors tether protects were none, and a keeper's subtree read as the
    keeper gone. Each now raises."""
    result = _child_low(
        tmp_path,
        """
        import subprocess
        import tether
        from tether._platform import linux
        from tether.journal import Journal
        from tether.process import ancestors
        from tether.recovery import job_state

        job = tether.start(["sleep", "60"], stdin=subprocess.DEVNULL)
        try:
            journal = Journal.default()
            try:
                record = journal.read(job.id)
            finally:
                journal.close()
            state = job_state(record)
            before = [state.supervisor_alive, state.orphaned]
            def orphaned():
                return job_state(record).orphaned
            reap = at_limit(orphaned)
            # The pruner's question in a fresh process: the boot id unread.
            linux._boot_id.clear()
            prune = at_limit(record.supervisor_alive)
            linux._boot_id.clear()
            boot = at_limit(linux.boot_id)
            mine = ancestors(os.getpid())
            protected = at_limit(ancestors, os.getpid())
            # A library job's scan reads its keeper's subtree: None there
            # meant "the keeper is gone" (whole-table scans from then on, and
            # a caveat that it exited).
            keeper = linux.subtree(os.getpid(), root_starttime=linux.own_starttime())
            subtree = at_limit(linux.subtree, os.getpid())
        finally:
            job.cancel("cleanup")
        done(before=before, reap=reap, prune=prune, boot=boot, mine=mine, protected=protected,
             keeper=keeper is not None, subtree=subtree)
        """,
    )
    assert result["before"] == [True, False], result
    assert result["mine"], "no ancestors read at all: nothing tested"
    assert result["reap"] == ["error", 24], result
    assert result["prune"] == ["error", 24], result
    assert result["boot"] == ["error", 24], result
    assert result["protected"] == ["error", 24], result
    assert result["keeper"]
    assert result["subtree"] == ["error", 24], result


# -- the capture before cgroup.kill ---------------------------------------------


@needs_cgroup
def test_a_capture_whose_check_listing_fails_says_what_it_did_not_name(tmp_path: Path) -> None:
    """The capture before cgroup.kill read the frozen members, then could not
    list the cgroup again to prove the reads were of its processes (EMFILE):
    that failure read as an empty cgroup, every captured row was dropped and
    nothing was said, so the report named none of the processes the kill
    took. Now none is named (unproven) and the caveat counts them."""
    ready = tmp_path / "ready"
    result, kids = run_sleeps_child(
        tmp_path,
        ready,
        """
        import subprocess, time
        import tether
        from tether import membership
        from tether._platform.linux import cgroupfs

        real_capture = membership.capture
        real_procs = cgroupfs.JobCgroup.procs
        armed, hits = [False], []
        def capture(pids):
            rows = real_capture(pids)
            armed[0] = rows is not None  # the check that follows the capture
            return rows
        def procs(self):
            if not armed[0]:
                return real_procs(self)
            armed[0] = False
            got = at_limit(real_procs, self)
            hits.append(got)
            if got[0] == "error":
                raise OSError(got[1], os.strerror(got[1]))
            return got[1]
        membership.capture = capture
        cgroupfs.JobCgroup.procs = procs

        ready, n = sys.argv[2], 5
        # The cgroup alone: no later scan (subreaper, session, walk) can
        # name a member after the kill.
        job, starts = start_sleeps(ready, sys.argv[3], n, trackers="cgroup")
        try:
            report = job.cancel("test")
        finally:
            membership.capture = real_capture
            cgroupfs.JobCgroup.procs = real_procs
            job.cancel("cleanup")
        done(leader=job.pid, kids=starts, hits=hits, complete=report.complete,
             named=[m.pid for m in report.members], caveats=list(report.caveats))
        """,
    )
    try:
        assert result["hits"] == [["error", 24]], result["hits"]
        assert result["complete"], result
        for pid, starttime in kids.items():
            st = proc_stat(pid)
            # Dead: gone, or a zombie left to init (the cgroup alone has
            # no subreaper to take them).
            assert st is None or st.starttime != starttime or st.state in ("Z", "X"), pid
        in_cgroup = {result["leader"], *kids}
        named = set(result["named"]) & in_cgroup
        said = [c for c in result["caveats"] if "could not be read before cgroup.kill" in c]
        assert len(said) == 1, result["caveats"]
        unnamed = int(said[0].split()[0])
        # Every process the kill took is named or counted; the sleeps were
        # captured, not proven: counted.
        assert not named & set(kids), named
        assert unnamed + len(named) == len(in_cgroup), (said, named)
    finally:
        for ident in kids.items():
            kill_identity(*ident)


# -- a cgroup that holds tether itself ------------------------------------------


@needs_cgroup
def test_a_cgroup_not_listed_is_not_taken_for_one_without_us(tmp_path: Path) -> None:
    """Whether the job's cgroup holds tether or an ancestor (`tether reap` run
    from a shell inside the job) was asked once and kept: a listing that
    failed (EMFILE) read as "none of us inside", and the next cgroup.kill
    took tether with the job. Now the failure is raised and nothing kept:
    asked again, the cgroup holds us and the kill is not the cgroup's."""
    name = f"tether-errtest-{os.getpid()}"
    from tether._platform.linux import cgroupfs

    parent = cgroupfs.probe().parent
    assert parent is not None
    path = os.path.join(parent, name)
    try:
        result = _child_low(
            tmp_path,
            """
            from tether._platform.linux import cgroupfs
            from tether.membership import Membership

            home = cgroupfs.own_cgroup_path()
            mount = cgroupfs.find_cgroup2_mount()
            cg = cgroupfs.JobCgroup.create(cgroupfs.probe().parent, sys.argv[2])
            cg.move(os.getpid())
            m = Membership([], [], not_before=0, leader=None, cgroup=cg)
            try:
                first = at_limit(m._cgroup_acts_alone)
                # Descriptors back: had "spares us" been kept, this kills us.
                killed = sorted(x.pid for x in m.kill_all())
                again = m._cgroup_acts_alone()
            finally:
                with open(os.path.join(mount + home, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
                m.close()
                cg.remove()
            done(first=first, killed=killed, again=again)
            """,
            args=(name,),
        )
    finally:
        if os.path.isdir(path):
            os.rmdir(path)
    assert result["first"] == ["error", 24], result
    assert result["again"] is False
    assert result["killed"] == []


# -- the pruner's system services ---------------------------------------------------


@needs_cgroup
@needs_root
def test_a_service_cgroup_not_listed_stops_the_pruner(tmp_path: Path) -> None:
    """system_service_pids walked system.slice with os.walk, whose listing
    errors are dropped, and skipped a cgroup.procs it could not open: out of
    descriptors, a service (here a process of uid 60000 in a service cgroup)
    was no service, and the pruner's plan took its process for a stray. Now
    it is a SourceError (nothing is killed); a service that is really gone
    is still none. An unread mountinfo is one too, not "no cgroup mounts"."""
    name = f"tether-errtest-{os.getpid()}.slice"
    from tether._platform.linux import cgroupfs

    parent = cgroupfs.probe().parent
    assert parent is not None
    slice_dir = os.path.join(parent, name)
    service = os.path.join(slice_dir, "errtest.service")
    os.mkdir(slice_dir)
    sleeper = None
    try:
        os.mkdir(service)
        sleeper = subprocess.Popen(
            ["setpriv", "--reuid=60000", "--regid=60000", "--clear-groups", "sleep", "600"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # not the pruner's own session (never a stray)
        )
        Path(service, "cgroup.procs").write_text(str(sleeper.pid))
        result = _child_low(
            tmp_path,
            """
            from tether.prune import sources
            from tether.prune.classify import PruneOptions, plan

            slice_dir, pid = sys.argv[2], int(sys.argv[3])
            options = PruneOptions(min_uid=1000, min_age=0.0, include_ssh=True)
            listed = sorted(sources.system_service_pids(slice_dir))
            direct = at_limit(sources.system_service_pids, slice_dir)
            if direct[0] == "ok":
                direct[1] = sorted(direct[1])
            def strays(slice_dir):
                return {s.pid for s in plan(options, [], system_slice=slice_dir).strays}
            exempt = pid not in strays(slice_dir)
            # What the service listing decides: without it, a stray.
            unlisted = pid in strays(os.path.join(slice_dir, "none"))
            real = sources.system_service_pids
            def at_the_limit(path):
                with_free(0)
                try:
                    return real(path)
                finally:
                    restore()
            sources.system_service_pids = at_the_limit
            try:
                stray = pid in strays(slice_dir)
                decided = ["stray" if stray else "spared"]
            except sources.SourceError as err:
                decided = ["refused", str(err)]
            finally:
                sources.system_service_pids = real
            gone = sorted(sources.system_service_pids(os.path.join(slice_dir, "none")))
            # Unread, mountinfo named no cgroup mount: no Slurm job cgroup and
            # no system.slice would be found at all.
            mounts = at_limit(sources.find_mounts)
            done(listed=listed, direct=direct, exempt=exempt, unlisted=unlisted, decided=decided,
                 gone=gone, mounts=mounts)
            """,
            args=(slice_dir, str(sleeper.pid)),
        )
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        if os.path.isdir(service):
            os.rmdir(service)
        os.rmdir(slice_dir)
    assert result["listed"] == [sleeper.pid], result
    assert result["exempt"], "the service's process was a stray with its cgroup listed"
    assert result["unlisted"], "not a stray even unlisted: the listing decides nothing here"
    assert result["decided"][0] == "refused", result["decided"]
    assert result["direct"][0] == "error" and "cannot list" in result["direct"][1], result
    assert result["gone"] == []
    assert result["mounts"][0] == "error" and "mountinfo" in result["mounts"][1], result


# -- what a scan finds: the cookie, the cgroup ----------------------------------


@needs_cgroup
@needs_root
def test_a_cookie_or_a_cgroup_not_read_is_not_no_member(tmp_path: Path) -> None:
    """read_environ took any failure for "no environment": out of
    descriptors, the cookie tracker found none of the job's processes, and
    the pruner's SLURM_JOB_ID shelter (_slurm_env_jobs) left a running
    job's double-forked helper to be killed as a stray. The cgroup tracker
    took any failure of its listing for "no member". Each now raises; a
    process gone, or another user's environment, is still no cookie."""
    name = f"tether-errtest-{os.getpid()}"
    from tether._platform.linux import cgroupfs

    parent = cgroupfs.probe().parent
    assert parent is not None
    path = os.path.join(parent, name)
    os.mkdir(path)
    sleeper = None
    try:
        # A helper of Slurm job 77 (uid 60000) that carries the job's id, in
        # a cgroup, with a tether cookie too.
        sleeper = subprocess.Popen(
            ["setpriv", "--reuid=60000", "--regid=60000", "--clear-groups", "sleep", "600"],
            stdin=subprocess.DEVNULL,
            env={"SLURM_JOB_ID": "77", "TETHER_JOB_ID": "errtest", "PATH": os.defpath},
            start_new_session=True,
        )
        Path(path, "cgroup.procs").write_text(str(sleeper.pid))
        result = _child_low(
            tmp_path,
            """
            from tether._platform.linux import cgroupfs
            from tether.process import read_environ, snapshot
            from tether.prune import scan
            from tether.prune.classify import _slurm_env_jobs
            from tether.tracking.cgroup import CgroupTracker
            from tether.tracking.cookie import CookieTracker

            path, pid = sys.argv[2], int(sys.argv[3])
            table = snapshot()
            start = table[pid].starttime
            cookie = CookieTracker("errtest", not_before=start, owner_uid=60000)
            found = sorted(cookie.find(table, set()))
            env = at_limit(read_environ, pid, start)
            cookies = at_limit(lambda: sorted(cookie.find(table, set())))
            # The pruner: statuses read first (an unread one is exempt).
            ptable = scan.scan()
            assert ptable.load_status(ptable.procs[pid])
            def sheltered():
                jobs = _slurm_env_jobs(ptable, {"77": 60000}, (), 1000)
                return sorted(p for j in jobs for p in j.pids)
            shelter = sheltered()
            shelter_at_limit = at_limit(sheltered)
            tracker = CgroupTracker(cgroupfs.JobCgroup(path))
            listed = sorted(tracker.find(table, set()))
            fresh = CgroupTracker(cgroupfs.JobCgroup(path))  # its cgroup.events not open yet
            members = at_limit(lambda: sorted(fresh.find(table, set())))
            gone = sorted(CgroupTracker(cgroupfs.JobCgroup(path + "-none")).find(table, set()))
            done(found=found, env=env, cookies=cookies, shelter=shelter,
                 shelter_at_limit=shelter_at_limit, listed=listed, members=members, gone=gone)
            """,
            args=(path, str(sleeper.pid)),
        )
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        os.rmdir(path)
    pid = sleeper.pid
    assert result["found"] == [pid] and result["shelter"] == [pid], result
    assert result["listed"] == [pid], result
    assert result["env"] == ["error", 24], result
    assert result["cookies"] == ["error", 24], result
    assert result["shelter_at_limit"] == ["error", 24], result
    assert result["members"] == ["error", 24], result
    assert result["gone"] == []


# -- the cgroup probe ------------------------------------------------------------


@needs_cgroup
def test_a_cgroup_probe_out_of_descriptors_is_not_no_cgroup(tmp_path: Path) -> None:
    """find_cgroup2_mount and own_cgroup_path took a failed read of
    /proc/self/mountinfo or /proc/self/cgroup for "no cgroup2 mounted" and
    "not in the unified hierarchy": the probe, kept for the process's life,
    then ran every later job of a long-lived caller without a cgroup (its
    status giving a reason that is not true), and `tether reap` ignored a
    crashed job's recorded cgroup. Each now raises, and nothing is kept."""
    result = _child_low(
        tmp_path,
        """
        from tether._platform.linux import cgroupfs
        from tether.tracking import select

        real = cgroupfs.probe().parent
        first = at_limit(lambda: select.cgroup_probe().parent)
        later = select.cgroup_probe().parent
        mount = at_limit(cgroupfs.find_cgroup2_mount)
        home = at_limit(cgroupfs.own_cgroup_path)
        gone = cgroupfs.own_cgroup_path(2**22 + 1)  # above pid_max: no such process
        done(real=real, first=first, later=later, mount=mount, home=home, gone=gone)
        """,
    )
    assert result["real"] is not None
    assert result["first"] == ["error", 24], result
    assert result["later"] == result["real"], result
    assert result["mount"] == ["error", 24], result
    assert result["home"] == ["error", 24], result
    assert result["gone"] is None


@needs_root
def test_a_tagged_process_not_read_is_not_untagged(tmp_path: Path) -> None:
    """processes_with_supplementary_gid (the gid tracker; the pruner's
    vouching for a tether --tag-gid job) took any failed read of a status
    for "not tagged": out of descriptors, no process carried the tag."""
    gid = 64999
    tagged = subprocess.Popen(
        ["setpriv", f"--groups={gid}", "sleep", "600"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        result = _child_low(
            tmp_path,
            """
            from tether.tracking.gid import processes_with_supplementary_gid

            gid = int(sys.argv[2])
            found = [pid for pid, _st in processes_with_supplementary_gid(gid)]
            # One free: /proc is listed, no process in it can be read.
            at = with_k_free(1, lambda: [pid for pid, _st in processes_with_supplementary_gid(gid)])
            done(found=found, at=at)
            """,
            args=(str(gid),),
        )
    finally:
        tagged.kill()
        tagged.wait()
    assert result["found"] == [tagged.pid], result
    assert result["at"] == ["error", 24], result


# -- the pruner's own journal ----------------------------------------------------


def test_a_journal_record_not_read_stops_the_pruner(tmp_path: Path) -> None:
    """tether prune's TetherJobs source: a record that cannot be opened for
    want of descriptors may be a live job's; it was dropped ("unreadable:
    skipped"), so that job was not running and its processes were strays.
    Now it is a SourceError (nothing is killed). A record read and refused
    (corrupt) still vouches for nothing, as before."""
    journal_dir = tmp_path / "journal"
    result = _child_low(
        tmp_path,
        """
        from tether.journal import Identity, Journal, new_record
        from tether.policy import Policy
        from tether.process import own_starttime
        from tether.prune.scan import scan
        from tether.prune.sources import SourceError, TetherJobs

        journal = Journal(sys.argv[2])
        journal.write(new_record(
            job_id="live", cookie="live", argv=("sleep", "1"),
            policy=Policy.parse("KILL"), supervisor=Identity(os.getpid(), own_starttime()),
            not_before=0, cgroup=None, trackers=("session",), restartable=False,
        ))
        journal.close()
        source = TetherJobs(sys.argv[2])
        table = scan()

        def jobs():
            return [j.job_id for j in source.jobs(table)]

        listed = jobs()
        real = Journal._read_name
        def read_name_at_the_limit(self, dfd, name):
            return with_k_free(0, real, self, dfd, name)[1]
        Journal._read_name = read_name_at_the_limit
        try:
            try:
                at_limit_jobs = ["listed", jobs()]
            except SourceError as err:
                at_limit_jobs = ["refused", str(err)]
        finally:
            Journal._read_name = real
        done(listed=listed, at_limit=at_limit_jobs)
        """,
        args=(str(journal_dir),),
    )
    assert result["listed"] == ["live"], result
    outcome, detail = result["at_limit"]
    assert outcome == "refused", result
    assert "unreadable" in detail and "Too many open files" in detail, detail


def test_a_keeper_context_not_read_is_an_error(tmp_path: Path) -> None:
    """The keeper's context (credentials, capabilities, seccomp...) decides
    whether a waiting keeper may run the caller's next job. Read out of
    descriptors, it lacked the capability and seccomp lines: two such
    contexts compared equal across a drop of privileges. It is raised now."""
    result = _child_low(
        tmp_path,
        """
        from tether import keeper

        outcome, got = at_limit(keeper._own_state)
        done(
            normal=keeper._own_state()[1].count(b"Cap"),
            at_limit=[outcome, got if outcome == "error" else "a context"],
        )
        """,
    )
    assert result["normal"] >= 3, result  # CapInh, CapPrm, CapEff... read
    assert result["at_limit"] == ["error", 24], result
