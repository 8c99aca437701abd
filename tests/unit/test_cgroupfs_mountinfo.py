"""cgroupfs.find_cgroup2_mount: the mount point as mountinfo(5) writes it
(space, tab, newline and backslash as octal escapes), turned back into the
path it names, whatever else the name holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether._platform.linux.cgroupfs import find_cgroup2_mount

LINE = "35 24 0:30 / {point} rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n"
OTHER = "33 24 0:28 / /sys/fs/cgroup/cpu rw,relatime shared:7 - cgroup cgroup rw,cpu\n"


@pytest.mark.parametrize(
    ("written", "path"),
    [
        ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified"),
        ("/mnt/with\\040space", "/mnt/with space"),
        ("/mnt/tab\\011and\\012newline", "/mnt/tab\tand\nnewline"),
        ("/mnt/back\\134slash", "/mnt/back\\slash"),
        ("/mnt/ünïcødé\\040名前", "/mnt/ünïcødé 名前"),  # beyond latin-1, with an escape
        ("/mnt/ünïcødé", "/mnt/ünïcødé"),
    ],
)
def test_the_mount_point_is_the_path_it_names(tmp_path: Path, written: str, path: str) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(OTHER + LINE.format(point=written), encoding="utf-8")
    assert find_cgroup2_mount(str(info)) == path


def test_bytes_that_are_not_utf8_come_back_as_the_same_bytes(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_bytes(LINE.format(point="/mnt/x\\040").encode().replace(b"x", b"\xff"))
    found = find_cgroup2_mount(str(info))
    assert found is not None
    assert os.fsencode(found) == b"/mnt/\xff "


def test_no_cgroup2_line_is_none(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(OTHER, encoding="utf-8")
    assert find_cgroup2_mount(str(info)) is None
