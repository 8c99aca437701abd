"""Hostile input to the pruner: names, huge or endless job lists, forged job cgroups."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import proc_stat, wait_for
from tether.prune import sources as src
from tether.prune.classify import Stray, slurm_job_ids
from tether.prune.outcome import _view
from tether.prune.scan import Table
from tether.prune.text import visible

EMPTY = Table({}, {}, 0.0)


def test_visible_escapes_what_could_steer_a_terminal_or_a_log() -> None:
    hostile = "x\x1b]0;owned\x07\nevent=stray action=killed\r\udcff\\"
    shown = visible(hostile)
    assert shown == "x\\x1b]0;owned\\x07\\nevent=stray action=killed\\r\\xff\\"
    assert shown.isprintable() and shown.encode("ascii")
    assert visible("plain text é") == "plain text é"


def test_a_stray_with_a_hostile_non_utf8_argv_is_shown_escaped() -> None:
    # $0 of `sh -c` is whatever the process wants it to be, bytes included.
    argv0 = b"x\xff\x1b[2J\nevent=forged"
    # `read` is a builtin: the shell itself waits, with no child to leak.
    proc = subprocess.Popen([b"/bin/sh", b"-c", b"read x", argv0], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: argv0 in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), what="exec")
        st = proc_stat(proc.pid)
        assert st is not None
        stray = Stray(proc.pid, st.starttime, st.ppid, st.sid, (0, 0, 0, 0), st.comm, 0.0,
                      0.0, "rule", False)  # fmt: skip
        view = _view(stray, "would kill")
        assert view.cmdline.endswith("x\\xff\\x1b[2J\\nevent=forged"), view.cmdline
        json.dumps({"cmdline": view.cmdline, "comm": view.comm}).encode("ascii")
        assert view.cmdline.isprintable() and view.comm.isprintable()
    finally:
        proc.kill()
        proc.communicate()


def test_sessions_file_must_be_a_small_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)  # opening it for reading would wait for a writer
    with pytest.raises(src.SourceError, match="not a regular file"):
        src.SessionList(path=str(fifo)).jobs(EMPTY)
    with pytest.raises(src.SourceError, match="not a regular file"):
        src.SessionList(path="/dev/zero").jobs(EMPTY)
    big = tmp_path / "big"
    big.write_bytes(b"# padding\n" * (src.MAX_SESSIONS_FILE // 10 + 1))
    big.chmod(0o600)
    with pytest.raises(src.SourceError, match="larger than"):
        src.SessionList(path=str(big)).jobs(EMPTY)


def test_a_job_list_command_is_bounded_in_size_and_time() -> None:
    with pytest.raises(src.SourceError, match="printed more than"):
        src.run_command("sessions-command", ["yes"])
    with pytest.raises(src.SourceError, match="did not answer within"):
        src.run_command("sessions-command", ["sleep", "30"], timeout=0.2)


def test_no_job_steps_is_an_empty_list_and_slurm_variables_reach_scontrol() -> None:
    # What real scontrol listpids says on an idle node: status 1.
    idle = ("sh", "-c", "echo 'PID JOBID'; echo 'No job steps exist on this node.' >&2; exit 1")
    assert src.Scontrol(idle).jobs(EMPTY) == []
    with pytest.raises(src.SourceError, match="status 1"):
        src.Scontrol(
            ("sh", "-c", "echo 'Could not establish a configuration source' >&2; exit 1")
        ).jobs(EMPTY)
    echo = ("sh", "-c", 'echo "$SLURM_CONF $SLURMD_NODENAME ${LD_PRELOAD:-none}" >&2; exit 3')
    env = {"SLURM_CONF": "/site/slurm.conf", "SLURMD_NODENAME": "n1", "LD_PRELOAD": "/x.so"}
    with pytest.raises(src.SourceError, match=r"/site/slurm\.conf n1 none"):
        src.Scontrol(echo, env=env).jobs(EMPTY)


def test_scontrol_lists_a_job_whose_pids_are_minus_one() -> None:
    # proctrack/cgroup: the job is there, its pids are in its cgroup.
    out = ("sh", "-c", "printf 'PID JOBID STEPID\\n-1 7 batch\\n'")
    jobs = src.Scontrol(out).jobs(EMPTY)
    assert [(j.job_id, j.pids) for j in jobs] == [("7", frozenset())]


def test_slurm_job_cgroups_count_only_when_root_owned(tmp_path: Path) -> None:
    for layout in ("slurm_n1/uid_1002/job_5", "system.slice/n1_slurmstepd.scope/job_6"):
        (tmp_path / layout).mkdir(parents=True)
    reader = src.SlurmCgroups([str(tmp_path)])
    assert sorted(j[0] for j in reader.job_dirs()) == ["5", "6"]
    # A user with a delegated cgroup subtree can make these; not as root.
    forged = tmp_path / "user.slice" / "slurmstepd.scope"
    (forged / "job_777").mkdir(parents=True)
    os.chown(forged, 1002, 1002)
    os.chown(forged / "job_777", 1002, 1002)
    os.chown(tmp_path / "slurm_n1" / "uid_1002" / "job_5", 1002, 1002)
    assert sorted(j[0] for j in reader.job_dirs()) == ["6"]
    assert any("job_777" in r or "slurmstepd.scope" in r for r in reader.refused)


def test_slurm_job_ids_from_an_environment() -> None:
    env = b"A=1\0SLURM_JOB_ID=42\0SLURM_JOBID=43\0SLURM_JOB_ID=x\0SLURM_JOB_IDX=9\0"
    assert slurm_job_ids(env) == {"42", "43"}
