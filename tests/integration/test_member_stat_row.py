"""The lean parse of a frozen member's stat line (membership._stat_row) calls
a process a kernel thread exactly where the table's full parse does: its
PF_KTHREAD flag, pid 2 (kthreadd) or parent 2 (kthreadd's children). A
kernel thread is never adopted, so a difference would name one in a report,
or drop a member from it."""

from __future__ import annotations

import pytest

from tether._platform.linux import parse_captured, procfs
from tether.membership import _stat_row

with open("/proc/self/stat", "rb") as _f:
    _OWN = _f.read()
_REST = _OWN[_OWN.rindex(b")") + 2 :].split()


def _line(pid: int, ppid: int, flags: int) -> bytes:
    rest = list(_REST)
    rest[1], rest[6], rest[19] = b"%d" % ppid, b"%d" % flags, b"4242"
    return b"%d (k) %s\n" % (pid, b" ".join(rest))


@pytest.mark.parametrize(
    ("pid", "ppid", "flags", "kthread"),
    [
        (2, 0, 0, True),  # kthreadd, whatever its flags say
        (77, 2, 0, True),  # a child of kthreadd
        (77, 1, procfs.PF_KTHREAD, True),
        (77, 1, 0, False),
        (77, 3, 0x40, False),
    ],
)
def test_a_kernel_thread_is_one_by_the_full_parse_rule(
    pid: int, ppid: int, flags: int, kthread: bool
) -> None:
    line = _line(pid, ppid, flags)
    full = parse_captured(line, b"")
    assert full is not None and full.kernel_thread is kthread
    assert _stat_row(line) == (pid, ppid, 4242, "k", kthread)
