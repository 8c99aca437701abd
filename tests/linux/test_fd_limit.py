"""tether at and past the file descriptor limit, on the real paths.

Past 1023: ``select.select`` cannot take a descriptor numbered FD_SETSIZE
(1024) or above (ValueError), and tether raises its own RLIMIT_NOFILE (three
pipes per ssh of a fan-out, a pidfd per member of a cancel), so such numbers
are real. Each wait on one descriptor goes through :mod:`tether._fdwait`
(poll): here each runs in a child process whose every number up to 1100 is
taken, so whatever it opens is numbered above.

At the limit: a constructor that fails for want of descriptors closes what
it opened, and the cancel of a frozen cgroup whose members cannot all be
read still kills them all (cgroup.kill) and says how many it did not name.

Every scenario runs in a child process (its limits and descriptors are its
own, not the test runner's) that writes what it saw as JSON to a file.
"""

from __future__ import annotations

import os
import resource
import select
from pathlib import Path
from typing import Any

import pytest
from fd_child import HIGH, LEADER, LOW, SLEEPS, kill_listed_sleeps, run_child, run_sleeps_child

from helpers import cgroup_writable, kill_identity, proc_stat
from tether._fdwait import wait_readable, wait_writable

needs_high_fds = pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096,
    reason="the hard RLIMIT_NOFILE is below 4096",
)
needs_cgroup = pytest.mark.skipif(not cgroup_writable(), reason="needs cgroup v2 write access")


# -- the helper itself: select()'s answers -------------------------------------


def test_the_waits_answer_as_select_did() -> None:
    r, w = os.pipe()
    try:
        assert not wait_readable(r, 0) and not wait_readable(r, 0.01)
        assert wait_writable(w, 0) and wait_writable(w, None)
        # A negative timeout is no wait at all (poll's -1 would be forever).
        assert not wait_readable(r, -1.0)
        os.write(w, b"x")
        assert wait_readable(r, None) and wait_readable(r, 0)
        assert select.select([r], [], [], 0)[0] == [r]
        os.read(r, 1)
        # Filled: not writable; drained: writable again.
        os.set_blocking(w, False)
        with pytest.raises(BlockingIOError):
            while True:
                os.write(w, b"y" * 65536)
        assert not wait_writable(w, 0.01)
        while os.read(r, 1 << 20) and wait_readable(r, 0):
            pass
        assert wait_writable(w, 0)
        # EOF is readable, as for select.
        os.close(w)
        w = -1
        assert wait_readable(r, None)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    # A closed descriptor is EBADF, a negative one ValueError, as select's.
    with pytest.raises(OSError) as err:
        wait_readable(r, 0)
    assert err.value.errno == 9
    with pytest.raises(ValueError):
        wait_readable(-1, 0)


# -- past FD_SETSIZE ---------------------------------------------------------


@needs_high_fds
def test_the_ssh_process_waits_and_its_connection_reads_past_fd_1023(tmp_path: Path) -> None:
    """_SshProcess.wait (a pidfd) and Connection._fill (ssh's stdout), both
    numbered above 1100; a stand-in for ssh prints a line and waits for EOF."""
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text("#!/bin/sh\necho hello\nread _line\nexit 0\n")
    fake_ssh.chmod(0o755)
    result = run_child(
        tmp_path,
        """
        import time
        from tether.remote.client import Connection, SshOptions, _SshProcess
        from tether.remote.hostlist import Target

        proc = _SshProcess(["sleep", "60"])
        try:
            fds = [proc._pidfd, proc.stdout.fileno()]
            running = proc.wait(0.05)
            proc.kill()
            rc = proc.wait(60)
        finally:
            proc.abandon()
        conn = Connection(Target("h"), SshOptions(program=sys.argv[2], engine="sh"))
        try:
            fds.append(conn._out)
            line = conn.read_line(time.monotonic() + 60)
        finally:
            conn.proc.stdin.close()
            closed = conn.close(60)
        done(fds=fds, running=running, rc=rc, line=line.decode(), closed=closed)
        """,
        HIGH,
        args=(str(fake_ssh),),
    )
    assert min(result["fds"]) > 1100, result
    assert result["running"] is None  # the timed wait ran out (select raised ValueError)
    assert result["rc"] == -9
    assert result["line"] == "hello" and result["closed"] == 0


@needs_high_fds
def test_a_library_job_from_its_keeper_is_waited_for_past_fd_1023(tmp_path: Path) -> None:
    """tether.start through the job keeper (KeptPopen: its status socket,
    the leader's pidfd; for the second job, the idle keeper's readiness),
    every descriptor above 1100."""
    result = run_child(
        tmp_path,
        """
        import tether
        from tether.job import _kept

        from tether import keeper

        said = []
        real_said_ready = keeper._said_ready
        def said_ready(waiting):
            said.append(waiting.fileno())
            return real_said_ready(waiting)
        keeper._said_ready = said_ready
        runs = []
        # The second job goes to the keeper the first one left idle: its
        # "ready" is waited for (_said_ready) before the job is handed over.
        for code in (7, 8):
            with tether.start(["sh", "-c", f"exit {code}"], policy="KILL") as job:
                kept = _kept(job._popen) is not None
                rc = job.wait(60)
                report = job.cancel("test")
            runs.append([kept, rc, report.complete])
        done(runs=runs, said=said)
        """,
        HIGH,
    )
    assert all(kept for kept, _rc, _complete in result["runs"]), result
    assert [rc for _kept, rc, _complete in result["runs"]] == [7, 8], result
    assert all(complete for _kept, _rc, complete in result["runs"]), result
    assert result["said"] and min(result["said"]) > 1100, "no idle keeper was asked: " + str(result)


@needs_high_fds
def test_a_watchdogs_exit_is_waited_for_past_fd_1023(tmp_path: Path) -> None:
    """job._wait_watchdog_exit: a timed wait on an unreaped child's pidfd,
    which it leaves unreaped."""
    result = run_child(
        tmp_path,
        """
        import signal
        from tether.job import _wait_watchdog_exit

        pid = os.posix_spawnp("sleep", ["sleep", "60"], dict(os.environ))
        try:
            _wait_watchdog_exit(pid, 0.05)
            alive = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        finally:
            os.kill(pid, signal.SIGKILL)  # our unreaped child: its pid is its own
        _wait_watchdog_exit(pid, 60)
        exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        _pid, status = os.waitpid(pid, 0)
        done(alive=alive, exited=exited is not None, status=os.waitstatus_to_exitcode(status))
        """,
        HIGH,
    )
    assert result == {"alive": True, "exited": True, "status": -9}


@needs_high_fds
def test_the_agent_writes_and_stops_past_fd_1023(tmp_path: Path) -> None:
    """The remote agent's channel write (waits for a full pipe to drain) and
    its stop of one of tether's own processes (waits on its pidfd)."""
    result = run_child(
        tmp_path,
        """
        import subprocess, threading
        from tether.process import read_process
        from tether.remote.agent import _stop, _write_all

        r, w = os.pipe()
        os.set_blocking(w, False)
        got = []
        def drain():
            while chunk := os.read(r, 4096):
                got.append(len(chunk))
        reader = threading.Thread(target=drain)
        reader.start()
        try:
            _write_all(w, b"x" * (1 << 20))
        finally:
            os.close(w)
            reader.join(60)
        os.close(r)

        child = subprocess.Popen(["sleep", "60"])
        try:
            notes = []
            _stop((child.pid, read_process(child.pid).starttime), "helper", notes)
            # It waited for the exit: the child is a zombie now, not reaped.
            exited = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        finally:
            child.kill()
            rc = child.wait(60)
        done(
            fds=[r, w], written=sum(got), notes=notes, pid=child.pid,
            exited=exited is not None, rc=rc,
        )
        """,
        HIGH,
    )
    assert min(result["fds"]) > 1100
    assert result["written"] == 1 << 20
    assert result["notes"] == [f"helper pid {result['pid']} stopped (SIGKILL)"]
    assert result["exited"] and result["rc"] == -9


# -- at the limit ------------------------------------------------------------


def test_the_ssh_process_closes_its_pipes_when_out_of_fds(tmp_path: Path) -> None:
    """_SshProcess opens six pipe ends (and, with 0-2 closed, a copy of the
    one numbered 0), then lists the descriptors its child must not inherit:
    at every shortfall the OSError leaves the open set as it was, and a
    child it does start never holds a descriptor we were given (the listing
    failing for want of a descriptor is not "none to close")."""
    result = run_child(
        tmp_path,
        """
        from tether.remote.client import _SshProcess

        given = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(given, True)  # as one a caller got open: not the child's
        probe = ["sh", "-c", f"[ -e /proc/$$/fd/{given} ] && exit 3; exit 0"]

        def attempts():
            out = []
            for k in range(10):
                before = open_fds()
                with_free(k)
                try:
                    proc = _SshProcess(probe)
                except OSError as err:
                    restore()
                    out.append([k, err.errno, open_fds() == before, None])
                    continue
                restore()
                rc = proc.wait(60)
                proc.abandon()
                out.append([k, 0, open_fds() == before, rc])
            return out

        normal = attempts()
        # 0-2 closed: the pipes get those numbers, and stdin's read end, at
        # 0, is copied above 2 (_above_stdio): one descriptor more.
        for fd in (0, 1, 2):
            os.close(fd)
        done(normal=normal, closed_stdio=attempts())
        """,
        LOW,
    )
    for case in ("normal", "closed_stdio"):
        rows = result[case]
        assert all(same for _k, _errno, same, _rc in rows), (case, rows)
        assert all(err in (0, 24) for _k, err, _same, _rc in rows), (case, rows)
        # Every child started: exit 0, the given descriptor not inherited.
        assert [rc for _k, err, _same, rc in rows if not err] == [0] * 3, (case, rows)
        failed = [k for k, err, _same, _rc in rows if err]
        # Six pipe ends and the listing (and the copy) cannot all be had.
        assert failed == list(range(len(failed))), (case, rows)
    assert len([r for r in result["normal"] if r[1]]) == 7, result["normal"]
    assert len([r for r in result["closed_stdio"] if r[1]]) == 7, result["closed_stdio"]


@needs_cgroup
@pytest.mark.parametrize("free", [0, 4])
def test_a_frozen_cgroup_read_member_by_member_at_the_fd_limit_is_killed_whole(
    tmp_path: Path, free: int
) -> None:
    """The capture's fallback (a dirfd per member, Membership._open_each) at
    the fd limit: an EMFILE on a member does not stop the cancel before
    cgroup.kill; every process dies and the report says how many it killed
    without naming them."""
    ready = tmp_path / "ready"
    try:
        result = _run_frozen_cgrouprun_child(tmp_path, ready, free)
    except BaseException:
        kill_listed_sleeps(ready)
        raise
    kids = {int(pid): st for pid, st in result["kids"].items()}
    try:
        assert result["error"] is None, result["error"]
        assert result["calls"], "the fallback did not run: nothing tested"
        assert result["complete"]
        for pid, starttime in kids.items():
            st = proc_stat(pid)
            assert st is None or st.starttime != starttime, pid
        in_cgroup = {result["leader"], *kids}
        named = set(result["named"]) & in_cgroup
        said = [c for c in result["caveats"] if "could not be read before cgroup.kill" in c]
        # The limit did bite: members the fallback could not open.
        assert sum(unopened for _asked, unopened in result["calls"]) > 0, result["calls"]
        # Each is named by a later scan (the keeper's subtree can still hold
        # it after the kill) or counted in the one caveat: none is lost.
        assert len(said) <= 1, result["caveats"]
        unnamed = int(said[0].split()[0]) if said else 0
        assert unnamed + len(named) == len(in_cgroup), (said, named)
    finally:
        for ident in kids.items():
            kill_identity(*ident)


def _run_frozen_cgrouprun_child(tmp_path: Path, ready: Path, free: int) -> dict[str, Any]:
    return run_child(
        tmp_path,
        """
        from tether import membership

        free = int(sys.argv[2])
        # The native (or Python) capture away: the fallback reads each member.
        membership.capture = lambda pids: None
        real = membership.Membership._open_each
        calls = []
        def at_the_limit(self, pids):
            pids = list(pids)
            with_free(free)
            try:
                got = real(self, pids)
            finally:
                restore()
            calls.append([len(pids), len(got[1])])
            return got
        membership.Membership._open_each = at_the_limit

        job, starts = start_sleeps(sys.argv[3], sys.argv[4], 20)
        try:
            try:
                report = job.cancel("test")
                error = None
            except Exception as err:
                report, error = None, repr(err)
        finally:
            membership.Membership._open_each = real
            job.cancel("cleanup")
        done(
            leader=job.pid, kids=starts, calls=calls, error=error,
            complete=None if report is None else report.complete,
            named=[] if report is None else [m.pid for m in report.members],
            caveats=[] if report is None else list(report.caveats),
        )
        """,
        LOW,
        SLEEPS,
        args=(str(free), str(ready), LEADER),
    )


def test_a_process_opened_at_the_fd_limit_leaves_no_descriptor_behind(tmp_path: Path) -> None:
    """open_process_info takes a dirfd, a stat read's, a pidfd and, for a
    field, one more descriptor: at each shortfall it raises EMFILE (not
    "gone") and every descriptor it took is closed again. A pidfd_open out
    of descriptors system-wide (ENFILE, which dup() of the dirfd would not
    meet) is raised too, not taken for a kernel without pidfds."""
    result = run_child(
        tmp_path,
        """
        from tether._platform.linux import open_process_info, _dirfd_handles

        out = []
        for k in range(5):
            before = open_fds()
            with_free(k)
            try:
                got = open_process_info(os.getpid(), None, ("cmdline",))
            except OSError as err:
                restore()
                out.append([k, err.errno, open_fds() == before])
                continue
            restore()
            os.close(got[1])
            out.append([k, 0, open_fds() == before])

        import errno
        real_pidfd_open = os.pidfd_open
        def no_file(pid, flags=0):
            raise OSError(errno.ENFILE, os.strerror(errno.ENFILE))
        os.pidfd_open = no_file
        before = open_fds()
        try:
            open_process_info(os.getpid(), None, ("cmdline",))
            enfile = None
        except OSError as err:
            enfile = err.errno
        finally:
            os.pidfd_open = real_pidfd_open
        done(rows=out, enfile=enfile, enfile_closed=open_fds() == before,
             dirfd_handles=bool(_dirfd_handles[0]))
        """,
        LOW,
    )
    rows = result["rows"]
    assert all(same for _k, _errno, same in rows), rows
    # The dirfd, the pidfd and the cmdline's: three at once.
    assert [err for _k, err, _same in rows] == [24, 24, 24, 0, 0], rows
    assert result["enfile"] == 23 and result["enfile_closed"], result
    assert not result["dirfd_handles"], "ENFILE from pidfd_open read as no pidfd support"


def test_a_connection_whose_reader_cannot_start_leaves_no_ssh_behind(tmp_path: Path) -> None:
    """Connection's constructor started ssh, then could not start the thread
    that reads ssh's stderr (CPython raises RuntimeError "can't start new
    thread" at the thread limit of a large fan-out): the ssh it started is
    killed and reaped, its pipes closed, and the host's error is one line."""
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'ssh.pid'}\nexec sleep 60\n")
    fake_ssh.chmod(0o755)
    result = run_child(
        tmp_path,
        """
        import threading, time
        from tether.remote.client import Connection, RemoteError, SshOptions
        from tether.remote.hostlist import Target

        real_start = threading.Thread.start
        def no_thread(self):
            if self.name.startswith("ssh-stderr-"):
                raise RuntimeError("can't start new thread")
            return real_start(self)
        threading.Thread.start = no_thread
        before = open_fds()
        try:
            Connection(Target("h"), SshOptions(program=sys.argv[2], engine="sh"))
            error = None
        except RemoteError as err:
            error = str(err)
        threading.Thread.start = real_start
        # ssh's pid, as it wrote it (it may be killed before it could)
        ssh_pid = None
        path = os.path.join(os.path.dirname(sys.argv[2]), "ssh.pid")
        if os.path.exists(path):
            ssh_pid = int(open(path).read())
        unreaped = []
        try:
            while True:
                pid, _status = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                unreaped.append(pid)
        except ChildProcessError:
            pass
        done(error=error, same_fds=open_fds() == before, ssh_pid=ssh_pid, unreaped=unreaped)
        """,
        LOW,
        args=(str(fake_ssh),),
    )
    assert result["error"] is not None and "cannot start a reader for ssh" in result["error"]
    assert "\n" not in result["error"]
    assert result["same_fds"], result
    assert result["unreaped"] == [], "ssh was left for someone else to reap"
    if result["ssh_pid"] is not None:
        assert proc_stat(result["ssh_pid"]) is None, "the ssh stand-in outlived its connection"


@needs_cgroup
def test_a_cgroup_listed_at_the_fd_limit_is_an_error_not_empty(tmp_path: Path) -> None:
    """JobCgroup.procs() out of descriptors raises EMFILE instead of saying
    "no processes" (the capture before cgroup.kill names what it lists; the
    pruner takes a job it cannot list for a source error, not for strays);
    a cgroup removed meanwhile is still empty."""
    result = run_child(
        tmp_path,
        """
        from tether._platform.linux import cgroupfs
        from tether.prune.sources import SourceError, _cgroup_procs

        probe = cgroupfs.probe()
        cg = cgroupfs.JobCgroup.create(probe.parent, "tether-fdlimit-%d" % os.getpid())
        os.mkdir(os.path.join(cg.path, "sub"))
        try:
            got = {}
            # "sub" has no sub-cgroup (one file read), the job's has "sub" (a walk).
            for name, path in (("flat", os.path.join(cg.path, "sub")), ("nested", cg.path)):
                with_free(0)
                try:
                    got[name] = ["listed", cgroupfs.JobCgroup(path).procs()]
                except OSError as err:
                    got[name] = ["error", err.errno]
                finally:
                    restore()
            with_free(0)
            try:
                _cgroup_procs(cg.path, "tether")
                pruner = None
            except SourceError as err:
                pruner = str(err)
            finally:
                restore()
        finally:
            os.rmdir(os.path.join(cg.path, "sub"))
            cg.remove()
        gone = cgroupfs.JobCgroup(cg.path).procs()
        done(got=got, pruner=pruner, gone=gone)
        """,
        LOW,
    )
    assert result["got"]["flat"] == ["error", 24], result
    assert result["got"]["nested"] == ["error", 24], result
    assert result["pruner"] is not None and "cannot list" in result["pruner"], result
    assert result["gone"] == []


@needs_cgroup
def test_a_frozen_cgroup_not_listed_at_the_fd_limit_is_killed_and_said(tmp_path: Path) -> None:
    """The capture before cgroup.kill cannot list the frozen cgroup (no
    descriptor left for cgroup.procs): the cancel goes on, cgroup.kill
    takes every process, and the report says it could not name them."""
    ready = tmp_path / "ready"
    result, kids = run_sleeps_child(
        tmp_path,
        ready,
        """
        from tether import membership

        real = membership.Membership._capture_cgroup
        calls = []
        def at_the_limit(self):
            with_free(0)
            try:
                return real(self)
            finally:
                restore()
                calls.append(1)
        membership.Membership._capture_cgroup = at_the_limit

        job, starts = start_sleeps(sys.argv[2], sys.argv[3], 5)
        try:
            report = job.cancel("test")
        finally:
            membership.Membership._capture_cgroup = real
            job.cancel("cleanup")
        done(kids=starts, calls=len(calls), complete=report.complete,
             caveats=list(report.caveats))
        """,
    )
    try:
        assert result["calls"], "the capture did not run: nothing tested"
        assert result["complete"]
        for pid, starttime in kids.items():
            st = proc_stat(pid)
            assert st is None or st.starttime != starttime, pid
        said = [c for c in result["caveats"] if "could not be listed before cgroup.kill" in c]
        assert len(said) == 1, result["caveats"]
    finally:
        for ident in kids.items():
            kill_identity(*ident)
