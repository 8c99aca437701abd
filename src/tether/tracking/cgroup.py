"""cgroup v2 tracker: every process in the job's cgroup, whatever it did."""

from __future__ import annotations

from tether._platform.linux.cgroupfs import JobCgroup, cgroup_removed
from tether.tracking.base import Table

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


class CgroupTracker:
    name = "cgroup"

    def __init__(self, cgroup: JobCgroup) -> None:
        self.cgroup = cgroup

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        try:
            # "populated 0" (one pread of cgroup.events, which the kernel
            # updates as the last task of the subtree exits) says what an
            # empty listing of every sub-cgroup's procs would.
            if not self.cgroup.populated():
                return ()
            return self.cgroup.procs()
        except OSError as err:
            # Removed (ENOENT, ENODEV through the open cgroup.events): no
            # process left in it. Any other failure (EMFILE) is raised: "no
            # member" would let a scan take the tree for empty, and the
            # policy's polite steps would skip what only the cgroup holds.
            if cgroup_removed(err):
                return ()
            raise
