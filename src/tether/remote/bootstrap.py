"""Getting tether's engine onto a remote host with nothing installed there.

The ssh command line is a constant (:data:`REMOTE_COMMAND`): a POSIX ``sh -c``
that starts ``python3 -c "<fixed code>" HEX``. Nothing the user typed is ever
part of it; argv, policy and environment travel later, as data in frames.

1. **Stage 0** (the hex argument, runs on any python3) announces
   ``TETHER-PY x.y.z`` on stdout, then reads one length-prefixed block of Python
   from stdin and runs it. Without python3, the shell prints
   ``TETHER-NO-PYTHON`` and waits for the POSIX-shell agent instead
   (:mod:`tether.remote.shell`); so does a python3 older than the engine's
   floor, through :data:`STAGE1_TO_SHELL`.
2. **Stage 1** (:data:`STAGE1`, sent only to Python >= 3.11, the engine's floor)
   reads what the client offers (tether version, protocol, sha256 of a zip of
   the ``tether`` package) and answers how it will load the engine:
   ``installed`` (a compatible tether is importable there), ``cached`` (the
   same zip was shipped before and its hash still matches), or ``ship`` (send
   it). A shipped zip is kept in ``$TMPDIR/tether-remote-UID`` (mode 0700,
   owned by the user, checked without following symlinks) so the job's
   watchdog (``python -m tether.watchdog``) can import it too, via PYTHONPATH.
3. Stage 1 then hands stdin/stdout to :func:`tether.remote.agent.main`, which
   speaks the frames of :mod:`tether.remote.protocol`.

Every block is read with exact-length reads on fd 0, so nothing meant for the
next stage is swallowed by a buffer.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import zipfile

from tether.remote.shell import SHELL_BOOT

#: The engine's floor (pyproject's requires-python).
MIN_ENGINE_PYTHON = (3, 11)

_STAGE0 = """\
import os,sys
def r(n):
    b=b""
    while len(b)<n:
        c=os.read(0,n-len(b))
        if not c:
            os._exit(3)
        b+=c
    return b
v=sys.version_info
os.write(1,("TETHER-PY %d.%d.%d\\n"%(v[0],v[1],v[2])).encode())
exec(compile(r(int(r(10))),"<tether-stage1>","exec"))
"""

#: What ssh runs on the remote host: fixed text, a single line, no quote or
#: ``$`` for the user's login shell (sh, bash, zsh, csh, fish) to interpret
#: other than the outer single quotes.
REMOTE_COMMAND = (
    "/bin/sh -c 'if command -v python3 >/dev/null 2>&1; then exec python3 -c "
    '"import sys;exec(bytes.fromhex(sys.argv[1]))" '
    + _STAGE0.encode().hex()
    + "; fi; echo TETHER-NO-PYTHON; "
    + SHELL_BOOT
    + "; exit 127'"
)

#: Stage 1 for a python3 too old for the engine (or when the shell engine is
#: asked for): hand the channel over to the POSIX-shell agent.
STAGE1_TO_SHELL = f"import os\nos.execv('/bin/sh', ['/bin/sh', '-c', {SHELL_BOOT!r}])\n"

STAGE1 = """
import hashlib, json, os, stat, sys, tempfile

def _read(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            os._exit(3)
        b += c
    return b

def _line():
    b = b""
    while not b.endswith(b"\\n"):
        c = os.read(0, 1)
        if not c:
            os._exit(3)
        b += c
        if len(b) > 65536:
            os._exit(3)
    return b

def _say(data):
    os.write(1, (json.dumps(data) + "\\n").encode())

def _ours(d):
    try:
        st = os.lstat(d)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077

def _cache_dir():
    # As tether.journal.private_tmp_dir: a look-alike another user planted
    # is skipped; ours is the canonical name, an older private one, or new.
    tmp = tempfile.gettempdir()
    name = "tether-remote-%d" % os.geteuid()
    d = os.path.join(tmp, name)
    try:
        os.mkdir(d, 0o700)
    except OSError:
        pass
    if _ours(d):
        return d
    for n in sorted(os.listdir(tmp)):
        if n.startswith(name + ".") and _ours(os.path.join(tmp, n)):
            return os.path.join(tmp, n)
    return tempfile.mkdtemp(prefix=name + ".", dir=tmp)

def _sha256(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        h = hashlib.sha256()
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)
    finally:
        os.close(fd)

def _stage1():
    env = dict(os.environ)
    want = json.loads(_line())
    mode = None
    try:
        import tether
        import tether.remote.agent as agent
        if tether.__version__ == want["version"] and agent.PROTOCOL == want["protocol"]:
            mode = "installed"
    except Exception:
        pass
    path = None
    if mode is None:
        for name in [m for m in sys.modules if m == "tether" or m.startswith("tether.")]:
            del sys.modules[name]
        try:
            path = os.path.join(_cache_dir(), "tether-%s.zip" % want["sha256"][:32])
            mode = "cached" if os.path.exists(path) and _sha256(path) == want["sha256"] else "ship"
        except OSError as err:
            _say({"mode": "error", "message": "cannot cache tether: %s" % err})
            return 125
    _say({"mode": mode})
    if mode == "ship":
        blob = _read(int(_line()))
        if hashlib.sha256(blob).hexdigest() != want["sha256"]:
            return 125
        tmp = "%s.%d.tmp" % (path, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    if path is not None:
        sys.path.insert(0, path)
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = path + (os.pathsep + old if old else "")
        import tether.remote.agent as agent
    return agent.main(env, mode)

sys.exit(_stage1())
"""


@functools.lru_cache(maxsize=1)
def package_zip() -> tuple[bytes, str]:
    """A zip of the importable ``tether`` package (sources only) and its sha256.

    Deterministic (fixed timestamps, sorted entries), so the remote cache hits
    across runs of the same version.
    """
    import tether

    root = os.path.dirname(os.path.abspath(tether.__file__))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not (name.endswith(".py") or name == "py.typed"):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, os.path.dirname(root))
                info = zipfile.ZipInfo(rel.replace(os.sep, "/"), date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with open(full, "rb") as f:
                    zf.writestr(info, f.read())
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def stage1_block(code_text: str = STAGE1) -> bytes:
    """Stage 1 as stage 0 reads it: a 10-digit length, then the source."""
    code = code_text.encode()
    return b"%010d" % len(code) + code
