"""A job's full scans read only the processes created since its leader.

A member is never older than the leader, and a scan takes no older process
as a member (the start-time floor), so the table of a job
(Membership.for_job) leaves the rows of older processes out
(tether._platform.linux.snapshot_since): a pidfd's inode number (pidfs,
Linux 6.9+) tells a process's place in the kernel's order of process
creation, not its pid number, which a root job can choose (ns_last_pid).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SRC, is_root, wait_for, wait_for_exec
from tether._platform.linux import (
    ProcessInfo,
    allocation_order,
    pidfs_order,
    snapshot,
    snapshot_since,
)


def _order_of(pid: int) -> int | None:
    fd = os.pidfd_open(pid)
    try:
        return allocation_order(fd)
    finally:
        os.close(fd)


def _row(info: ProcessInfo) -> tuple[object, ...]:
    # All but the state, which a process may change between two reads.
    return (info.pid, info.ppid, info.pgid, info.sid, info.starttime, info.comm)


def _sleep() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    wait_for_exec(proc.pid, "sleep")
    return proc


def test_rows_of_processes_created_since_the_floor_and_kept_pids_only() -> None:
    procs = [_sleep() for _ in range(3)]
    older, reference, newer = procs
    try:
        floor = _order_of(reference.pid)
        if floor is None:
            pytest.skip("pidfds here do not tell the order of creation (Linux < 6.9)")
        table = snapshot_since(floor)
        full = snapshot(())
        assert reference.pid in table and newer.pid in table
        assert older.pid not in table and os.getpid() not in table
        for proc in (reference, newer):
            assert _row(table[proc.pid]) == _row(full[proc.pid])
        kept = snapshot_since(floor, keep=(older.pid,))
        assert _row(kept[older.pid]) == _row(full[older.pid])
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _stat(ino: int, dev: int = 5, mode: int = 0o600) -> os.stat_result:
    return os.stat_result((mode, ino, dev, 1, 0, 0, 0, 0, 0, 0))


def test_the_order_is_trusted_only_from_distinct_ascending_pidfd_inodes() -> None:
    assert pidfs_order(_stat(10), _stat(12)) == 12
    # One anonymous inode for every pidfd (before pidfs): no order.
    assert pidfs_order(_stat(7), _stat(7)) is None
    # The newer process lower: not a creation counter.
    assert pidfs_order(_stat(12), _stat(10)) is None
    # Another file system, or a /proc directory standing in for a pidfd.
    assert pidfs_order(_stat(10, dev=6), _stat(12)) is None
    assert pidfs_order(_stat(10, mode=0o040700), _stat(12, mode=0o040700)) is None


#: Runs as pid 1 of a new PID namespace (its own ns_last_pid). A helper
#: started before the job forks, when the job asks it, a process carrying the
#: job's cookie outside the job's tree, session and cgroup, with a pid number
#: far below the leader's: only the cookie ties it to the job.
NAMESPACE_SCRIPT = r"""
import json, os, subprocess, sys
from tether.job import Job
from tether.spec import JobSpec

work = sys.argv[1]
fifo, out = os.path.join(work, "ask"), os.path.join(work, "daemon")
os.mkfifo(fifo)

def last_pid(n):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(n))

# Not pid 2 (a kernel thread's parent, kthreadd, in the initial namespace).
last_pid(10)
helper = subprocess.Popen([sys.executable, "-c", '''
import os, subprocess, sys
fifo, out = sys.argv[1], sys.argv[2]
with open(fifo) as f:
    cookie = f.read().strip()
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write("100")
env = {"PATH": os.environ["PATH"], "TETHER_JOB_ID": cookie}
daemon = subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)
# Its new environment is in place once the exec has set env_end (stat field 51).
while True:
    with open("/proc/%d/stat" % daemon.pid, "rb") as f:
        fields = f.read().rpartition(b") ")[2].split()
    if len(fields) > 48 and fields[48] != b"0":
        break
with open(out + ".tmp", "w") as f:
    f.write(str(daemon.pid))
os.rename(out + ".tmp", out)
daemon.wait()
''', fifo, out])
last_pid(5000)
leader = (
    "import os\n"
    f"with open({fifo!r}, 'w') as f: f.write(os.environ['TETHER_JOB_ID'])\n"
    "import time\n"
    f"while not os.path.exists({out!r}): time.sleep(0.01)\n"
)
job = Job(JobSpec(argv=[sys.executable, "-c", leader], trackers="subreaper,session,cookie,walk"),
          dedicated_supervisor=True, journal=False, watchdog=False)
job.wait(60)
daemon = int(open(out).read())
report = job.cancel("leftovers after the leader exited")
members = {m.pid: sorted(m.found_by) for m in report.members}
killed = [m.pid for m in report.killed]
try:
    with open(f"/proc/{daemon}/stat", "rb") as f:
        alive = f.read().rpartition(b") ")[2][:1] != b"Z"  # unreaped yet by the helper
except OSError:
    alive = False
helper.kill()
print(json.dumps({"leader": job.pid, "daemon": daemon, "members": members, "killed": killed,
                  "complete": report.complete,
                  "daemon_alive": alive}))
"""


@pytest.mark.skipif(not is_root(), reason="a PID namespace of its own and ns_last_pid need root")
def test_cookie_finds_a_later_process_with_a_lower_pid_than_the_leader(tmp_path: Path) -> None:
    fd = os.pidfd_open(os.getpid())
    os.close(fd)
    probe = _sleep()
    try:
        if _order_of(probe.pid) is None:
            pytest.skip("pidfds here do not tell the order of creation (Linux < 6.9)")
    finally:
        probe.kill()
        probe.wait()
    env = dict(os.environ, PYTHONPATH=SRC)
    # The namespace's init is the script: when it exits, the kernel kills
    # whatever is left in the namespace (nothing leaks from the test).
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", NAMESPACE_SCRIPT,
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    if done.returncode and "unshare" in done.stderr and "Operation not permitted" in done.stderr:
        pytest.skip(f"no PID namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["daemon"] < out["leader"], out  # the pid number says older
    daemon = str(out["daemon"])
    assert out["members"].get(daemon) == ["cookie"], out
    assert out["daemon"] in out["killed"] and not out["daemon_alive"], out
    assert out["complete"], out


def test_a_process_whose_pidfd_cannot_be_opened_is_read_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a gone process (ESRCH) is left out for its pidfd: any other
    failure (a seccomp filter's EPERM, EMFILE) leaves its age unknown."""
    older = _sleep()
    reference = _sleep()
    try:
        floor = _order_of(reference.pid)
        if floor is None:
            pytest.skip("pidfds here do not tell the order of creation (Linux < 6.9)")

        def refused(pid: int, flags: int = 0) -> int:
            raise PermissionError(errno.EPERM, "refused")

        monkeypatch.setattr(os, "pidfd_open", refused)
        assert older.pid in snapshot_since(floor)

        def gone(pid: int, flags: int = 0) -> int:
            raise ProcessLookupError(errno.ESRCH, "gone")

        monkeypatch.setattr(os, "pidfd_open", gone)
        assert older.pid not in snapshot_since(floor)
    finally:
        for proc in (older, reference):
            proc.kill()
            proc.wait()


def test_a_library_job_keeps_the_row_of_its_keeper_for_the_subreaper_tracker(
    tmp_path: Path,
) -> None:
    """Trackers named (cookie among them): the keeper's subtree is not the
    table, so the subreaper tracker checks the keeper's row, which is older
    than the leader: kept (keep_rows), or a daemon that only the keeper
    adopted (no session, no cookie, its parent gone) is not found."""
    from helpers import kill_identity, proc_stat
    from tether.job import Job
    from tether.spec import JobSpec

    mark = tmp_path / "daemon"
    script = (
        "env -i /usr/bin/setsid /bin/sh -c "
        f"'sleep 600 & echo $! $$ > {mark}.tmp; mv {mark}.tmp {mark}'"
        f"; while [ ! -s {mark} ]; do sleep 0.01; done"
    )
    job = Job(JobSpec(argv=["/bin/sh", "-c", script], trackers="subreaper,session,cookie,walk"))
    daemon = None
    try:
        job.wait(60)
        daemon, shell = map(int, mark.read_text().split())
        # Orphaned: its parent, the setsid shell, has exited.
        wait_for(lambda: (s := proc_stat(daemon)) is not None and s.ppid != shell, what="orphan")
        report = job.cancel("leftovers after the leader exited")
        found = {m.pid: m.found_by for m in report.members}
        assert found.get(daemon) == ("subreaper",), found
        assert daemon in {m.pid for m in report.killed}
    finally:
        if daemon is not None and (s := proc_stat(daemon)) is not None:
            kill_identity(daemon, s.starttime)


def test_a_jobs_table_leaves_out_processes_older_than_its_leader() -> None:
    from tether.job import Job
    from tether.spec import JobSpec

    older = _sleep()
    job = Job(JobSpec(argv=["sleep", "600"], trackers="subreaper,session,cookie,walk"))
    try:
        if _order_of(job.pid) is None:
            pytest.skip("pidfds here do not tell the order of creation (Linux < 6.9)")
        table = job._membership._table()
        assert job.pid in table
        assert older.pid not in table and os.getpid() not in table
    finally:
        job.cancel("test over")
        older.kill()
        older.wait()
