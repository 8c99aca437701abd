"""The remote engine's bytecode cache (issue 15): compiled once, never planted.

Stage 1 compiles the shipped zip once per host, tether version and python into
``$TMPDIR/tether-remote-UID/tether-SHA.TAG.zip`` and loads it from there on
later connections. A co-user must not be able to make a victim run code of
theirs through it: every guard (the directory's owner, mode and kind; the
file's owner, mode and kind; its content hash) is tested by planting an
engine that passes every *other* check and writes a marker when imported.

The victim is the suite's unprivileged user, reached through a stand-in for
ssh that runs the fixed remote command locally as that user (setpriv); the
root path runs over a real sshd whose sessions get a TMPDIR of their own.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SshLab
from test_remote import MARKS, POLICY, REMOTE_PYTHON, assert_gone, wait_trees

from helpers import TEST_VAR, ensure_unprivileged_user, is_root, kill_identity
from tether.policy import Policy
from tether.remote import bootstrap, protocol
from tether.remote.bootstrap import package_zip, sources_digest
from tether.remote.client import Connection, SshOptions
from tether.remote.hostlist import Target
from tether.spec import JobSpec

SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
#: Owner of what the "co-user" plants (root plants it as them).
ATTACKER_UID = 65534


def _cache_tag(python: str) -> str:
    code = "import sys, importlib.util as u; print(sys.implementation.cache_tag)"
    code += "; print(u.MAGIC_NUMBER.hex())"
    argv = [python, "-c", code]
    return "-".join(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split())


def _head(data: bytes) -> bytes:
    """The first line of a cache file holding the zip ``data``: its size and CRC-32."""
    return b"tether-engine size=%d crc32=%08x" % (len(data), zlib.crc32(data))


def _engine_file(data: bytes) -> bytes:
    """A cache file as stage 1 writes it: the zip's size and CRC-32 on the first line."""
    return _head(data) + b"\n" + data


#: Builds a zip of bytecode as stage 1's _compile does, for the python running it.
_COMPILE_ZIP = """
import importlib.util, io, json, marshal, sys, zipfile
out = io.BytesIO()
flags = (1).to_bytes(4, "little")
with zipfile.ZipFile(out, "w") as zf:
    for name, text in sorted(json.loads(sys.stdin.read()).items()):
        data = text.encode()
        code = compile(data, name, "exec", dont_inherit=True)
        pyc = importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(data)
        zf.writestr(name + "c", pyc + marshal.dumps(code))
sys.stdout.buffer.write(out.getvalue())
"""


_EXIT_3 = "def serve(env, mode, first=None):\n    raise SystemExit(3)\n"


def _bytecode_zip(sources: dict[str, str], python: str) -> bytes:
    """``sources`` (name -> text) compiled for ``python`` into a zip as _compile makes it."""
    import json

    argv = [python, "-S", "-c", _COMPILE_ZIP]
    done = subprocess.run(argv, input=json.dumps(sources).encode(), capture_output=True, check=True)
    return done.stdout


def _evil_engine(marker: Path) -> bytes:
    """An intact-looking engine whose import writes ``marker``: bytecode for
    the victim's python in a zip as stage 1 makes them, so that only the guard
    under test keeps it from running."""
    assert SYSTEM_PYTHON is not None
    plant = f"open({str(marker)!r}, 'w').close()\n"
    sources = {
        "tether/__init__.py": plant + "__version__ = 'evil1'\n",
        "tether/remote/__init__.py": plant,
        "tether/remote/agent.py": f"{plant}PROTOCOL = 2\n{_EXIT_3}",
    }
    return _engine_file(_bytecode_zip(sources, SYSTEM_PYTHON))


class Victim:
    """An unprivileged user whose "remote host" is this machine, TMPDIR private to the test."""

    def __init__(self, base: Path, user: pwd.struct_passwd) -> None:
        assert SYSTEM_PYTHON is not None
        self.user = user
        self.tmp = base / "tmp"
        self.tmp.mkdir()
        self.tmp.chmod(0o1777)  # like /tmp: anyone may plant a name first
        self.ssh = base / "ssh"
        # Runs the fixed remote command as the victim, with what sshd would
        # give its session: a clean environment and the login shell.
        self.ssh.write_text(
            "#!/bin/sh\n"
            "for last; do :; done\n"
            f"exec setpriv --reuid={self.user.pw_uid} --regid={self.user.pw_gid} --clear-groups "
            f"--reset-env env TMPDIR={self.tmp} HOME=/ PATH=/usr/local/bin:/usr/bin:/bin "
            f'{TEST_VAR}="${TEST_VAR}" /bin/sh -c "$last"\n'
        )
        self.ssh.chmod(0o755)
        self.dir = self.tmp / f"tether-remote-{self.user.pw_uid}"
        self.path = self.dir / f"tether-{package_zip()[1][:32]}.{_cache_tag(SYSTEM_PYTHON)}.zip"

    def connect(self) -> dict[str, object]:
        """The bootstrap up to the agent's HELLO; then the agent sees EOF and exits."""
        conn = Connection(Target("victim"), SshOptions(program=str(self.ssh), engine="python"))
        try:
            return conn.handshake()
        finally:
            conn.close(timeout=10.0)

    def own(self, path: Path, mode: int) -> None:
        os.lchown(path, self.user.pw_uid, self.user.pw_gid)
        if not path.is_symlink():
            path.chmod(mode)


@pytest.fixture
def base() -> Iterator[Path]:
    if not is_root():
        pytest.skip("planting as another user and switching to the victim need root")
    if SYSTEM_PYTHON is None or shutil.which("setpriv") is None:
        pytest.skip("needs a system python3 and setpriv")
    base = Path(tempfile.mkdtemp(prefix="tether-engine-cache-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def victim(base: Path) -> Victim:
    return Victim(base, ensure_unprivileged_user())


def _assert_intact_and_ours(victim: Victim) -> None:
    st = os.lstat(victim.path)
    assert st.st_uid == victim.user.pw_uid and st.st_mode & 0o777 == 0o600
    head, _, data = victim.path.read_bytes().partition(b"\n")
    assert head == _head(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
    # Bytecode only: nothing left for a later connection to compile.
    assert "tether/remote/agent.pyc" in names and not [n for n in names if n.endswith(".py")]


def test_the_engine_is_compiled_once_then_loaded_from_the_cache(victim: Victim) -> None:
    assert victim.connect()["mode"] == "ship"
    _assert_intact_and_ours(victim)
    before = victim.path.stat()
    hello = victim.connect()
    assert hello["mode"] == "cached" and hello["uid"] == victim.user.pw_uid
    # Used as it was, not rewritten.
    after = victim.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize("guard", ["file owner", "file mode", "file symlink", "content hash"])
def test_a_planted_engine_file_is_never_run(base: Path, guard: str) -> None:
    # Only root may read a co-user's file that is closed to others: the
    # owner check alone stands between it and a planted engine.
    user = pwd.getpwuid(0) if guard == "file owner" else ensure_unprivileged_user()
    victim = Victim(base, user)
    assert victim.connect()["mode"] == "ship"  # the victim's own directory, as usual
    marker = victim.tmp / "planted-code-ran"
    evil = _evil_engine(marker)
    if guard == "content hash":
        evil = evil.replace(b"evil1", b"evil2")  # the hash line no longer matches
    if guard == "file symlink":
        target = victim.tmp / "elsewhere.zip"
        target.write_bytes(evil)
        victim.own(target, 0o600)
        victim.path.unlink()
        victim.path.symlink_to(target)
        victim.own(victim.path, 0)
    else:
        victim.path.write_bytes(evil)
        victim.own(victim.path, 0o644 if guard == "file mode" else 0o600)
        if guard == "file owner":
            os.chown(victim.path, ATTACKER_UID, ATTACKER_UID)
    hello = victim.connect()
    assert not marker.exists(), f"planted code ran despite the {guard} check"
    assert hello["mode"] == "ship" and hello["tether"] != "evil1"
    # Replaced by the victim's own engine, which the next connection uses.
    _assert_intact_and_ours(victim)
    assert victim.connect()["mode"] == "cached"


@pytest.mark.parametrize("guard", ["dir owner", "dir mode", "dir symlink"])
def test_a_planted_cache_directory_is_never_used(victim: Victim, guard: str) -> None:
    marker = victim.tmp / "planted-code-ran"
    planted = victim.tmp / "planted-dir" if guard == "dir symlink" else victim.dir
    planted.mkdir()
    (planted / victim.path.name).write_bytes(_evil_engine(marker))
    # Everything the victim's own, even the planted file, but the one guard
    # under test (the file's owner is checked too, by the file tests above).
    victim.own(planted / victim.path.name, 0o600)
    victim.own(planted, 0o777 if guard == "dir mode" else 0o700)
    if guard == "dir owner":
        os.chown(planted, ATTACKER_UID, ATTACKER_UID)
    if guard == "dir symlink":
        victim.dir.symlink_to(planted)
        victim.own(victim.dir, 0)
    hello = victim.connect()
    assert not marker.exists(), f"planted code ran despite the {guard} check"
    assert hello["mode"] == "ship"
    (chosen,) = [p for p in victim.tmp.glob(f"{victim.dir.name}.*") if p.is_dir()]
    st = os.lstat(chosen)
    assert st.st_uid == victim.user.pw_uid and st.st_mode & 0o777 == 0o700
    assert victim.connect()["mode"] == "cached"


# -- root, over a real sshd ----------------------------------------------------


@pytest.fixture(scope="module")
def cache_host(lab: SshLab) -> Iterator[tuple[str, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="tether-engine-cache-sshd-"))
    home = tmp / "home"
    home.mkdir()
    lab.start("cache", extra=f"SetEnv HOME={home} TMPDIR={tmp}")
    try:
        yield lab.alias("cachehost", "cache"), tmp
    finally:
        lab.servers.pop("cache").stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_over_sshd_the_second_run_uses_the_cached_engine(
    lab: SshLab, cache_host: tuple[str, Path]
) -> None:
    import json

    from helpers import tether_cmd

    alias, tmp = cache_host
    modes = []
    for _ in range(2):
        argv = tether_cmd("run", "-F", lab.config_file, "--host", alias, "--json", "--", "true")
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        (host,) = data["hosts"]
        assert host["report"]["complete"]
        modes.append(host["remote"]["mode"])
    assert modes == ["ship", "cached"]
    (cached,) = (tmp / "tether-remote-0").glob("tether-*.zip")
    assert cached.stat().st_mode & 0o777 == 0o600


def test_the_watchdog_loads_the_cached_engine_and_ends_the_job_of_a_killed_agent(
    lab: SshLab, tree: tuple[Path, Path]
) -> None:
    """The agent SIGKILLed, its client silent: only the watchdog is left to act.

    It imports tether from the cached bytecode zip through PYTHONPATH, so it
    fails with it (no watchdog, or one that cannot import tether, leaves the
    whole tree running).
    """
    script, marks = tree
    conn = Connection(Target("h01"), SshOptions(config_file=lab.config_file, engine="python"))
    try:
        hello = conn.handshake()
        assert hello["mode"] in ("cached", "ship")
        spec = JobSpec(argv=(REMOTE_PYTHON, str(script), str(marks)), policy=Policy.parse(POLICY))
        assert conn.send_run(spec, stdin=False)
        got = conn.read_frame()
        assert got is not None and got[0] == protocol.STARTED, got
        members = wait_trees(marks, 1)
        assert len(members) == len(MARKS)
        agent = hello["identity"]
        assert isinstance(agent, list)
        assert kill_identity(agent[0], agent[1])
        assert_gone(members, timeout=60.0)
    finally:
        conn.kill()
        conn.close(timeout=10.0)


# -- the cache's write and the client's zip ----------------------------------


def _stage1_functions(tmp: Path) -> str:
    """STAGE1's definitions (not its call), as code to run in a fresh python."""
    from tether.remote.bootstrap import STAGE1

    return STAGE1.split("def _installed")[0] + f"\nos.chdir({str(tmp)!r})\n"


def test_an_intact_cached_engine_is_never_replaced_a_broken_one_is(tmp_path: Path) -> None:
    """zipimport rereads the file by name at the offsets it listed first: a
    job's watchdog importing from it must never see it replaced by another
    compilation (different bytes) of the same engine."""
    path = tmp_path / "engine.zip"
    path.write_bytes(_engine_file(b"first"))
    path.chmod(0o600)
    before = path.stat().st_ino
    code = _stage1_functions(tmp_path) + f"_put({str(path)!r}, b'second')\n"
    subprocess.run([sys.executable, "-S", "-c", code], check=True, timeout=60)
    assert path.stat().st_ino == before and path.read_bytes() == _engine_file(b"first")
    # A broken one (its hash line no longer matches) is replaced.
    path.write_bytes(_engine_file(b"first") + b"torn")
    subprocess.run([sys.executable, "-S", "-c", code], check=True, timeout=60)
    assert path.read_bytes() == _engine_file(b"second")
    assert [p.name for p in tmp_path.iterdir()] == ["engine.zip"]  # no temporary left


def _run_stage1(tmp: Path, engine: bytes, after_check: str = "") -> tuple[str, str]:
    """The real stage 1 in a fresh python, offered an engine whose cache file
    holds ``engine``; ``after_check`` runs once it has checked that file.
    Its stdout (the mode, then what the agent's ``serve`` prints) and stderr."""
    import json
    import textwrap

    from tether.remote.bootstrap import STAGE1

    digest = "0" * 64
    cache = tmp / f"tether-remote-{os.geteuid()}"
    cache.mkdir(mode=0o700, exist_ok=True)
    path = cache / f"tether-{digest[:32]}.{_cache_tag(sys.executable)}.zip"
    path.write_bytes(engine)
    path.chmod(0o600)
    hook = (
        "_checked = _cached\n"
        "def _cached(path, magic):\n"
        "    engine = _checked(path, magic)\n"
        + textwrap.indent(after_check, "    ")
        + "    return engine\n"
    )
    code = STAGE1.replace("sys.exit(_stage1())", hook + "sys.exit(_stage1())")
    offer = json.dumps({"version": "none", "protocol": 0, "sha256": digest}) + "\n"
    argv = [sys.executable, "-S", "-c", code]
    env = {"TMPDIR": str(tmp), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        argv, input=offer, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout, done.stderr


#: An agent module that says where it was imported from.
_SERVE = (
    "def serve(env, mode, first=None):\n"
    "    print('served', mode, __file__)\n"
    "    raise SystemExit(0)\n"
)


def test_the_agent_runs_the_bytes_that_were_checked_not_the_file_of_that_name(
    tmp_path: Path,
) -> None:
    """Stage 1 imports the engine from the bytes whose hash it checked: a file
    replaced by name after the check (zipimport would read the new one) is not
    what runs."""
    checked, swapped = tmp_path / "checked-ran", tmp_path / "swapped-ran"
    engines = []
    for marker in (checked, swapped):
        plant = f"open({str(marker)!r}, 'w').close()\n"
        sources = {"tether/__init__.py": plant, "tether/remote/__init__.py": "",
                   "tether/remote/agent.py": plant + _SERVE}  # fmt: skip
        engines.append(_engine_file(_bytecode_zip(sources, sys.executable)))
    replacement = tmp_path / "replacement"
    replacement.write_bytes(engines[1])  # intact too: its own hash line
    replacement.chmod(0o600)
    swap = f"os.replace({str(replacement)!r}, path)\n"
    out, err = _run_stage1(tmp_path, engines[0], after_check=swap)
    assert out.startswith('{"mode": "cached"}\nserved cached '), err
    assert checked.exists() and not swapped.exists(), out
    # Named as zipimport names them (tether.job tells a zip from a directory
    # by its __file__; the watchdog imports the same file through zipimport).
    assert out.split()[-1].endswith(".zip/tether/remote/agent.pyc"), out


def test_the_engine_serves_only_tether_and_only_this_pythons_bytecode(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plant = f"open({str(marker)!r}, 'w').close()\n"
    # A module of the standard library in the engine is never imported from
    # it; a tether module it lacks (the native spawn, never shipped) is
    # missing at once, without zipimport reading the file's directory.
    agent = (
        "import csv, sys\n"
        "try:\n"
        "    import tether.remote._native\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "import tether\n"
        "asked = [p for p in sys.path_importer_cache if p.startswith(tether.__path__[0])]\n"
        "print('zipimport', bool(asked))\n" + _SERVE.replace("__file__", "csv.__file__")
    )
    sources = {"tether/__init__.py": "", "tether/remote/__init__.py": "",
               "tether/remote/agent.py": agent, "csv.py": plant}  # fmt: skip
    out, err = _run_stage1(tmp_path, _engine_file(_bytecode_zip(sources, sys.executable)))
    assert out.startswith('{"mode": "cached"}\nzipimport False\nserved cached '), (out, err)
    assert not marker.exists() and ".zip" not in out.split("served")[1], out
    # Bytecode of another python (its magic number) is refused, never run.
    sources = {"tether/__init__.py": plant, "tether/remote/__init__.py": "",
               "tether/remote/agent.py": _SERVE}  # fmt: skip
    data = bytearray(_bytecode_zip(sources, sys.executable))
    at = data.index(b"PK\3\4") + 30 + len(b"tether/__init__.pyc")
    data[at] ^= 0xFF  # the magic number's first byte
    out, err = _run_stage1(tmp_path, _engine_file(bytes(data)))
    assert out == '{"mode": "cached"}\n' and "bytecode of another python" in err, (out, err)
    assert not marker.exists()


def test_nothing_the_engine_keeps_imports_what_it_leaves_out() -> None:
    """Hosts get the package but CLIENT_ONLY (the command line, the pruner,
    the remote client): an import of any of that from a module the engine
    keeps would fail there, so there is none (at any depth, lazy ones too)."""
    import ast

    from tether.remote.bootstrap import CLIENT_ONLY

    blob, _ = package_zip()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        sources = {n: zf.read(n) for n in zf.namelist() if n.endswith(".py")}
    kept = {"tether/remote/agent.py", "tether/watchdog.py", "tether/recovery.py", "tether/job.py"}
    assert kept <= set(sources) and not [n for n in sources if n.startswith(CLIENT_ONLY)]
    left_out = [p.removesuffix(".py").rstrip("/").replace("/", ".") for p in CLIENT_ONLY]

    def excluded(module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in left_out)

    bad = []
    for path, data in sources.items():
        package = path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        if not path.endswith("__init__.py"):
            package = package.rpartition(".")[0]
        for node in ast.walk(ast.parse(data)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1]
                    )
                    base = f"{parent}.{base}" if base else parent
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [str(node.args[0].value)]
            bad += [(path, name) for name in names if excluded(name)]
    assert not bad


@pytest.mark.parametrize("kind", ["no zip", "deflated", "cut short"])
def test_a_whole_file_that_is_no_stored_zip_is_shipped_again(tmp_path: Path, kind: str) -> None:
    """Its hash line matches (only a process of the user could have written
    it), but the engine reads stored entries of a zip _compile made: anything
    else is shipped again, never half read."""
    marker = tmp_path / "ran"
    plant = f"open({str(marker)!r}, 'w').close()\n"
    sources = {"tether/__init__.py": plant, "tether/remote/__init__.py": "",
               "tether/remote/agent.py": _SERVE}  # fmt: skip
    data = _bytecode_zip(sources, sys.executable)
    if kind == "no zip":
        data = b"not a zip at all"
    elif kind == "deflated":
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
        data = buf.getvalue()
    else:
        cut = data.index(b"PK\1\2")  # the central directory then names bytes past the end
        data = data[: cut - 40] + data[cut:]
    out, err = _run_stage1(tmp_path, _engine_file(data))
    # "ship", then stage 1 waits for the engine: this stdin has ended.
    assert out == '{"mode": "ship"}\n', (out, err)
    assert not marker.exists()


def test_a_fan_out_builds_the_package_zip_once() -> None:
    """Every host's thread asks for the zip as its banner arrives (lru_cache
    would let each of them build it)."""
    code = (
        "import threading\n"
        "from tether.remote import bootstrap\n"
        "calls = []\n"
        "real = bootstrap._build_package_zip\n"
        "def counted():\n"
        "    calls.append(1)\n"
        "    return real()\n"
        "bootstrap._build_package_zip = counted\n"
        "bootstrap.prefetch_package_zip()\n"
        "threads = [threading.Thread(target=bootstrap.package_zip) for _ in range(20)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print(len(calls))\n"
    )
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


#: What the fake hosts below read stdin with: exactly n bytes, as stage 0's
#: reader does (exit 3 at EOF).
_HOST_READS = r"""
import os, sys

def read(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            sys.exit(3)
        b += c
    return b
"""


#: The end of a fake host's script: HELLO, STARTED and a RESULT of a job
#: that ran, then it waits for the client to hang up.
_HOST_RUNS_THE_JOB = r"""
report = Report(job_id="j", reason="r", policy="TERM", started_at=0.0, duration=0.0,
                complete=True, members=(), survivors=(), trackers=()).to_dict()
result = {"returncode": 0, "timed_out": False, "reason": "r", "report": report}
os.write(1, protocol.json_frame(protocol.HELLO, {"protocol": protocol.PROTOCOL})
         + protocol.json_frame(protocol.STARTED, {"job_id": "j"})
         + protocol.json_frame(protocol.RESULT, result))
os.read(0, 1 << 16)
"""


#: A host that sends its HELLO only once the SPEC has arrived (bounded): a
#: client that waits for the HELLO before sending the SPEC (a round trip more
#: per job) gets an ERROR from it instead of a result.
_SPEC_FIRST_HOST = (
    _HOST_READS
    + r"""
import json, select
from tether.remote import protocol
from tether.report import Report

os.write(1, b"TETHER-PY 3.11.0\n")
read(int(read(10)))  # stage 1
while not read(1) == b"\n":  # the offer
    pass
os.write(1, b'{"mode": "cached"}\n')
ready, _, _ = select.select([0], [], [], 10.0)
if not ready:
    message = {"message": "no SPEC before the HELLO", "exit_code": 125}
    hello = protocol.json_frame(protocol.HELLO, {})
    os.write(1, hello + protocol.json_frame(protocol.ERROR, message))
    sys.exit(0)
kind, size = protocol.parse_header(read(protocol.HEADER_SIZE))
assert kind == protocol.SPEC and json.loads(read(size))["op"] == "run"
"""
    + _HOST_RUNS_THE_JOB
)


#: A host that answers the offer only once the SPEC has arrived behind it
#: (bounded): a client that waits for the answer before sending the SPEC (a
#: round trip more per job) gets an ERROR from it instead of a result.
_SPEC_WITH_OFFER_HOST = (
    _HOST_READS
    + r"""
import json, select
from tether.remote import protocol
from tether.report import Report

os.write(1, b"TETHER-PY 3.11.0\n")
read(int(read(10)))  # stage 1
offer = b""
while not offer.endswith(b"\n"):
    offer += read(1)
ready, _, _ = select.select([0], [], [], 10.0)
if not ready or json.loads(offer).get("spec") is not True:
    os.write(1, b'{"mode": "error", "message": "no SPEC behind the offer"}\n')
    sys.exit(0)
kind, size = protocol.parse_header(read(protocol.HEADER_SIZE))
assert kind == protocol.SPEC and json.loads(read(size))["op"] == "run"
os.write(1, b'{"mode": "cached"}\n')
"""
    + _HOST_RUNS_THE_JOB
)


def _run_on_fake_host(tmp_path: Path, host_source: str, label: str) -> None:
    """One job through a stand-in for ssh that runs ``host_source`` (python):
    it must end without error."""
    from tether.remote.client import HostRun, OutputSink

    (tmp_path / "host.py").write_text(host_source)
    program = tmp_path / "ssh"
    program.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'host.py'}\n")
    program.chmod(0o755)
    out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        run = HostRun(
            Target(label), JobSpec(argv=("true",)), SshOptions(program=str(program)),
            OutputSink(False, out, out),
        )  # fmt: skip
        run.start()
        assert run.done.wait(60)
    finally:
        out.close()
    assert run.result.error is None and run.result.exit_status == 0, run.result


def test_the_spec_travels_with_the_offer_not_after_its_answer(tmp_path: Path) -> None:
    _run_on_fake_host(tmp_path, _SPEC_WITH_OFFER_HOST, "spec-with-offer")


def test_stage1_hands_the_spec_behind_the_offer_to_the_agent(tmp_path: Path) -> None:
    """The real stage 1 and agent: the SPEC read before the answer reaches the
    agent whole, when the engine is shipped behind it and when it is cached."""
    from tether.remote.client import HostRun, OutputSink

    if SYSTEM_PYTHON is None:
        pytest.skip("no python3 outside the venv (where no tether is installed)")
    cache = tmp_path / "tmp"
    cache.mkdir()
    program = tmp_path / "ssh"
    # The fixed remote command, run here (a stand-in for ssh to localhost),
    # with a python3 that has no tether installed and a cache of its own.
    bindir = os.path.dirname(SYSTEM_PYTHON)
    program.write_text(
        f"#!/bin/sh\nunset PYTHONPATH\nexport PATH={bindir}:/usr/bin:/bin TMPDIR={cache}\n"
        'for a; do last=$a; done\nexec /bin/sh -c "$last"\n'
    )
    program.chmod(0o755)
    marker = tmp_path / "ran"
    modes = []
    for _ in range(2):  # shipped, then cached
        out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
        try:
            run = HostRun(
                Target("local"),
                JobSpec(argv=("touch", str(marker))),
                SshOptions(program=str(program), engine="python"),
                OutputSink(False, out, out),
            )
            run.start()
            assert run.done.wait(60)
        finally:
            out.close()
        assert run.result.error is None and run.result.exit_status == 0, run.result
        assert marker.exists()
        marker.unlink()
        modes.append(run.result.remote.get("mode"))
    assert modes == ["ship", "cached"], modes


def test_the_spec_travels_with_the_engine_not_a_round_trip_later(tmp_path: Path) -> None:
    _run_on_fake_host(tmp_path, _SPEC_FIRST_HOST, "spec-first")


def test_a_shipped_zip_is_compiled_only_if_its_entries_hash_to_the_offered_digest(
    tmp_path: Path,
) -> None:
    """The client offers the digest of its sources without building the zip
    (:func:`package_digest`); stage 1 caches a shipped zip under that name only
    if its entries hash to it, so a name never holds another engine."""
    blob, digest = package_zip()
    tampered = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "tether/__init__.py":
                data += b"\n# another engine\n"
            dst.writestr(info, data)
    # What a hostile or broken sender could ship: no zip, half a zip, and a
    # zip that hashes as offered but does not compile. Each is refused (125
    # from stage 1), never a traceback.
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("tether/broken.py", b"def (:\n")
    broken_digest = sources_digest([("tether/broken.py", b"def (:\n")])
    shipped = {
        "good.zip": (blob, digest),
        "tampered.zip": (tampered.getvalue(), digest),
        "garbage.zip": (b"not a zip at all", digest),
        "truncated.zip": (blob[: len(blob) // 2], digest),
        "broken.zip": (broken.getvalue(), broken_digest),
    }
    for name, (data, _) in shipped.items():
        (tmp_path / name).write_bytes(data)
    code = _stage1_functions(tmp_path) + (
        f"for name, digest in {[(n, d) for n, (_, d) in shipped.items()]!r}:\n"
        "    with open(name, 'rb') as f:\n"
        "        engine = _compile(f.read(), 'engine.zip', digest)\n"
        "    print(name, engine is not None)\n"
    )
    done = subprocess.run(
        [SYSTEM_PYTHON or sys.executable, "-S", "-c", code],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "good.zip", "True", "tampered.zip", "False", "garbage.zip", "False",
        "truncated.zip", "False", "broken.zip", "False",
    ]  # fmt: skip
    assert "Traceback" not in done.stderr
    assert done.stderr.count("tether: the shipped engine") == 3, done.stderr
    assert "does not compile on this python" in done.stderr


def test_a_host_with_the_engine_cached_costs_no_zip(tmp_path: Path) -> None:
    """Offering the engine takes its digest alone; the zip (zipfile, the
    compression: tens of ms of the client's CPU) is built only to ship it."""
    (tmp_path / "host.py").write_text(_SPEC_FIRST_HOST)
    program = tmp_path / "ssh"
    program.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'host.py'}\n")
    program.chmod(0o755)
    code = (
        "import os, sys\n"
        "from tether.remote import bootstrap\n"
        "from tether.remote.client import HostRun, OutputSink, SshOptions\n"
        "from tether.remote.hostlist import Target\n"
        "from tether.spec import JobSpec\n"
        "built = []\n"
        "real = bootstrap._build_package_zip\n"
        "bootstrap._build_package_zip = lambda: built.append(1) or real()\n"
        "out = open(os.devnull, 'wb')\n"
        f"ssh = SshOptions(program={str(program)!r})\n"
        "run = HostRun(Target('c'), JobSpec(argv=('true',)), ssh, OutputSink(False, out, out))\n"
        "run.start()\n"
        "assert run.done.wait(60)\n"
        "print(run.result.exit_status, run.result.error, len(built), 'zipfile' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "None", "0", "False"]


# -- stage 0: compiled here when the host's python reads our bytecode ---------


def _own_magic() -> str:
    return bootstrap._own_magic()


def test_stage0_runs_source_and_code_marshalled_by_a_client_of_its_magic(tmp_path: Path) -> None:
    """The real stage 0 (the fixed ssh command, run by /bin/sh here) announces
    its bytecode's magic, and runs a source block and a marshalled one."""
    from tether.remote.bootstrap import REMOTE_COMMAND, stage1_block

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    code = "import os, sys\nos.write(1, b'ran %s\\n' % __name__.encode())\nsys.exit(0)\n"
    outputs = {}
    for magic in (None, _own_magic()):
        block = stage1_block(code, magic=magic)
        assert block[10:11] == (b"S" if magic is None else b"M")
        argv = ["/bin/sh", "-c", REMOTE_COMMAND]
        done = subprocess.run(
            argv, input=block, capture_output=True, env=env, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        outputs[magic] = done.stdout.decode()
    banner = f"TETHER-PY {'.'.join(map(str, sys.version_info[:3]))} {_own_magic()}\n"
    assert outputs == {None: banner + "ran __main__\n", _own_magic(): banner + "ran __main__\n"}


#: A host that announces MAGIC and notes how stage 1 came (S: source, M: code).
_MAGIC_HOST = (
    _HOST_READS
    + r"""

os.write(1, ("TETHER-PY 3.11.0 %s\n" % sys.argv[2]).encode().replace(b" \n", b"\n"))
block = read(int(read(10)))
with open(sys.argv[1], "wb") as f:
    f.write(block[:1])
"""
)


@pytest.mark.parametrize("magic", ["ours", "other", "none"])
def test_the_client_sends_stage1_compiled_only_to_a_python_of_its_magic(
    tmp_path: Path, magic: str
) -> None:
    from tether.remote.client import RemoteError

    announced = {"ours": _own_magic(), "other": "00000000", "none": ""}[magic]
    (tmp_path / "host.py").write_text(_MAGIC_HOST)
    got = tmp_path / "got"
    program = tmp_path / "ssh"
    program.write_text(
        f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'host.py'} {got} '{announced}'\n"
    )
    program.chmod(0o755)
    conn = Connection(Target("magic"), SshOptions(program=str(program), engine="python"))
    try:
        with pytest.raises(RemoteError):
            conn.handshake()  # the host ends after stage 1's first byte
    finally:
        conn.close(timeout=10.0)
    assert got.read_bytes() == (b"M" if magic == "ours" else b"S")
