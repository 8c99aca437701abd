"""Signals passed on to the job (reload, reopen logs, resize) instead of cancelling it,
the tini/dumb-init contract as PID 1, and what tether does with its caller under nohup.

Every claim that a handler ran is checked by the line the job writes in that
handler; readiness is waited for through files, never sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import is_root, proc_stat, tether_cmd, wait_for, wait_for_file

#: A job that logs each signal its handlers receive ("NAME pid=N"), exits 0
#: on TERM (or with status 3 when told so), and says when it is ready.
JOB = """\
import os, signal, sys, time
d = sys.argv[1]
def handler(sig, _frame):
    with open(os.path.join(d, "got"), "a") as f:
        f.write(signal.Signals(sig).name + "\\n")
    if sig == signal.SIGTERM:
        sys.exit(int(os.environ.get("TERM_STATUS", "0")))
for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGTERM,
          signal.SIGINT, signal.SIGQUIT):
    signal.signal(s, handler)
with open(os.path.join(d, "ready.tmp"), "w") as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(d, "ready.tmp"), os.path.join(d, "ready"))
while True:
    time.sleep(60)
"""


def _job(tmp_path: Path) -> list[str]:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return [sys.executable, str(script), str(tmp_path)]


def _got(tmp_path: Path) -> list[str]:
    p = tmp_path / "got"
    return p.read_text().split() if p.exists() else []


def _signal_and_see(tmp_path: Path, pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid`` and wait until the job's handler has logged it
    (one at a time: two pending signals of a kind would merge)."""
    before = len(_got(tmp_path))
    os.kill(pid, sig)
    wait_for(lambda: len(_got(tmp_path)) > before, what=f"the job's {sig.name} handler")
    assert _got(tmp_path)[before] == sig.name


def _start(tmp_path: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        tether_cmd("run", "-v", *flags, "--", *_job(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_usr1_usr2_winch_are_passed_on_and_term_still_cancels(tmp_path: Path) -> None:
    tether = _start(tmp_path)
    wait_for_file(tmp_path / "ready")
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
        _signal_and_see(tmp_path, tether.pid, sig)
    assert tether.poll() is None  # USR1 at its default action would have killed tether
    tether.send_signal(signal.SIGTERM)
    _out, err = tether.communicate(timeout=60)
    assert tether.returncode == 0, err  # the job's own status after its TERM handler
    assert _got(tmp_path) == ["SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGTERM"]
    for name in ("SIGUSR1", "SIGUSR2", "SIGWINCH"):
        assert f"passed {name} on to the command" in err  # --verbose
    assert "step 1/2, TERM sent to 1 member(s)" in err
    assert "tether received SIGTERM" in err


def test_forward_and_cancel_on_choose_the_roles(tmp_path: Path) -> None:
    # HUP passed on (not a cancel), INT passed on (left out of --cancel-on),
    # USR1 made a cancel signal.
    tether = _start(tmp_path, "--forward", "HUP", "--cancel-on", "TERM,USR1")
    wait_for_file(tmp_path / "ready")
    _signal_and_see(tmp_path, tether.pid, signal.SIGHUP)
    _signal_and_see(tmp_path, tether.pid, signal.SIGINT)
    tether.send_signal(signal.SIGUSR1)
    _out, err = tether.communicate(timeout=60)
    assert "tether received SIGUSR1" in err
    assert _got(tmp_path) == ["SIGHUP", "SIGINT", "SIGTERM"]  # TERM: the policy's
    assert tether.returncode == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--forward", "KILL"], "SIGKILL cannot be handled"),
        (["--forward", "CHLD"], "SIGCHLD cannot be handled"),
        (["--cancel-on", "NOPE"], "unknown signal 'NOPE'"),
        (["--forward", "HUP", "--cancel-on", "HUP,TERM"], "cannot both be passed on"),
        (["--forward", "USR1", "--host", "localhost"], "--forward is not supported with --host"),
    ],
)
def test_bad_signal_roles_are_one_line_125(args: list[str], needle: str) -> None:
    done = subprocess.run(
        tether_cmd("run", *args, "--", "true"),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 125
    assert needle in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def _as_pid1(
    tmp_path: Path,
    supervisor: list[str],
    status: int,
    passed: tuple[signal.Signals, ...] = (signal.SIGHUP, signal.SIGUSR1),
    last: signal.Signals = signal.SIGTERM,
) -> tuple[list[str], int]:
    """Run the job under ``supervisor`` as PID 1 of a new PID namespace; send
    it ``passed`` and then ``last`` from outside, each after the last was handled.

    Returns (what the job's handlers saw, the namespace's exit status)."""
    for name in ("got", "ready"):
        (tmp_path / name).unlink(missing_ok=True)
    outer = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", *supervisor, *_job(tmp_path)],
        env={**os.environ, "TERM_STATUS": str(status)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_file(tmp_path / "ready", timeout=30)
        (init,) = _children(outer.pid)  # unshare's one child: the namespace's PID 1
        stat = proc_stat(init)
        assert stat is not None
        with open(f"/proc/{init}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
        assert nspid[-1] == "1"
        for sig in passed:
            _signal_and_see(tmp_path, init, sig)
        os.kill(init, last)
        outer.communicate(timeout=60)
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()
    return _got(tmp_path), outer.returncode


@pytest.mark.skipif(not is_root(), reason="needs root for unshare --pid --mount-proc")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
@pytest.mark.skipif(shutil.which("tini") is None, reason="needs tini (apt install tini)")
def test_as_pid1_tether_forwards_hup_and_usr1_like_tini(tmp_path: Path) -> None:
    tini = _as_pid1(tmp_path, ["tini", "--"], status=3)
    tether = _as_pid1(tmp_path, [*tether_cmd("run"), "--"], status=3)
    # tini: HUP and USR1 reach the job's handlers, TERM too, and the
    # namespace exits with the job's status. tether must do the same.
    assert tini == (["SIGHUP", "SIGUSR1", "SIGTERM"], 3)
    assert tether == tini


@pytest.mark.skipif(not is_root(), reason="needs root for unshare --pid --mount-proc")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_as_pid1_cancel_on_hup_is_still_possible(tmp_path: Path) -> None:
    argv = [*tether_cmd("run"), "--cancel-on", "HUP,TERM", "--"]
    got, status = _as_pid1(tmp_path, argv, status=5, passed=(signal.SIGUSR1,), last=signal.SIGHUP)
    # HUP started the policy: the job saw the policy's TERM, not the HUP.
    assert got == ["SIGUSR1", "SIGTERM"]
    assert status == 5


def test_nohup_tether_outlives_its_caller(tmp_path: Path) -> None:
    """`nohup tether run ... &` from a script that then exits: the job runs on.

    The script exits once the job is up, so tether has seen its caller alive:
    before, that made the caller's exit cancel the job, while a script that
    exited before tether looked left it running (a start-up race)."""
    report = tmp_path / "report.json"
    script = (
        f"nohup {' '.join(tether_cmd('run'))} --json-file {report} -- "
        f"{' '.join(_job(tmp_path))} >{tmp_path}/out 2>&1 &\n"
        f"echo $! >{tmp_path}/tether.pid\n"
        f"while [ ! -e {tmp_path}/ready ]; do sleep 0.05; done\n"
    )
    subprocess.run(["sh", "-c", script], check=True, timeout=60)  # the caller: gone now
    tether_pid = int(wait_for_file(tmp_path / "tether.pid"))
    wait_for_file(tmp_path / "ready", timeout=30)
    # Still supervised after its caller's exit: a USR1 is passed on...
    _signal_and_see(tmp_path, tether_pid, signal.SIGUSR1)
    # ...and the job ends by our TERM, not by the caller's death.
    os.kill(tether_pid, signal.SIGTERM)
    wait_for_file(report, timeout=60)
    wait_for(lambda: proc_stat(tether_pid) is None or proc_stat(tether_pid).state == "Z")  # type: ignore[union-attr]
    assert json.loads(report.read_text())["reason"] == "tether received SIGTERM"
    assert _got(tmp_path) == ["SIGUSR1", "SIGTERM"]
