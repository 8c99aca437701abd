"""``tether run --foreground`` on a real terminal (a tmux pane: a pty with an
interactive bash doing job control): the job opens /dev/tty, Ctrl-Z stops it
and ``fg`` continues it, Ctrl-C reaches its own handler and does not cancel it.

Each claim is checked by a line the job writes itself (in its SIGINT
handler, after opening /dev/tty) or by the kernel's process state.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import proc_stat, tether_cmd, wait_for, wait_for_file

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt install tmux)"),
    pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash (job control)"),
]

JOB = """\
import os, signal, sys, time
d = sys.argv[1]
def mark(name, text):
    with open(os.path.join(d, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name))
def on_int(_sig, _frame):
    mark("int", "interrupted")
    sys.exit(7)
signal.signal(signal.SIGINT, on_int)
try:
    fd = os.open("/dev/tty", os.O_RDWR)
    os.write(fd, b"job has the terminal\\r\\n")
    mark("tty", "ok")
except OSError as err:
    mark("tty", "no tty: " + err.strerror)
mark("ready", str(os.getpid()))
while True:
    time.sleep(60)
"""


class Pane:
    """A tmux server on a socket of the test's own, one pane running bash -i."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        self._tmux("new-session", "-d", "-x", "120", "-y", "30", "-s", "t",
                   "bash --norc --noprofile -i")  # fmt: skip

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", line)
        self._tmux("send-keys", "-t", "t", "Enter")

    def keys(self, key: str) -> None:
        self._tmux("send-keys", "-t", "t", key)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", self.socket, "kill-server"], check=False, capture_output=True, timeout=30
        )


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    p = Pane(tmp_path)
    try:
        yield p
    finally:
        p.close()


def _state(pid: int) -> str:
    st = proc_stat(pid)
    return "gone" if st is None else st.state


def test_foreground_job_keeps_the_terminal(tmp_path: Path, pane: Pane) -> None:
    (tmp_path / "job.py").write_text(JOB)
    command = shlex.join(
        [*tether_cmd("run", "--foreground", "-v"), "--", sys.executable,
         str(tmp_path / "job.py"), str(tmp_path)]
    )  # fmt: skip
    # The status is written by a bash in the job's process group (one that, like
    # tether, lives through the Ctrl-C its child handled): the pane's own
    # $? after Ctrl-Z would be the stop (148), not the exit.
    pane.type(shlex.join(["bash", "-c", f"{command}; echo $? >{tmp_path}/rc"]))
    job = int(wait_for_file(tmp_path / "ready", timeout=30))
    assert (tmp_path / "tty").read_text() == "ok"  # /dev/tty opened: its controlling terminal

    # Ctrl-Z stops the job (and tether: one process group), fg continues both.
    pane.keys("C-z")
    wait_for(lambda: _state(job) == "T", what="Ctrl-Z to stop the job")
    pane.type("fg")
    wait_for(lambda: _state(job) in ("S", "R"), what="fg to continue the job")

    # Ctrl-C reaches the job's own handler; tether does not cancel the job.
    pane.keys("C-c")
    assert wait_for_file(tmp_path / "int") == "interrupted"
    assert wait_for_file(tmp_path / "rc", timeout=30).strip() == "7"
    screen = pane.screen()
    assert "job has the terminal" in screen
    assert "received SIGINT" not in screen


def test_foreground_report_names_what_is_not_tracked(tmp_path: Path) -> None:
    done = subprocess.run(
        tether_cmd("run", "--foreground", "--json", "--", "sh", "-c", "sleep 30 & exit 0"),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    import json

    report = json.loads(done.stdout)
    assert any(c.startswith("foreground:") for c in report["caveats"])
    session = next(t for t in report["trackers"] if t["name"] == "session")
    assert not session["used"]
    # The leftover sleep was still found (subreaper, cookie, walk or cgroup) and
    # ended; the leader, if seen as it exited, exited by itself. (The sleep may
    # be caught mid-exec, its command line then read as "[sh]".)
    assert report["complete"] is True
    assert sorted(m["outcome"] for m in report["members"]) in (["killed"], ["exited", "killed"])


def test_foreground_with_the_session_tracker_is_refused() -> None:
    done = subprocess.run(
        tether_cmd("run", "--foreground", "--trackers", "session", "--", "true"),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 125
    assert "session tracker cannot be used with foreground" in done.stderr
    assert done.stderr.count("\n") == 1


def test_verbose_prints_step_lines_on_a_terminal_too(tmp_path: Path, pane: Pane) -> None:
    # Piped, stderr always gets the step lines; on a terminal only with -v
    # (else the progress line redraws in place and leaves nothing behind).
    trap = f"trap 'echo TERM >{tmp_path}/term; exit 0' TERM; sleep 30 & wait"
    command = shlex.join([*tether_cmd("run", "-v", "--timeout", "0.3s"), "--", "sh", "-c", trap])
    pane.type(f"{command}; echo $? >{tmp_path}/rc")
    assert wait_for_file(tmp_path / "rc", timeout=60).strip() == "124"
    assert wait_for_file(tmp_path / "term") == "TERM\n"  # the trap ran
    assert "step 1/2, TERM sent to 2 member(s)" in pane.screen()
