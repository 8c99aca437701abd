"""What a remote host's python imports for one job (issue 15: server CPU per host).

Every module a host imports is CPU of every job on every host: ``re``,
``subprocess``, ``contextlib``... cost ~15 ms together in a fresh python, as
much as the rest of the engine. The host path of :mod:`tether.remote` (stage
1, the agent, the frames) uses builtins and C modules instead, and imports
anything heavier only where a rare path needs it.

The real path runs here: the fixed remote command, through a stand-in for ssh
that runs it locally, under a ``python3`` that is the system python with a
probe around stage 0. The probe records every import statement that the
bootstrap or tether.remote itself executes (through ``builtins.__import__``,
which sees imports of modules already loaded too) and, at the agent's exit,
every module loaded by then.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_engine_cache import SYSTEM_PYTHON
from test_engine_native import _suffix

from helpers import TEST_VAR
from tether._platform.linux import spawn
from tether.remote import protocol
from tether.remote.client import Connection, HostRun, OutputSink, SshOptions
from tether.remote.hostlist import Target
from tether.spec import JobSpec

#: Modules no host job may import (each, with what it pulls in, costs a
#: fresh python from ~0.5 to ~6 ms).
BANNED = frozenset(
    {
        "collections",
        "collections.abc",
        "contextlib",
        "enum",
        "functools",
        "hashlib",
        "importlib.util",
        "json",
        "locale",
        "re",
        "selectors",
        "signal",
        "struct",
        "subprocess",
        "threading",
        "typing",
        "warnings",
        "zipfile",
    }
)

#: The banned modules tether's core still imports on a host's run: none
#: since the core's import diet (6e48f0d); keep it so.
EXPECTED_FROM_THE_CORE: frozenset[str] = frozenset()
#: An out-of-band cancel's, until the core drops them too: tether.journal
#: reads the job's record with json.loads (json.decoder imports re, with enum
#: and functools), tether.recovery imports collections.abc at run time.
EXPECTED_FROM_THE_CORE_IN_A_CANCEL = frozenset(
    {"collections", "collections.abc", "enum", "functools", "json", "re"}
)
#: Where the host cannot load the native spawn shipped with the engine (not
#: built here, another platform tag), the core's ctypes fallback brings these.
WITHOUT_NATIVE_MODULES = frozenset({"struct"})

#: Every module stage 1 or tether.remote imports by name on a job's path
#: (the cached engine, a run, an out-of-band cancel) that is not tether's own:
#: built in or frozen on CPython (``_json`` and ``select`` may be shared
#: libraries), nothing that imports further modules. ``__future__``: every
#: tether module's ``from __future__ import annotations`` (one small module).
REMOTE_OWN_IMPORTS = frozenset(
    {
        "__future__",
        "_frozen_importlib",
        "_frozen_importlib_external",
        "_imp",
        "_json",
        "_signal",
        "_thread",
        "atexit",
        "binascii",
        "fcntl",
        "gc",
        "marshal",
        "os",
        "select",
        "stat",
        "sys",
    }
)

#: Runs stage 0 as the fixed command would, with the recorder around it.
_PROBE = """\
import atexit, builtins, os, sys
_tp_real = builtins.__import__
_tp_direct = set()
def _tp_import(name, globals=None, locals=None, fromlist=(), level=0):
    who = (globals or {}).get("__name__") or ""
    if level == 0 and (who == "__main__" or who.startswith("tether.remote")):
        _tp_direct.add(name)
    return _tp_real(name, globals, locals, fromlist, level)
builtins.__import__ = _tp_import
def _tp_dump():
    loaded = " ".join(sorted(sys.modules))
    direct = " ".join(sorted(_tp_direct))
    with open(os.path.join(os.environ["TP_DUMPS"], str(os.getpid())), "w") as f:
        f.write(loaded + "\\n" + direct + "\\n")
atexit.register(_tp_dump)
exec(bytes.fromhex(sys.argv[1]))
"""


@dataclass
class Loaded:
    """One host python's modules at its exit, and what remote/ imported by name."""

    modules: frozenset[str]
    direct: frozenset[str]


class FakeHost:
    """This machine as a host: the fixed remote command, run by a stand-in for
    ssh in a login-like environment (HOME as the working directory, a cache
    and a journal of the test's own), under the probing ``python3``."""

    def __init__(self, base: Path) -> None:
        assert SYSTEM_PYTHON is not None
        self.home = base / "home"
        self.dumps = base / "dumps"
        for d in (self.home, self.dumps, base / "tmp", base / "run", base / "bin"):
            d.mkdir(mode=0o700)
        (base / "probe.py").write_text(_PROBE)
        python = base / "bin" / "python3"
        python.write_text(
            "#!/bin/sh\nfor last; do :; done\n"
            f'exec {SYSTEM_PYTHON} -S -c "exec(open(\'{base / "probe.py"}\').read())" "$last"\n'
        )
        python.chmod(0o755)
        self.ssh = base / "ssh"
        self.ssh.write_text(
            "#!/bin/sh\n"
            "for last; do :; done\n"
            f"cd {self.home} || exit 255\n"
            f"exec env -i PATH={base / 'bin'}:/usr/bin:/bin HOME={self.home} TMPDIR={base / 'tmp'} "
            f"TETHER_RUNTIME_DIR={base / 'run'} TP_DUMPS={self.dumps} "
            f'{TEST_VAR}="${TEST_VAR}" /bin/sh -c "$last"\n'
        )
        self.ssh.chmod(0o755)
        self.options = SshOptions(program=str(self.ssh), engine="python")

    def run(self, *argv: str) -> None:
        """One job, as ``tether run --host`` sends it (its SPEC behind the offer)."""
        out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
        try:
            run = HostRun(
                Target("local"), JobSpec(argv=argv), self.options, OutputSink(False, out, out)
            )
            run.start()
            assert run.done.wait(60)
            run.thread.join(10)
        finally:
            out.close()
        assert run.result.error is None and run.result.exit_status == 0, run.result

    def connect(self) -> Connection:
        conn = Connection(Target("local"), self.options)
        try:
            conn.handshake()
        except BaseException:
            conn.kill()
            conn.close()
            raise
        return conn

    def take_dumps(self) -> list[Loaded]:
        """What each host python that exited since the last call had loaded."""
        out = []
        for path in sorted(self.dumps.iterdir()):
            loaded, direct = path.read_text().splitlines()
            out.append(Loaded(frozenset(loaded.split()), frozenset(direct.split())))
            path.unlink()
        return out


def _answer(conn: Connection, want: bytes) -> dict[str, object]:
    while True:
        got = conn.read_frame(_deadline())
        assert got is not None, f"the connection ended before a {want!r} frame: {conn.ssh_error()}"
        if got[0] == want:
            return protocol.load_json(got[1])
        assert got[0] not in (protocol.ERROR, protocol.RESULT), got


def _deadline() -> float:
    return time.monotonic() + 60


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    if SYSTEM_PYTHON is None or shutil.which("env") is None:
        pytest.skip("needs a python3 outside the venv (where no tether is installed)")
    host = FakeHost(tmp_path)
    host.run("true")  # the engine shipped and compiled: later jobs load it from the cache
    host.take_dumps()
    yield host


def _check(loaded: Loaded, expected: frozenset[str] = EXPECTED_FROM_THE_CORE) -> None:
    assert "tether.remote.agent" in loaded.modules  # the probe saw the real agent
    others = {n for n in loaded.direct if n != "tether" and not n.startswith("tether.")}
    assert others <= REMOTE_OWN_IMPORTS, sorted(others - REMOTE_OWN_IMPORTS)
    assert not loaded.direct & BANNED, sorted(loaded.direct & BANNED)
    if not _natives_load_there():
        expected |= WITHOUT_NATIVE_MODULES
    banned = loaded.modules & BANNED
    assert banned <= expected, sorted(banned - expected)


def _natives_load_there() -> bool:
    assert SYSTEM_PYTHON is not None
    return spawn.native() and _suffix(SYSTEM_PYTHON) == _suffix(sys.executable)


def test_a_job_on_a_host_imports_only_builtins_from_remote(host: FakeHost) -> None:
    """A job from the cached engine: stage 1 and the agent import nothing
    heavy by name, and the host as a whole nothing banned beyond what the
    core still imports (EXPECTED_FROM_THE_CORE)."""
    host.run("true")
    (loaded,) = host.take_dumps()
    _check(loaded)
    # Those remote/ once imported itself: gone unless the core brings them.
    for name in ("re", "contextlib", "subprocess", "signal", "threading"):
        assert name not in loaded.direct


def test_an_out_of_band_cancel_imports_only_builtins_from_remote(host: FakeHost) -> None:
    """``tether cancel --host``: a second connection stops the job's agent
    and watchdog by identity (SIGKILL from _signal) under the journal's
    flock (fcntl), and recovers the job."""
    first = host.connect()
    try:
        assert first.send_run(JobSpec(argv=("sleep", "60")), stdin=False)
        job_id = _answer(first, protocol.STARTED)["job_id"]
        assert isinstance(job_id, str)
        second = host.connect()
        try:
            assert second.send_cancel_job(job_id, "test", None)
            result = _answer(second, protocol.RESULT)
        finally:
            second.close()
        assert result["found"] is True, result
        notes = result["notes"]
        assert isinstance(notes, list)
        assert any("supervisor pid" in str(n) and "stopped (SIGKILL)" in str(n) for n in notes)
        # The first agent (the job's supervisor) was SIGKILLed: its channel ends.
        while first.read_frame(_deadline()) is not None:
            pass
    finally:
        first.close()
    (loaded,) = host.take_dumps()  # the cancelling agent's; the killed one wrote none
    _check(loaded, EXPECTED_FROM_THE_CORE_IN_A_CANCEL)
    assert {"_signal", "fcntl"} <= loaded.direct


@pytest.mark.parametrize(
    "job_id",
    ["abcdef1", "a" * 65, "ABCDEF12", "abcdef12\n", "../../etc", "abcdefgh", "", "abcd ef12"],
)
def test_the_agent_refuses_a_malformed_job_id(host: FakeHost, job_id: str) -> None:
    """The out-of-band cancel's job id, 8 to 64 lower-case hex digits (the
    journal's names), is checked without re: anything else is refused
    before the journal is opened."""
    conn = host.connect()
    try:
        assert conn.send_cancel_job(job_id, None, None)
        got = conn.read_frame(_deadline())
    finally:
        conn.close()
    assert got is not None and got[0] == protocol.ERROR, got
    message = protocol.load_json(got[1])["message"]
    assert isinstance(message, str) and message.startswith("protocol error: bad job id"), message


@pytest.mark.parametrize("job_id", ["abcdef12", "0123456789abcdef" * 4])
def test_a_well_formed_unknown_job_id_is_looked_up(host: FakeHost, job_id: str) -> None:
    conn = host.connect()
    try:
        assert conn.send_cancel_job(job_id, None, None)
        result = _answer(conn, protocol.RESULT)
    finally:
        conn.close()
    assert result["found"] is False, result


def test_stage1_takes_no_module_from_the_login_directory(host: FakeHost) -> None:
    """``python -c`` puts the working directory (the login's HOME) first on
    sys.path: stage 1 drops it, so a file there named as a module the host
    imports is never run (and HOME never listed for it)."""
    marker = host.home / "planted-module-ran"
    for name in ("_json", "__future__", "select", "resource", "enum", "re", "errno"):
        (host.home / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    host.run("true")
    assert not marker.exists(), marker.read_text()
    (loaded,) = host.take_dumps()
    assert "tether.remote.agent" in loaded.modules


def test_the_guard_lists_are_consistent() -> None:
    assert EXPECTED_FROM_THE_CORE_IN_A_CANCEL | WITHOUT_NATIVE_MODULES <= BANNED
    assert not REMOTE_OWN_IMPORTS & BANNED


#: The agent's end as stage 1 calls it, after work of ours: a thread still
#: running (``thread``) or an atexit handler (``atexit``) writes the marker.
_SERVE = """
import atexit, os, sys, threading, time
from tether.remote import agent
marker = sys.argv[1]
def work():
    time.sleep(0.5)  # still running when serve() ends, unless it waits
    open(marker, "w").close()
if sys.argv[2] == "thread":
    threading.Thread(target=work).start()
else:
    atexit.register(lambda: open(marker, "w").close())
agent.serve(dict(os.environ), "installed")
"""


@pytest.mark.parametrize("what", ["thread", "atexit"])
def test_the_agent_ends_without_finalisation_only_when_nothing_else_runs(
    tmp_path: Path, what: str
) -> None:
    """serve() skips the interpreter's finalisation (os._exit) but runs the
    atexit handlers; with another thread alive (counted by _thread, without
    threading) it exits normally, which waits for that thread."""
    marker = tmp_path / "done"
    argv = [sys.executable, "-c", _SERVE, str(marker), what]
    # stdin at EOF: no SPEC comes, the agent ends (status 3) after its HELLO.
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout[:1] == protocol.HELLO
    assert marker.exists()


def test_a_job_on_a_host_gets_dev_null_as_stdin(host: FakeHost, tmp_path: Path) -> None:
    """Without --stdin the job reads /dev/null (as subprocess.DEVNULL gave it)."""
    out = tmp_path / "stdin-of-the-job"
    host.run("sh", "-c", f'readlink /proc/$$/fd/0 > {out}; cat >> {out}; echo "rc=$?" >> {out}')
    assert out.read_text() == "/dev/null\nrc=0\n"
