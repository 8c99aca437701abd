"""The real :class:`~tether.terminate.Target`: trackers over the live process table.

Membership combines the active trackers on each scan, opens a verified
handle (pidfd) for every new member, and judges completion by the kernel:
cgroup ``populated 0`` and every member's pidfd readable.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence

from tether.linux.cgroupfs import JobCgroup
from tether.process import (
    Delivery,
    ProcessHandle,
    ProcessInfo,
    ancestors,
    read_process,
    snapshot,
    starttime_to_epoch,
)
from tether.report import Survivor
from tether.terminate import Member
from tether.tracking.base import Table, Tracker, TrackerStatus
from tether.tracking.cookie import COOKIE_VAR
from tether.tracking.walk import WalkTracker

#: Rounds of the SIGSTOP sweep before giving up on a tree that keeps growing.
STOP_SWEEP_ROUNDS = 30


class Membership:
    """Members of one job (or one tree), found by trackers, held by pidfds."""

    def __init__(
        self,
        trackers: Sequence[Tracker],
        statuses: Sequence[TrackerStatus],
        *,
        not_before: int,
        leader: tuple[int, int] | None,
        cgroup: JobCgroup | None = None,
        walk_roots: Sequence[tuple[int, int]] = (),
        cookie: str | None = None,
        job_id: str = "",
        caveats: Sequence[str] = (),
        reap_all_children: bool = False,
        reap_leader: Callable[[], None] | None = None,
        wake_fd: int | None = None,
        on_new_members: Callable[[Sequence[Member]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trackers = list(trackers)
        self._walk = WalkTracker(walk_roots)
        self._statuses = tuple(statuses)
        self._caveats = tuple(caveats)
        self.not_before = not_before
        self.leader = leader
        self.cgroup = cgroup
        self.cookie = cookie
        self.job_id = job_id
        self._reap_all = reap_all_children
        self._reap_leader = reap_leader
        self._wake_fd = wake_fd
        self._on_new_members = on_new_members
        self._clock = clock
        self._me = os.getpid()
        # Never a member: tether itself and every ancestor (they may share the
        # job's uid, or even its session when `tether kill` runs from a shell).
        self._protected = {0, 1, self._me, *ancestors(self._me)}
        self._by_identity: dict[tuple[int, int], Member] = {}
        self._handles: dict[Member, ProcessHandle] = {}
        self._ppid: dict[Member, int] = {}
        self._in_cgroup: set[int] = set()
        self._stopped: list[Member] = []
        self._frozen = False

    def protect(self, pids: Iterable[int]) -> None:
        """Never treat these as members (tether's own helpers, e.g. the watchdog)."""
        self._protected.update(pids)

    # -- finding members -------------------------------------------------

    def _allowed(self, info: ProcessInfo) -> bool:
        return (
            info.pid not in self._protected
            and not info.kernel_thread
            and info.starttime >= self.not_before
        )

    def scan(self) -> Sequence[Member]:
        table: Table = snapshot()
        found: dict[int, set[str]] = {}
        self._in_cgroup = set()
        for tracker in self._trackers:
            for pid in tracker.find(table, set(found)):
                info = table.get(pid)
                if info is None:
                    # Started after the snapshot (cgroup.procs is read later).
                    info = read_process(pid)
                    if info is None:
                        continue
                    table[pid] = info
                if self._allowed(info):
                    found.setdefault(pid, set()).add(tracker.name)
                    if tracker.name == "cgroup":
                        self._in_cgroup.add(pid)
        for pid in self._walk.find(table, set(found)):
            if pid in found or self._allowed(table[pid]):
                found.setdefault(pid, set()).add("walk")
        for pid in self._walk.alive_roots(table):
            if pid not in found and self._allowed(table[pid]):
                found[pid] = {"walk"}
        new: list[Member] = []
        for pid, names in found.items():
            info = table[pid]
            member = self._by_identity.get(info.identity)
            if member is None:
                member = self._adopt(info, names)
                if member is None:
                    continue
                new.append(member)
            else:
                member.found_by |= names
            self._ppid[member] = info.ppid
        self._walk.remember(self._by_identity)
        if new and self._on_new_members is not None:
            self._on_new_members(new)
        self._poll_exits(0)
        return list(self._by_identity.values())

    def _adopt(self, info: ProcessInfo, names: set[str]) -> Member | None:
        handle = ProcessHandle.open(info.pid, info.starttime)
        if handle is None:
            return None
        full = handle.read(("cmdline",))
        member = Member(
            pid=info.pid,
            starttime=info.starttime,
            start_time=starttime_to_epoch(info.starttime),
            cmdline=full.describe() if full is not None else f"[{info.comm}]",
            found_by=set(names),
            is_leader=self.leader == info.identity,
        )
        self._by_identity[info.identity] = member
        self._handles[member] = handle
        return member

    def live(self) -> list[Member]:
        return [m for m in self._by_identity.values() if m.alive]

    # -- exits and reaping -----------------------------------------------

    def _poll_exits(self, timeout: float) -> bool:
        """Mark members whose pidfd says exited; True if the wake fd fired."""
        self.reap()
        poller = select.poll()
        fds: dict[int, Member] = {}
        for m in self.live():
            h = self._handles[m]
            if h.fileno >= 0:
                fds[h.fileno] = m
                poller.register(h.fileno, select.POLLIN)
        if self.cgroup is not None and self.cgroup.events_fd >= 0:
            poller.register(self.cgroup.events_fd, select.POLLPRI)
        if self._wake_fd is not None:
            poller.register(self._wake_fd, select.POLLIN)
        unpollable = [m for m in self.live() if self._handles[m].fileno < 0]
        if unpollable:
            # No pidfds (psutil backend): check identities, and poll briefly.
            for m in unpollable:
                if self._handles[m].has_exited():
                    m.exited_at = self._clock()
            timeout = min(timeout, 0.05)
        woke = False
        if fds or timeout > 0:
            for fd, _ev in poller.poll(max(0, int(timeout * 1000))):
                if fd in fds:
                    fds[fd].exited_at = self._clock()
                elif self.cgroup is not None and fd == self.cgroup.events_fd:
                    # kernfs keeps POLLPRI raised until the file is read again.
                    self.cgroup.events()
                elif fd == self._wake_fd:
                    # Drained here, or every later wait would return at once
                    # and the grace would turn into a busy rescan loop.
                    self._drain_wake()
                    woke = True
        self.reap()
        return woke

    def reap(self) -> None:
        """Reap exited children so no zombie of the job outlives it."""
        if self._reap_leader is not None:
            self._reap_leader()
        if self._reap_all:
            # Only in a supervisor that runs nothing but this job: every child
            # it has is the leader or an orphan the subreaper adopted.
            leader_pid = self.leader[0] if self.leader is not None else None
            tried_leader = False
            while True:
                try:
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    return
                if info is None or info.si_pid == 0:
                    return
                if info.si_pid == leader_pid:
                    # Popen reaps its own child so it keeps the exit status;
                    # if it cannot right now (another thread is waiting), stop.
                    if tried_leader or self._reap_leader is None:
                        return
                    self._reap_leader()
                    tried_leader = True
                    continue
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(info.si_pid, os.WNOHANG)
        else:
            for m, ppid in list(self._ppid.items()):
                # A zombie's pid cannot be reused until it is reaped, so
                # waiting for this exact pid can only collect this member.
                if ppid == self._me and not m.alive and not m.is_leader:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(m.pid, os.WNOHANG)

    def _confirmed_empty(self) -> bool:
        if any(m.alive for m in self._by_identity.values()):
            return False
        # An empty cgroup is not proof alone: a leader cancelled within
        # moments of its start may still be in the shim that moves it into
        # the cgroup (outside it, but in the job's session).
        if self.cgroup is not None and self.cgroup.populated():
            return False
        # Every known member has exited: a fresh scan must find no new one,
        # not even one that has exited already — a pid hopper found this way
        # has always just forked its successor.
        before = len(self._by_identity)
        self.scan()
        return len(self._by_identity) == before

    def wait_empty(self, timeout: float) -> bool:
        deadline = self._clock() + timeout
        while True:
            woke = self._poll_exits(0)
            if self._confirmed_empty():
                return True
            left = deadline - self._clock()
            if left <= 0 or woke:
                return False
            if self._poll_exits(min(left, 1.0)):
                return False

    def _drain_wake(self) -> None:
        if self._wake_fd is None:
            return
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self._wake_fd, 4096)

    # -- signalling ------------------------------------------------------

    def send(self, member: Member, sig: int) -> Delivery:
        handle = self._handles.get(member)
        if handle is None or not member.alive:
            return Delivery.GONE
        result = handle.send_signal(sig)
        if result is Delivery.GONE:
            member.exited_at = self._clock()
        return result

    def kill_all(self) -> set[Member]:
        if self.cgroup is None or not self.cgroup.has_kill():
            return set()
        try:
            self.cgroup.kill()
        except OSError:
            return set()
        return {m for m in self.live() if m.pid in self._in_cgroup}

    def freeze(self) -> str | None:
        if self.cgroup is not None:
            try:
                if self.cgroup.freeze(timeout=1.0):
                    self._frozen = True
                    return "cgroup"
            except OSError:
                pass
            self.cgroup.thaw()
        # SIGSTOP sweep: stop what is found, rescan, until the set stops growing.
        seen = {id(m) for m in self._stopped}
        for _round in range(STOP_SWEEP_ROUNDS):
            # Any member not seen before, even one already dead, means the
            # tree was still forking during the last round.
            new = [m for m in self.scan() if id(m) not in seen]
            if not new:
                return "sigstop"
            for m in new:
                seen.add(id(m))
                if m.alive and self.send(m, signal.SIGSTOP) is Delivery.DELIVERED:
                    self._stopped.append(m)
        return "sigstop (tree still growing)"

    def thaw(self) -> None:
        if self._frozen and self.cgroup is not None:
            self.cgroup.thaw()
            self._frozen = False
        for m in self._stopped:
            self.send(m, signal.SIGCONT)
        self._stopped.clear()

    # -- reporting -------------------------------------------------------

    def survivors(self) -> list[Survivor]:
        out = []
        for m in self.live():
            info = self._handles[m].read(("cmdline", "wchan"))
            if info is None:
                continue
            if m.denied:
                reason = "permission denied: tether may not signal this process"
            elif info.state == "D":
                reason = "in uninterruptible sleep (D state): the kernel delays the kill"
            elif info.state == "Z":
                reason = "zombie not reaped by its parent"
            else:
                reason = "still alive after the last step"
            out.append(
                Survivor(
                    pid=m.pid,
                    start_time=m.start_time,
                    cmdline=m.cmdline,
                    state=info.state,
                    wchan=info.wchan if info.wchan not in (None, "0") else None,
                    reason=reason,
                )
            )
        return out

    def run_kill_script(self, argv: Sequence[str], timeout: float) -> str:
        env = dict(os.environ)
        # The script is part of the job's teardown: it carries the job's id
        # (its cookie), so anything it leaves behind is found and killed too.
        env[COOKIE_VAR] = self.cookie if self.cookie is not None else self.job_id
        if self.leader is not None:
            env["TETHER_LEADER_PID"] = str(self.leader[0])
        env["TETHER_MEMBER_PIDS"] = " ".join(str(m.pid) for m in self.live())
        try:
            done = subprocess.run(list(argv), env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"kill script {argv[0]} timed out after {timeout:g}s and was killed"
        except OSError as err:
            return f"kill script {argv[0]} could not run: {err.strerror}"
        return f"kill script {argv[0]} exited with status {done.returncode}"

    @property
    def trackers(self) -> tuple[TrackerStatus, ...]:
        return self._statuses

    @property
    def caveats(self) -> tuple[str, ...]:
        return self._caveats

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles.clear()
