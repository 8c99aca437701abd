"""The process table's stat-only snapshot through the optional native /proc
reader (tether._platform.linux._procscan) must be the table the Python way
builds: the same rows, names decoded the same way (invalid UTF-8 replaced),
the same lines refused, the same unreadable entries skipped."""

from __future__ import annotations

import errno
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
    # Its entry 9 cannot be read (EISDIR): no table, either way, rather
    # than one that silently lacks a process.
    for native in (True, False):
        monkeypatch.setattr(procscan, "use_native", native)
        with pytest.raises(OSError) as raised:
            linux.snapshot(())
        assert raised.value.errno == errno.EISDIR
    (tmp_path / "proc" / "9" / "stat").rmdir()
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


_OUT_OF_FDS = """
import os, resource
from tether._platform import linux
from tether._platform.linux import procscan
procscan.use_native = {native}
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
for fd in held[-{free}:]:
    os.close(fd)
before = {{int(p) for p in os.listdir("/proc") if p.isdigit()}}
try:
    table = linux.snapshot(())
except OSError as err:
    print("raised", err.errno)
else:
    after = {{int(p) for p in os.listdir("/proc") if p.isdigit()}}
    print("missing", len((before & after) - set(table)))
"""


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("free", [1, 2])
def test_a_process_out_of_fds_gets_no_snapshot_rather_than_a_partial_one(
    native: bool, free: int
) -> None:
    """With one or two fds left (the native reader's second thread needs
    one more), a snapshot is an error, never a table that lacks processes."""
    if native and procscan.module() is None:
        pytest.skip("_procscan is not built")
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", _OUT_OF_FDS.format(native=native, free=free)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()  # fmt: skip
        if out[0] == "missing":  # alive before and after, yet not in the table
            assert out == ["missing", "0"]
        else:
            assert out == ["raised", str(errno.EMFILE)]


@pytest.mark.parametrize("line", HOSTILE)
def test_every_python_parser_of_a_stat_line_reads_it_alike(line: bytes) -> None:
    """procfs.parse_stat, the snapshot's and the pruner's: one rule
    (procfs.split_stat), so a hostile line is read, or refused, alike."""
    from tether.prune.scan import parse_stat as prune_parse

    def read(parse: object) -> object:
        try:
            p = parse(line)  # type: ignore[operator]
        except (ValueError, IndexError):
            return "refused"
        # comm itself: decoded with "replace" for tether, surrogateescape for the pruner.
        return (p.pid, p.ppid, p.pgid, p.sid, p.starttime, p.state, p.comm.isascii() and p.comm)

    stat = read(procfs.parse_stat)
    assert read(linux.info_from_stat) == stat
    assert read(lambda data: prune_parse(data, 0.0)) == stat
