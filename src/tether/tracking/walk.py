"""Descendant walk: children of every process ever seen as a member.

Identities (pid, start time) are remembered, so a child whose parent's pid was
reused by a stranger is not taken for a member.
"""

from __future__ import annotations

from tether.process import children_map
from tether.tracking.base import Table

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


class WalkTracker:
    name = "walk"

    def __init__(self, roots: Iterable[tuple[int, int]] = ()) -> None:
        self.roots = frozenset(roots)
        self.seen: set[tuple[int, int]] = set(self.roots)

    def alive_roots(self, table: Table) -> set[int]:
        """The roots given at the start, where still alive: members themselves
        (the target of ``tether kill``, identities recorded in the journal),
        even when no other tracker can see them."""
        return _alive(table, self.roots)

    def remember(self, identities: Iterable[tuple[int, int]]) -> None:
        self.seen.update(identities)

    def find(self, table: Table, members: set[int]) -> Iterable[int]:
        kids = children_map(table)
        start = set(members)
        start.update(_alive(table, self.seen))
        found: set[int] = set()
        stack = list(start)
        while stack:
            pid = stack.pop()
            for child in kids.get(pid, ()):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        return found


def _alive(table: Table, identities: Iterable[tuple[int, int]]) -> set[int]:
    return {
        pid for pid, st in identities if (p := table.get(pid)) is not None and p.starttime == st
    }
