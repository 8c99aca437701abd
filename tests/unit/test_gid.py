"""The supplementary-group tracker (tether.tracking.gid), without the pruner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tether.errors import UsageError
from tether.identity import Identity
from tether.process import ProcessInfo
from tether.tracking import gid
from tether.tracking.gid import GidTracker, processes_with_supplementary_gid, supplementary_groups

TAG = 47117  # a gid no user is a member of


@pytest.mark.parametrize(
    ("status", "groups"),
    [
        (b"Name:\tsleep\nUid:\t0\t0\t0\t0\nGroups:\t4 27 47117 \nNgid:\t0\n", (4, 27, 47117)),
        (b"Name:\tsleep\nGroups:\t\nNgid:\t0\n", ()),
        (b"Groups:\t5", (5,)),
        (b"Name:\tno groups line\n", ()),
        (b"", ()),
    ],
)
def test_supplementary_groups(status: bytes, groups: tuple[int, ...]) -> None:
    assert supplementary_groups(status) == groups


def test_garbage_on_the_groups_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        supplementary_groups(b"Groups:\t4 x\n")


def info(pid: int, starttime: int) -> ProcessInfo:
    return ProcessInfo(pid, 1, pid, pid, starttime, "S", "sleep")


def test_find_keeps_only_the_process_the_table_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    carriers = [Identity(10, 100), Identity(11, 110), Identity(12, 120)]
    monkeypatch.setattr(gid, "processes_with_supplementary_gid", lambda g: carriers)
    table = {
        10: info(10, 100),  # the same process: found
        11: info(11, 999),  # pid 11 reused since the table was taken: not this one
        13: info(13, 130),  # no tag: not found
    }
    # 12 started after the table was taken: found, the caller reads it itself.
    assert list(GidTracker(TAG).find(table, set())) == [10, 12]
    assert GidTracker(TAG).name == "gid"


def test_negative_gid_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="not a group id"):
        processes_with_supplementary_gid(-1)


@pytest.fixture
def tagged() -> Iterator[subprocess.Popen[bytes]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (uid 0) to give a process a supplementary group")
    proc = subprocess.Popen(["sleep", "60"], extra_groups=[TAG])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_tagged_process_is_found_until_it_exits(tagged: subprocess.Popen[bytes]) -> None:
    from tether.process import read_process

    me = read_process(tagged.pid)
    assert me is not None
    assert processes_with_supplementary_gid(TAG) == [Identity(tagged.pid, me.starttime)]
    assert list(GidTracker(TAG).find({tagged.pid: me}, set())) == [tagged.pid]
    tagged.kill()
    tagged.wait()
    assert processes_with_supplementary_gid(TAG) == []


def test_the_tracker_does_not_load_the_pruner() -> None:
    # `tether run --tag-gid` and recovery of a tagged job use the tracker; the
    # pruner (26 more modules) stays unloaded.
    code = (
        "import sys, tether.tracking.gid, tether.recovery, tether.job; "
        "print(sorted(m for m in sys.modules if m.startswith('tether.prune')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
