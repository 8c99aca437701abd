"""Every decision is logged: syslog datagrams on a bound socket, or journald lines."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from prune_support import Procs

from helpers import tether_cmd, wait_for

SCOPE = ("--user", "tether-prune-a", "--user", "tether-prune-b", "--user", "tether-prune-c")
AUTHPRIV = 10
INFO, ERR = 6, 3


def receive_all(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(65536).decode(errors="replace"))
        except BlockingIOError:
            return out


def test_decisions_go_to_syslog(procs: Procs, tmp_path: Path) -> None:
    stray = procs.start("a", "stray")
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        done = subprocess.run(
            tether_cmd("prune", "--batch", "none", *SCOPE, "--min-age", "0", "--kill",
                       "--syslog-socket", path),
            capture_output=True,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        messages = receive_all(sock)
    wait_for(lambda: not stray.alive, what="the stray")
    assert messages, "nothing was logged"
    for m in messages:
        assert m.startswith(f"<{AUTHPRIV * 8 + INFO}>tether-prune[") or m.startswith(
            f"<{AUTHPRIV * 8 + 4}>"
        ), m
        assert m.endswith("\x00")
    events = [m for m in messages if "event=stray" in m]
    assert len(events) == 1
    assert f"pid={stray.pid} " in events[0]
    assert "action=killed" in events[0] and "user=tether-prune-a" in events[0]
    assert 'rule="user process (every uid >= 1000) in no live job' in events[0]
    assert any("event=start mode=kill command=prune" in m for m in messages)
    assert any("event=done" in m and "killed=1 failed=0" in m for m in messages)


def test_dry_run_is_logged_with_another_facility(procs: Procs, tmp_path: Path) -> None:
    stray = procs.start("a", "stray")
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        env["TETHER_SYSLOG_SOCKET"] = path
        done = subprocess.run(
            tether_cmd("prune", "--batch", "none", *SCOPE, "--min-age", "0",
                       "--syslog-facility", "local3"),
            capture_output=True,
            check=False,
            env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        messages = receive_all(sock)
    local3 = 19
    events = [m for m in messages if "event=stray" in m]
    assert len(events) == 1 and events[0].startswith(f"<{local3 * 8 + INFO}>")
    assert "action=would-kill" in events[0] and stray.alive


def test_journald_when_stderr_is_the_journal(procs: Procs, tmp_path: Path) -> None:
    stray = procs.start("a", "stray")
    stderr_file = tmp_path / "stderr"
    with open(stderr_file, "wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        done = subprocess.run(
            tether_cmd("prune", "--batch", "none", *SCOPE, "--min-age", "0", "--json"),
            stdout=subprocess.PIPE,
            stderr=f,
            check=False,
            env=env,
        )
    assert done.returncode == 0
    lines = stderr_file.read_text().splitlines()
    events = [line for line in lines if "event=stray" in line]
    assert len(events) == 1
    assert events[0].startswith(f"<{AUTHPRIV * 8 + INFO}>event=stray action=would-kill")
    assert f"pid={stray.pid} " in events[0]
    assert stray.alive


def test_missing_syslog_socket_is_a_warning_not_a_failure(procs: Procs, tmp_path: Path) -> None:
    stray = procs.start("a", "stray")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    done = subprocess.run(
        tether_cmd("prune", "--batch", "none", *SCOPE, "--min-age", "0",
                   "--syslog-socket", str(tmp_path / "absent")),
        capture_output=True,
        check=False,
        env=env,
    )  # fmt: skip
    assert done.returncode == 0
    assert b"decisions not logged: syslog socket" in done.stdout
    assert stray.alive


def test_failed_kill_is_logged_as_an_error(procs: Procs) -> None:
    """An unprivileged pruner may not signal another user's stray: exit 1, logged."""
    from helpers import as_user, user_python

    stray = procs.start("b", "stray")
    user = procs.users["a"]
    py = user_python(user)
    assert py is not None
    path = procs.dir / "log.sock"  # a directory the pruner's user can reach
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        path.chmod(0o777)
        done = subprocess.run(
            as_user(user, [*py, "-m", "tether.cli", "prune", "--batch", "none", "--json",
                           "--user", "tether-prune-b", "--min-age", "0", "--kill",
                           "--policy", "TERM,100ms", "--syslog-socket", str(path)]),
            capture_output=True,
            check=False,
        )  # fmt: skip
        messages = receive_all(sock)
    assert done.returncode == 1, done.stderr
    assert stray.alive and stray.signals() == []
    errors = [m for m in messages if m.startswith(f"<{AUTHPRIV * 8 + ERR}>")]
    assert any(f"pid={stray.pid} " in m and "action=denied" in m for m in errors), messages
