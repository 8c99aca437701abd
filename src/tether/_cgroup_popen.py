"""Popen whose child is born in the job cgroup: the Popen path of a leader.

A module of its own, imported only when a job's leader needs a Popen
(pipes, text mode, pass_fds, no native clone in a large process): subprocess
and what it imports are ~10 ms of a start (issue 15). ``tether run`` and the
remote agent spawn their leader without it (tether.job._SpawnedLeader).
"""

from __future__ import annotations

import os
import subprocess
import time

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


class CgroupPopen(subprocess.Popen["Any"]):
    """Popen whose child is born in the job cgroup (clone3: natively in any
    process, by ctypes only in a single-threaded one such as `tether run`),
    else runs the shim argv it was given."""

    def __init__(self, direct: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        self._direct = direct
        super().__init__(*args, **kwargs)

    #: (start time, pidfd) of the leader its clone made, when known (see below).
    born: tuple[int, int] | None = None

    def _execute_child(self, *popen_args: Any) -> None:
        from tether._platform.linux import procfs, spawn
        from tether.job import _CLONE_MAX_RESIDENT

        c = spawn.ChildArgs(*popen_args)
        # Only what spawn() does itself (Popen passes process_group=-1 for "none").
        plain = (c.preexec_fn, c.executable, c.gid, c.uid) == (None,) * 4
        plain = plain and c.process_group in (None, -1) and c.close_fds and c.restore_signals
        # The ctypes clone3 is a fork (page tables copied, copy-on-write
        # after) where Popen vforks: its cost grows with this process's size
        # while the shim's cgroup.procs write costs a fixed ~10 ms. A large
        # caller (200 MB: 38 ms against 23 ms) keeps the shim unless the
        # native clone, a vfork, is there.
        small = spawn.native() or spawn.resident_bytes() <= _CLONE_MAX_RESIDENT
        if plain and small and not c.pass_fds:  # spawn() checks what its way needs
            before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            try:
                pid, pidfd = spawn.spawn(
                    self._direct["argv"],
                    os.environ if c.env is None else c.env,
                    stdio=(c.p2cread, c.c2pwrite, c.errwrite),
                    cgroup=self._direct["cgroup"],
                    start_new_session=c.start_new_session,
                    umask=c.umask,
                    extra_groups=c.gids,
                    nofile=self._direct["nofile"],
                    cwd=None if c.cwd is None else os.fsdecode(c.cwd),
                )
            except spawn.Unavailable:
                pass
            else:
                # The clone's own pidfd and its start time from the clock
                # (procfs.starttime_between): Job holds the leader without
                # the first lookup of a new pid's /proc entries (~0.1-0.3 ms),
                # when both readings fall in one tick.
                starttime = procfs.starttime_between(
                    before, time.clock_gettime_ns(time.CLOCK_BOOTTIME)
                )
                if starttime is None:
                    os.close(pidfd)
                else:
                    self.born = (starttime, pidfd)
                self.pid = pid
                self._child_created = True
                self._close_pipe_fds(*c[10:16])  # type: ignore[attr-defined]
                return
        super()._execute_child(*popen_args)  # type: ignore[misc]
