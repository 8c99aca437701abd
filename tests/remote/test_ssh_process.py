"""The ssh client process, started without subprocess (issue 15: a remote run's start).

:class:`tether.remote.client._SshProcess` stands in for the
``subprocess.Popen`` the client used: each property Popen gave ssh is held
here against a real child (a shell in ssh's place): its pipes as 0-2 and
no other descriptor, a session of its own, SIGPIPE back to its default, a
missing program as an OSError, and an exit status read once, after which
it is never signalled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.remote import client
from tether.remote.client import Connection, RemoteError, SshOptions, _SshProcess
from tether.remote.hostlist import Target

#: What the child reports about itself, one line each, then echoes its input
#: (its descriptors by a glob of its own: a pipeline's pipes would show).
_REPORT = r"""
(cd /proc/$$/fd && echo *)
cut -d' ' -f1,6 /proc/$$/stat
grep '^SigIgn:' /proc/$$/status
read line; echo "read: $line"
"""


def _run(proc: _SshProcess, data: bytes) -> list[str]:
    proc.stdin.write(data)
    proc.stdin.close()
    out = b""
    while chunk := proc.stdout.read(4096):
        out += chunk
    assert proc.wait(60) == 0
    proc.release()
    proc.stdout.close()
    proc.stderr.close()
    return out.decode().splitlines()


def test_the_child_gets_its_pipes_a_session_and_default_sigpipe() -> None:
    # An inheritable descriptor of ours (one we were given): not the child's.
    r, w = os.pipe()
    os.set_inheritable(r, True)
    try:
        proc = _SshProcess(["sh", "-c", _REPORT])
        fds, stat, sigign, echoed = _run(proc, b"hello\n")
    finally:
        os.close(r)
        os.close(w)
    # 0-2, and the one the shell's own glob reads /proc/$$/fd through.
    assert sorted(fds.split(), key=int) in (["0", "1", "2"], ["0", "1", "2", "3"]), fds
    pid, session = stat.split()
    assert int(pid) == proc.pid and session == pid  # a session leader: setsid
    ignored = int(sigign.split()[1], 16)
    assert not ignored & (1 << (13 - 1)), sigign  # SIGPIPE: the default again
    assert echoed == "read: hello"


_CLOSED_STDIO = """
import os, sys
sys.path[:0] = [sys.argv[1]]
report = int(sys.argv[2])
from tether.remote.client import _SshProcess
for fd in (0, 1, 2):
    os.close(fd)
proc = _SshProcess(["sh", "-c", "read line; echo got:$line; echo err:$line >&2"])
proc.stdin.write(b"x\\n")
proc.stdin.close()
out = proc.stdout.read(100)
err = proc.stderr.read(100)
os.write(report, out + err + b"rc=%d" % proc.wait(60))
"""


def test_a_client_started_with_stdio_closed_still_hands_ssh_its_pipes() -> None:
    """With 0-2 closed, the pipes get those numbers: each must still reach
    the child as its own 0, 1 or 2 (a dup2 onto itself could keep it
    close-on-exec)."""
    src = str(Path(client.__file__).resolve().parents[2])
    r, w = os.pipe()
    try:
        argv = [sys.executable, "-c", _CLOSED_STDIO, src, str(w)]
        done = subprocess.run(argv, pass_fds=(w,), timeout=60, check=False)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    assert done.returncode == 0
    assert got == b"got:x\nerr:x\nrc=0"


def test_wait_with_a_timeout_then_kill() -> None:
    proc = _SshProcess(["sleep", "60"])
    try:
        assert proc.wait(0.05) is None and proc.poll() is None
        proc.kill()
        assert proc.wait(60) == -9
        # Reaped: its pid may be another process's now, so no signal goes out.
        proc.kill()
        assert proc.returncode == -9
    finally:
        proc.abandon()


def test_a_missing_ssh_program_is_the_hosts_error(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="cannot run"):
        Connection(Target("h"), SshOptions(program=str(tmp_path / "no-such-ssh")))
    # Nothing of it is left open.
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(RemoteError):
        Connection(Target("h"), SshOptions(program=str(tmp_path / "no-such-ssh")))
    assert set(os.listdir("/proc/self/fd")) <= before


# -- the client's other modules without re, signal or contextlib -------------


@given(st.text(max_size=8) | st.sampled_from(["TERM", "RTMIN", "RTMIN+1", "9", "T9", "É", "A\n"]))
def test_a_signal_name_for_the_shell_agent_is_checked_as_the_regex_did(name: str) -> None:
    import re

    from tether.remote import shell

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shell, "signal_name", lambda _sig: name)
        try:
            got: str | None = shell._signal(15)
        except shell.ShellEngineError:
            got = None
    assert got == (name if re.fullmatch(r"[A-Z][A-Z0-9]*", name) else None)


#: A remote run's client side in a fresh python, up to ssh's failure: what
#: tether.remote's own modules import by name (builtins.__import__ sees
#: imports of modules loaded already too).
_CLIENT_IMPORTS = """
import builtins, os, sys
real = builtins.__import__
direct = set()
def spy(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and ((globals or {}).get("__name__") or "").startswith("tether.remote"):
        direct.add(name)
    return real(name, globals, locals, fromlist, level)
builtins.__import__ = spy
from tether.remote import fanout
from tether.remote.client import OutputSink, SshOptions
from tether.remote.hostlist import Target
from tether.spec import JobSpec
out = open(os.devnull, "wb")
results = fanout.fan_out([Target("h1"), Target("h2")], JobSpec(argv=("true",)),
                         SshOptions(program="false"), OutputSink(True, out, out),
                         fanout=2, cancel_timeout=5.0, outlive_caller=False)
assert [r.exit_status for r in results] == [125, 125], results
print(" ".join(sorted(direct)))
"""


def test_the_client_modules_import_no_re_signal_subprocess_or_contextlib() -> None:
    """~7 ms of a remote run's start before its ssh (signal with enum,
    subprocess with locale, re, selectors, warnings; contextlib), where a
    one-host run has ~100 ms over plain ssh (issue 15). threading stays."""
    src = str(Path(client.__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=src)
    argv = [sys.executable, "-c", _CLIENT_IMPORTS]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    direct = set(done.stdout.split())
    assert "threading" in direct and "tether.remote.client" in direct  # the probe saw them
    banned = {"contextlib", "enum", "functools", "re", "signal", "subprocess", "typing"}
    assert not direct & banned, sorted(direct & banned)
