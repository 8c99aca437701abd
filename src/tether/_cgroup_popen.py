"""Popen whose child is born in the job cgroup: the Popen path of a leader.

A module of its own, imported only when a job's leader has pipes or file
objects for its stdio (Popen makes and wraps them; the clone is
tether.job._spawn_leader, as for every leader born in its cgroup): subprocess
and what it imports are ~10 ms of a start (issue 15). ``tether run`` and the
remote agent spawn their leader without it (tether.job._SpawnedLeader).
"""

from __future__ import annotations

import os
import subprocess

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
        from tether._platform.linux import spawn
        from tether.job import _spawn_leader

        c = spawn.ChildArgs(*popen_args)
        # Only what spawn() does itself (Popen passes process_group=-1 for "none").
        plain = (c.preexec_fn, c.executable, c.gid, c.uid) == (None,) * 4
        plain = plain and c.process_group in (None, -1) and c.close_fds and c.restore_signals
        if plain and c.umask == -1 and not c.pass_fds:  # spawn() checks what its way needs
            leader = _spawn_leader(
                self._direct,
                os.environ if c.env is None else c.env,
                (c.p2cread, c.c2pwrite, c.errwrite),
                cwd=None if c.cwd is None else os.fsdecode(c.cwd),
                start_new_session=c.start_new_session,
                extra_groups=c.gids,
            )
            if leader is not None:
                self.pid = leader.pid
                self.born = leader.born
                self._child_created = True
                self._close_pipe_fds(*c[10:16])  # type: ignore[attr-defined]
                return
        super()._execute_child(*popen_args)  # type: ignore[misc]
