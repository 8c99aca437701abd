"""The process table's stat-only snapshot through the optional native /proc
reader (tether._platform.linux._procscan) must be the table the Python way
builds: the same rows, names decoded the same way (invalid UTF-8 replaced),
the same lines refused, the same unreadable entries skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_procscan import HOSTILE, fake_proc

from tether._platform import linux
from tether._platform._common import ProcessInfo
from tether._platform.linux import procfs, procscan

needs_native = pytest.mark.skipif(procscan.module() is None, reason="_procscan is not built")


def both_ways(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[int, ProcessInfo], ...]:
    monkeypatch.setattr(procscan, "use_native", True)
    native = linux.snapshot(())
    monkeypatch.setattr(procscan, "use_native", False)
    python = linux.snapshot(())
    return native, python


@needs_native
def test_a_fake_proc_of_hostile_stat_lines_gives_the_same_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_proc(tmp_path / "proc", HOSTILE)
    monkeypatch.setattr(procfs, "PROC", str(tmp_path / "proc"))
    native, python = both_ways(monkeypatch)
    assert list(native.items()) == list(python.items())
    assert len(python) > 10
    assert any("\ufffd" in p.comm for p in python.values())  # invalid UTF-8, replaced
    assert any(p.kernel_thread for p in python.values())


@needs_native
def test_the_real_proc_gives_the_same_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process whose name holds what a stat line's parser must survive.
    comm = b"a) (\xff x"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"open('/proc/self/comm', 'wb').write({comm!r}); print(flush=True); "
            "import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "TETHER_JOB_ID": "test-snapshot-native"},
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()
        for _ in range(100):  # until it sleeps: its state is then steady
            if Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b") ", 1)[1][:1] == b"S":
                break
            time.sleep(0.01)
        native, python = both_ways(monkeypatch)
        assert native[child.pid] == python[child.pid]
        assert native[child.pid].comm == comm.decode("utf-8", "replace")
        common = [
            pid
            for pid in native
            if pid in python and native[pid].starttime == python[pid].starttime
        ]
        assert len(common) > 5
        for pid in common:  # others may change state, group or name between the scans
            a, b = native[pid], python[pid]
            assert (a.pid, a.ppid, a.kernel_thread) == (b.pid, b.ppid, b.kernel_thread)
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
