"""The watchdog: terminates a job whose supervisor died.

Started by the supervisor before the job's first process, one per job, as
``python -m tether.watchdog JOURNAL_DIR JOB_ID PID START_TIME`` with a pipe
from the supervisor on stdin. It is the supervisor's own child: parentage,
not a start time read from /proc, proves which process it watches. It is
not a member of the job: it starts before the leader (so it is older than
the job's start-time floor), in a session of its own (terminal signals to
the job's group miss it), outside the job's cgroup, and the supervisor
protects its pid from every scan.

It sleeps in poll() on two things and costs no CPU while the job runs:

- the supervisor's pidfd (where there are pidfds), readable when the
  supervisor exits for any reason (SIGKILL, OOM kill, crash) — unlike
  PR_SET_PDEATHSIG, which fires when the *thread* that forked us exits, a
  trap in a threaded library caller;
- the pipe, on which the supervisor writes ``done`` after it has proven the
  tree empty and removed the journal record.

When the supervisor dies without saying ``done``, the watchdog reads the job's
record from the journal and terminates what is left with the recorded policy
(see :mod:`tether.recovery`), then exits: it never outlives its job.
"""

from __future__ import annotations

import os
import select
import sys

# Only os/select/sys at import: the watchdog idles for the job's whole life
# and starts beside every job, so it imports the engine only when needed.

#: What a supervisor writes to its watchdog once the job is over.
WATCHDOG_DONE = b"done\n"


def _say(message: str) -> None:
    try:
        os.write(2, f"tether watchdog: {message}\n".encode(errors="replace"))
    except OSError:
        pass


def watch(supervisor_fd: int, control_fd: int) -> bool:
    """Sleep until the supervisor says done (False) or is gone (True)."""
    poller = select.poll()
    poller.register(control_fd, select.POLLIN)
    if supervisor_fd >= 0:
        poller.register(supervisor_fd, select.POLLIN)
    received = b""
    while True:
        events = dict(poller.poll())
        # The pipe first: a supervisor that said "done" and then exited is
        # both readable and gone, and must count as done.
        if control_fd in events:
            try:
                chunk = os.read(control_fd, 64)
            except InterruptedError:
                continue
            received += chunk
            if WATCHDOG_DONE in received:
                return False
            if not chunk:
                return True
        elif supervisor_fd in events:
            return True


def _open_supervisor(pid: int) -> int | None:
    """A pollable fd on the supervisor while it lives, -1 if there is no such fd,
    or None once it is gone.

    The supervisor spawns its watchdog itself, so parentage proves identity
    without reading a start time (and without /proc, on any backend): a
    parent that exits re-parents us before its pid can be reused, so if
    getppid() still names it after pidfd_open, the pidfd is the supervisor.
    Without pidfds (not Linux, or Linux < 5.3) the pipe alone tells of its
    death: its write end closes when the supervisor exits.
    """
    fd = -1
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError:
            fd = -1
    if os.getppid() != pid:
        if fd >= 0:
            os.close(fd)
        return None
    return fd


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        _say("usage: python -m tether.watchdog JOURNAL_DIR JOB_ID PID START_TIME")
        return 2
    # START_TIME is the supervisor's start time as the journal records it;
    # parentage is what proves the supervisor here (see _open_supervisor).
    directory, job_id, pid_text, _start_text = argv
    # Hold no mount busy for the job's lifetime.
    os.chdir("/")
    pid = int(pid_text)
    pidfd = _open_supervisor(pid)
    if pidfd is None:
        gone = True  # the supervisor died before we could even look
    else:
        gone = watch(pidfd, 0)
        if pidfd >= 0:
            os.close(pidfd)
    if not gone:
        return 0

    if sys.flags.no_site:
        # Started with -S for a cheap idle; recovery may need site-packages
        # (the psutil backend imports psutil), so add them now.
        import site

        site.main()
    from tether.journal import Journal, JournalProblem
    from tether.recovery import recover

    journal = Journal(directory)
    try:
        record = journal.read(job_id)
        if record is None:
            return 0  # the supervisor finished the job before it died
        if isinstance(record, JournalProblem):
            _say(f"cannot recover job {job_id}: {record}")
            return 1
        _say(
            f"supervisor pid {pid} of job {job_id} is gone; terminating the job "
            f"with {record.policy_text}"
        )
        report = recover(
            record,
            journal,
            reason=f"supervisor pid {pid} died",
            protected=[os.getpid()],
        )
    finally:
        journal.close()
    killed = len(report.killed)
    if report.complete:
        _say(f"job {job_id}: {killed} member(s) terminated, nothing left")
        return 0
    _say(
        f"job {job_id}: {killed} member(s) terminated, {len(report.survivors)} survived: "
        + ", ".join(f"pid {s.pid} ({s.state})" for s in report.survivors)
        + "; the journal record is kept for `tether reap`"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
