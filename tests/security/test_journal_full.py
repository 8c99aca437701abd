"""Issue 17, item 10: a journal write failure mid-job (a full file system).

The journal lives on a small tmpfs (TETHER_RUNTIME_DIR) that the test fills
once the job runs, so every later record write fails with ENOSPC. The job
keeps the identities it finds in memory, says so once (stderr of tether run,
the report's caveats), and recovery works from the last record written.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import SRC, TEST_VAR, processes_with_env, wait_for, wait_for_file
from tether._records import replace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root)")


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a mounted 256 KiB tmpfs, a file that fills it when called for)."""
    mnt = tmp_path / "runtime"
    mnt.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
                   check=True)  # fmt: skip
    try:
        yield mnt, mnt / "filler"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    # Small files too: tmpfs may still have a partial page.
    with pytest.raises(OSError) as caught:
        (path.parent / "probe").write_bytes(b"x" * 8192)
    assert caught.value.errno == errno.ENOSPC


def _survivors(marker: str) -> list[int]:
    return [st.pid for st in processes_with_env(f"{TEST_VAR}={marker}".encode())]


def _start(
    tmp_path: Path, runtime: Path, script: str, *args: str
) -> tuple[subprocess.Popen[str], str]:
    marker = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": SRC, "TETHER_RUNTIME_DIR": str(runtime), TEST_VAR: marker}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether.cli", "run", *args, "--", "sh", "-c", script],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, marker


# The leader waits for "go", then starts a member the record has not seen.
_SCRIPT = "echo $$ > ready; while [ ! -e go ]; do sleep 0.02; done; sleep 1000 & echo $! > child; "


def test_a_full_journal_is_said_once_and_the_job_still_ends_whole(
    tmp_path: Path, full_fs: tuple[Path, Path]
) -> None:
    runtime, filler = full_fs
    report = tmp_path / "report.json"
    proc, marker = _start(tmp_path, runtime, _SCRIPT + "exit 0", "--json-file", str(report))
    try:
        wait_for_file(tmp_path / "ready")
        records = list(runtime.glob("*.json"))
        assert len(records) == 1
        written = json.loads(records[0].read_text())
        _fill(filler)
        (tmp_path / "go").touch()
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # The member found after the failure (the leftover sleep) was still ended.
    assert _survivors(marker) == []
    # Said once as a warning (each later write fails too), and in the report.
    warnings = [line for line in err.splitlines() if line.startswith("tether: warning:")]
    assert len(warnings) == 1, err
    assert "No space left on device" in warnings[0] and "kept in memory" in warnings[0]
    caveats = json.loads(report.read_text())["caveats"]
    assert any("the journal could not be written" in c for c in caveats), caveats
    child = int((tmp_path / "child").read_text())
    members = {m["pid"] for m in json.loads(report.read_text())["members"]}
    assert child in members
    # What was written before the failure was the whole record, never a torn one.
    assert written["job_id"] and written["leader"]


def test_recovery_works_from_the_last_record_written(
    tmp_path: Path, full_fs: tuple[Path, Path]
) -> None:
    runtime, filler = full_fs
    proc, marker = _start(tmp_path, runtime, _SCRIPT + "touch started; wait")
    try:
        wait_for_file(tmp_path / "ready")
        _fill(filler)
        (tmp_path / "go").touch()
        wait_for((tmp_path / "started").exists, what="the member")
        assert _survivors(marker), "the job's processes run"
        # tether run dies: the watchdog recovers the job from the record on
        # the full file system (written before it filled up).
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        wait_for(lambda: not _survivors(marker), timeout=60, what="the recovery")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in _survivors(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_short_write_never_tears_the_record(full_fs: tuple[Path, Path]) -> None:
    """Near full, write() stores part of a record and returns short: the
    record written before must stay whole (it is what recovery reads)."""
    from tether.errors import JournalError
    from tether.identity import Identity
    from tether.journal import JobRecord, Journal, new_record
    from tether.policy import Policy

    runtime, filler = full_fs
    journal = Journal(str(runtime))
    first = new_record(
        job_id="a" * 24, cookie="a" * 24, argv=("small",), policy=Policy.default(),
        supervisor=Identity(os.getpid(), 1), not_before=1, cgroup=None, trackers=(),
        restartable=False,
    )  # fmt: skip
    journal.write(first)
    # Leave 8 KiB free, then write a record of over 64 KiB.
    st = os.statvfs(runtime)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - (8 << 10)))
    big = replace(first, argv=("x" * (64 << 10),))
    with pytest.raises(JournalError, match="No space left on device"):
        journal.write(big)
    kept = journal.read(first.job_id)
    assert isinstance(kept, JobRecord) and kept.argv == ("small",)
    assert [p.name for p in runtime.iterdir() if p.name.startswith(".")] == []
    journal.close()
