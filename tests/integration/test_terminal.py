"""The CLI under a pseudo-terminal: trees, colour, progress and tables for people;
the same commands piped keep the plain, stable output scripts parse."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import kill_identity, proc_stat, tether_cmd, wait_for, wait_for_file
from tether.display import Paint, ProgressLine, fold, report_table, tree_lines
from tether.report import MemberRecord, Report, StepRecord, Survivor
from tether.terminate import Progress
from tether.tracking.base import TrackerStatus

ESC = "\x1b["
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LIVENESS = 60.0  # a bound for "did not hang", not a timing assertion


def plain(text: str) -> str:
    return ANSI.sub("", text)


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env["TERM"] = "xterm-256color"
    env.update(extra)
    return env


def set_columns(fd: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))


def run_in_pty(
    argv: list[str],
    env: dict[str, str],
    *,
    ready: Path | None = None,
    signal_after: int = 0,
    columns: int | None = None,
) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pty; its status and all it wrote.

    With ``ready``, once that file exists the process is sent ``signal_after``.
    Reads until EOF, bounded by a deadline.
    """
    master, slave = os.openpty()
    if columns is not None:
        set_columns(slave, columns)
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + LIVENESS
    signalled = ready is None
    try:
        while time.monotonic() < deadline:
            if not signalled and ready is not None and ready.exists():
                proc.send_signal(signal_after)
                signalled = True
            readable, _, _ = select.select([master], [], [], 0.1)
            if readable:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the pty
                    break
                if not data:
                    break
                out += data
        else:
            pytest.fail(f"{argv} did not finish; wrote {bytes(out)!r}")
        return proc.wait(timeout=LIVENESS), out.decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- tether ps PID -------------------------------------------------------------------


@pytest.fixture
def small_tree() -> Iterator[int]:
    """sh with two children, one of which has a child: four processes."""
    proc = subprocess.Popen(["sh", "-c", "sleep 100 & sh -c 'sleep 100 & wait' & wait"])
    root = proc.pid

    def descendants() -> list[tuple[int, int]]:
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                st = proc_stat(k)
                if st is not None:
                    found.append((k, st.starttime))
                    todo.append(k)
        return found

    wait_for(lambda: len(descendants()) == 3, what="the tree's three descendants")
    try:
        yield root
    finally:
        for pid, starttime in descendants():
            kill_identity(pid, starttime)
        proc.kill()
        proc.wait()


def test_ps_on_a_terminal_draws_the_tree_in_colour(small_tree: int) -> None:
    rc, out = run_in_pty(tether_cmd("ps", str(small_tree)), env_with())
    assert rc == 0, out
    assert ESC in out and "\x1b[32mwalk\x1b[0m" in out  # a tracker's colour
    text = plain(out)
    assert "├─ sleep 100" in text
    assert "└─ sh -c sleep 100 & wait" in text
    assert "   └─ sleep 100" in text  # the grandchild, under the last child
    assert re.search(rf"^\s*{small_tree}\s+\d+\s+sleeping\s+walk\s+sh -c", text, re.M), text
    assert "# walk: used" in text


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}], ids=["NO_COLOR", "dumb"])
def test_ps_without_colour_still_draws_the_tree(small_tree: int, env: dict[str, str]) -> None:
    rc, out = run_in_pty(tether_cmd("ps", str(small_tree)), env_with(**env))
    assert rc == 0, out
    assert "\x1b" not in out
    assert "├─ sleep 100" in out and "sleeping" in out


def test_ps_piped_keeps_the_plain_columns(small_tree: int) -> None:
    done = subprocess.run(
        tether_cmd("ps", str(small_tree)), capture_output=True, text=True, env=env_with(),
        timeout=LIVENESS, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "─" not in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0] == f"{'PID':>7} {'PPID':>7} S  {'FOUND BY':<22} COMMAND"
    rows = [ln for ln in lines[1:] if not ln.startswith("#")]
    assert len(rows) == 4
    for row in rows:
        assert re.fullmatch(r"\s*\d+\s+\d+ [RS]  walk\s+ *\S.*", row), row
    assert rows[0].split()[0] == str(small_tree)


# -- tether run: progress and the report -------------------------------------------


def term_ignoring_job(tmp_path: Path) -> list[str]:
    """A leader and a child that both ignore TERM; the child says when it is ready."""
    child = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "pathlib.Path(sys.argv[1]).write_text('ready')\n"
        "time.sleep(100)\n"
    )
    return [
        "sh", "-c", f'trap "" TERM; {sys.executable} -c "$0" "$1" & wait; wait',
        child, str(tmp_path / "ready"),
    ]  # fmt: skip


def run_argv(tmp_path: Path) -> list[str]:
    return tether_cmd("run", "--policy", "TERM,3s,KILL", "--", *term_ignoring_job(tmp_path))


def test_run_on_a_terminal_shows_progress_and_a_table(tmp_path: Path) -> None:
    rc, out = run_in_pty(
        run_argv(tmp_path), env_with(), ready=tmp_path / "ready", signal_after=signal.SIGTERM
    )
    assert rc == 128 + signal.SIGKILL, out  # the leader ignored TERM: KILL ended it
    text = plain(out)
    assert "\rtether: step 1/2 TERM: 2 member(s) left, " in text, repr(out)
    assert "s of grace left" in text
    assert "\x1b[K" in out  # the line is redrawn in place
    # Cleared before the report: nothing of the progress line is left before it.
    assert "\r\x1b[K\r" + "tether: job " in out.replace("\x1b[1m", "").replace("\x1b[0m", "")
    assert "HOW IT ENDED" in text
    assert len(re.findall(r"killed by KILL", text)) >= 2
    assert "tree confirmed empty by the kernel" in text
    assert "\x1b[32mtree confirmed empty by the kernel (" in out


def test_run_piped_shows_no_progress_and_the_plain_report(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        run_argv(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env_with(),
    )  # fmt: skip
    try:
        wait_for_file(tmp_path / "ready", LIVENESS)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=LIVENESS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert "\r" not in err and "\x1b" not in err
    # No progress line; one line as each step starts (for CI logs).
    steps = [line for line in err.splitlines() if line.startswith("tether: terminating job ")]
    assert [line.split(": ")[2].split(",")[0] for line in steps] == ["step 1/2", "step 2/2"]
    assert "tether: job " in err and " OUTCOME " in err  # Report.render_text's columns
    assert_aligned(err)


def assert_aligned(text: str) -> None:
    """Every row of render_text's member table starts COMMAND where its header says."""
    lines = text.splitlines()
    (top,) = [n for n, line in enumerate(lines) if " FOUND BY " in line]
    column = lines[top].index("COMMAND")
    rows = [line for line in lines[top + 1 :] if re.match(r"^\s+\d+\s", line)]
    assert rows, text
    for row in rows:
        assert row[column - 1] == " " and row[column] != " ", (column, row)
        found_by = row[: column - 1].split()[-1]
        assert row.index(found_by) >= lines[top].index("FOUND BY"), row


def table_rows(text: str) -> list[str]:
    """The member rows of report_table: from its header to the blank line."""
    lines = plain(text).splitlines()
    top = next(n for n, line in enumerate(lines) if re.match(r"^\s+PID\s+FOUND BY", line))
    return lines[top + 1 : lines.index("", top)]


def test_run_on_a_60_column_terminal_wraps_nothing(tmp_path: Path) -> None:
    out_json = tmp_path / "report.json"
    argv = tether_cmd(
        "run", "--policy", "TERM,3s,KILL", "--json-file", str(out_json), "--",
        *term_ignoring_job(tmp_path),
    )  # fmt: skip
    rc, out = run_in_pty(
        argv, env_with(), ready=tmp_path / "ready", signal_after=signal.SIGTERM, columns=60
    )
    assert rc == 128 + signal.SIGKILL, out
    text = plain(out)
    assert "\rtether: step 1/2 TERM: 2 member(s) left, " in text  # 59 columns: it fits
    # Every line and every redraw of the progress line fits: the terminal
    # wrapped nothing (and so broke no word).
    for segment in re.split(r"[\r\n]", text):
        assert len(segment) < 60, segment
    members = json.loads(out_json.read_text())["members"]
    assert len(table_rows(text)) == len(members), text  # one line per member
    assert "HOW " in text and "by KILL" in text


# -- tether ps: the journal listing ---------------------------------------------------


def test_ps_journal_listing_in_colour_on_a_terminal_plain_piped() -> None:
    job = subprocess.Popen(
        tether_cmd("run", "--", "sleep", "100"), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env_with(),
    )  # fmt: skip
    try:

        def listed() -> bool:
            done = subprocess.run(
                tether_cmd("ps", "--json"), capture_output=True, text=True, timeout=LIVENESS,
                check=False,
            )  # fmt: skip
            return (
                done.returncode == 0
                and '"leader_pid": null' not in done.stdout
                and ('"job_id"' in done.stdout)
            )

        wait_for(listed, LIVENESS, "the job's journal record")
        rc, out = run_in_pty(tether_cmd("ps"), env_with())
        assert rc == 0, out
        assert "\x1b[32msupervised\x1b[0m" in out
        text = plain(out)
        assert re.search(r"^JOB\s+SUPERVISOR\s+LEADER\s+STARTED\s+STATE\s+TRACKERS\s+COMMAND", text)
        assert "session" in text and "sleep 100" in text

        piped = subprocess.run(
            tether_cmd("ps"), capture_output=True, text=True, timeout=LIVENESS, check=False,
            env=env_with(),
        )  # fmt: skip
        assert piped.returncode == 0
        assert "\x1b" not in piped.stdout and "TRACKERS" not in piped.stdout
        assert piped.stdout.splitlines()[0] == (
            f"{'JOB':<24} {'SUPERVISOR':>10} {'LEADER':>7} {'STARTED':<19} {'STATE':<38} COMMAND"
        )
    finally:
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=LIVENESS)
    assert job.returncode == 128 + signal.SIGTERM


# -- the renderers on their own ---------------------------------------------------------


def a_report_with_a_survivor() -> Report:
    return Report(
        job_id="j1", reason="test", policy="TERM,1s,KILL", started_at=0.0, duration=2.5,
        complete=False,
        members=(
            MemberRecord(1, 1.0, "leader", ("session",), "killed", "TERM", 0.1, ("TERM",)),
            MemberRecord(2, 2.0, "fuse /mnt", ("walk",), "survived", None, None,
                         ("TERM", "KILL")),
        ),
        survivors=(Survivor(2, 2.0, "fuse /mnt", "D", "fuse_wait", "uninterruptible sleep"),),
        trackers=(TrackerStatus("session", True, "own session"),
                  TrackerStatus("cgroup", False, "not writable")),
    )  # fmt: skip


def test_report_table_highlights_survivors() -> None:
    report = a_report_with_a_survivor()
    coloured = report_table(report, Paint(True))
    survivor_row = next(ln for ln in coloured.splitlines() if "fuse /mnt" in ln and "  2  " in ln)
    assert "\x1b[1;31mSURVIVED" in survivor_row
    assert "\x1b[1;31m  SURVIVOR pid 2\x1b[0m state disk sleep (D), wchan fuse_wait" in coloured
    assert "\x1b[1;31mNOT confirmed empty\x1b[0m" in coloured
    text = report_table(report, Paint(False))
    assert "\x1b" not in text
    assert re.search(r"^\s+1\s+session\s+killed by TERM\s+0\.100s\s+leader$", text, re.M), text
    assert "not used: cgroup (not writable)" in text


def a_long_report() -> Report:
    trackers = ("cgroup", "session", "subreaper", "walk")
    return Report(
        job_id="fd6799d4765b7e7b478afccb", reason="timeout", policy="TERM,2s,KILL,5s",
        started_at=0.0, duration=2.055, complete=True,
        members=tuple(
            MemberRecord(1000 + n, float(n), "sh -c 'trap \"\" TERM; while :; do sleep 1; done'",
                         trackers[: n % 4 + 1], "killed", "KILL" if n % 2 else "TERM",
                         2.035, ("TERM", "KILL"))
            for n in range(6)
        ),
        survivors=(),
        steps=(StepRecord("TERM", 0.001, 2.0, 6, 2, 2.020),
               StepRecord("KILL", 2.021, 5.0, 2, 0, 0.02, froze="cgroup")),
        trackers=(TrackerStatus("cgroup", True, "delegated"),
                  TrackerStatus("cookie", False, "the environment of other users is unreadable")),
        caveats=("a process that left the cgroup and cleared its environment may have escaped",),
        confirmed_by="the kernel (cgroup populated 0, every member's pidfd exited)",
    )  # fmt: skip


@pytest.mark.parametrize("columns", [60, 45])
def test_report_table_on_a_narrow_terminal(columns: int) -> None:
    report = a_long_report()
    narrow = report_table(report, Paint(True), width=columns)
    lines = plain(narrow).splitlines()
    assert all(len(line) < columns for line in lines), narrow
    assert len(table_rows(narrow)) == len(report.members), narrow
    # Beyond the table, the same words as on a wide terminal, none broken.
    wide = plain(report_table(report, Paint(False), width=1000)).splitlines()

    def tail(ls: list[str]) -> list[str]:
        return " ".join(ls[next(n for n, ln in enumerate(ls) if "steps:" in ln) :]).split()

    assert tail(lines) == tail(wide)
    assert lines[0].startswith("tether: job fd6799d4765b7e7b478afccb")


def test_ps_tree_on_a_narrow_terminal_keeps_rows_on_one_line() -> None:
    rows = [
        (10, 1, "S", ["cgroup", "session", "subreaper", "walk"], "python3 -m a.long.module " * 4),
        (11, 10, "D", ["cgroup", "walk"], "sleep 300"),
        (12, 11, "Z", ["walk"], "[defunct]"),
    ]
    lines = tree_lines(rows, Paint(True), io.StringIO(), 60)
    assert all(len(plain(line)) < 60 for line in lines), lines
    assert len(lines) == 4
    assert "cgroup,se..." in plain(lines[1])


def test_fold_breaks_between_words_and_ignores_colour() -> None:
    line = "  steps: \x1b[1mTERM\x1b[0m at 0.001s: signalled 6, 2 left after 2.020s"
    assert fold(line, 200) == [line]
    folded = fold(line, 30)
    assert [plain(part) for part in folded] == [
        "  steps: TERM at 0.001s:",
        "    signalled 6, 2 left after",
        "    2.020s",
    ]
    assert fold("x" * 40, 10) == ["x" * 40]  # a word longer than a line stays whole


def test_progress_line_on_a_narrow_terminal_takes_a_shorter_form() -> None:
    master, slave = os.openpty()
    try:
        set_columns(slave, 40)
        with open(slave, "w", closefd=False) as stream:
            line = ProgressLine(stream, env={"TERM": "xterm"}, after=0.0)
            line(Progress(1, 2, "TERM", 12, 2.5))
        written = os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert plain(written).replace("\r\n", "\n") == "\rtether: 1/2 TERM: 12 left, 2.5s grace"


def test_progress_line_on_a_dumb_terminal_erases_with_spaces() -> None:
    out = io.StringIO()
    line = ProgressLine(out, env={"TERM": "dumb"}, after=0.0)
    line(Progress(1, 2, "TERM", 12, 2.5))
    line(Progress(1, 2, "TERM", 3, 2.0))
    line.clear()
    written = out.getvalue()
    assert "\x1b" not in written
    first = "tether: step 1/2 TERM: 12 member(s) left, 2.5s of grace left"
    second = "tether: step 1/2 TERM: 3 member(s) left, 2.0s of grace left"
    assert written == f"\r{first}\r{second} \r{' ' * len(second)}\r"
