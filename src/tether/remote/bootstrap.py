"""Getting tether's engine onto a remote host with nothing installed there.

The ssh command line is a constant (:data:`REMOTE_COMMAND`): a POSIX ``sh -c``
that starts ``python3 -c "<fixed code>" HEX``. Nothing the user typed is ever
part of it; argv, policy and environment travel later, as data in frames.

1. **Stage 0** (the hex argument, runs on any python3) announces
   ``TETHER-PY x.y.z MAGIC`` on stdout (MAGIC: the hex of its bytecode's magic
   number), then reads one length-prefixed block of Python from stdin and runs
   it: source, or code marshalled by a client whose python has the same magic
   (then nothing is compiled on the host). Without python3, the shell prints
   ``TETHER-NO-PYTHON`` and waits for the POSIX-shell agent instead
   (:mod:`tether.remote.shell`); so does a python3 older than the engine's
   floor, through :data:`STAGE1_TO_SHELL`.
2. **Stage 1** (:data:`STAGE1`, sent only to Python >= 3.11, the engine's floor)
   reads what the client offers (tether version, protocol, the sha256 of the
   ``tether`` package's sources, :func:`sources_digest`, and whether the
   job's SPEC frame follows at once, which it then reads too: the client
   does not wait for the answer to send it) and answers how it will load the
   engine:
   ``cached`` (this zip was compiled here before), ``installed`` (a compatible
   tether is importable from site-packages), or ``ship`` (send a zip of the
   sources, whose entries must hash to the offered digest). A shipped
   zip is compiled once, for this python, into a zip of unchecked hash-based
   bytecode (zipimport loads it without compiling anything) and kept
   in ``$TMPDIR/tether-remote-UID`` as ``tether-SHA.CACHE_TAG-MAGIC.zip``, so later
   connections, and the job's watchdog (via PYTHONPATH), start at once. It is
   used only if the directory and the file are ours, closed to everyone else
   (no group/other bits) and not symlinks, and the file is whole (its first
   line is the size and CRC-32 of the rest): a co-user can plant nothing there. The
   agent imports tether from the bytes so checked (stage 1's ``_Engine``), not
   from the file by name; the job's watchdog, should it need the engine, goes
   through zipimport. An intact cached engine is never replaced (a watchdog
   may be importing from it). Stage 0 runs python with ``-S``; site-packages
   are looked at only when nothing is cached.
3. Stage 1 then hands stdin/stdout to :func:`tether.remote.agent.main`, which
   speaks the frames of :mod:`tether.remote.protocol`.

Every block is read with exact-length reads on fd 0, so nothing meant for the
next stage is swallowed by a buffer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from tether.remote.shell import SHELL_BOOT

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hashlib import _Hash

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
m=getattr(sys.modules.get("_frozen_importlib_external"),"MAGIC_NUMBER",b"")
m="".join("%02x"%c for c in m)
os.write(1,("TETHER-PY %d.%d.%d %s\\n"%(v[0],v[1],v[2],m)).encode())
b=r(int(r(10)))
if b[:1]==b"M":
    import marshal
    b=marshal.loads(b[1:])
else:
    b=compile(b[1:],"<tether-stage1>","exec")
exec(b)
"""

#: What ssh runs on the remote host: fixed text, a single line, no quote or
#: ``$`` for the user's login shell (sh, bash, zsh, csh, fish) to interpret
#: other than the outer single quotes.
REMOTE_COMMAND = (
    "/bin/sh -c 'if command -v python3 >/dev/null 2>&1; then exec python3 -S -c "
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
import gc
# No cyclic collection while the engine loads: unmarshalling and running
# ~40 modules' code made collections (~4 ms of every job's CPU, measured)
# that find nothing to free. The agent turns it back on (frozen: start-up's
# objects are never traversed again) before it supervises.
gc.disable()
import marshal, os, stat, sys
# python -c puts "" (the working directory: the login's HOME, later the
# agent's) first on sys.path: every stdlib import not built in would list
# HOME (twice: again after the agent's chdir) and take a module of that name
# found there (a stray ~/enum.py) over the standard library's.
if sys.path[:1] == [""]:
    del sys.path[0]
try:
    from _frozen_importlib import ModuleSpec as _ModuleSpec
except ImportError:
    from importlib.machinery import ModuleSpec as _ModuleSpec

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

def _say(mode, message=None):
    # As json.dumps({"mode": mode}) writes it: mode is one of our own words.
    if message is None:
        os.write(1, b'{"mode": "%s"}\\n' % mode.encode())
        return
    import json
    os.write(1, (json.dumps({"mode": mode, "message": message}) + "\\n").encode())

def _offer(line):
    # json.loads(line), without the json package (~1.5 ms of every
    # connection's CPU, and nothing else on a host loads it) where the line
    # is plain: UTF-8, one value and its newline, read whole by json's own
    # C scanner with json's defaults. Anything else is json's to read.
    try:
        from _json import make_scanner
        class _Context:
            pass
        c = _Context()
        c.strict, c.object_hook, c.object_pairs_hook = True, None, None
        c.parse_float, c.parse_int, c.memo = float, int, {}
        inf = float("inf")
        c.parse_constant = {"-Infinity": -inf, "Infinity": inf, "NaN": float("nan")}.__getitem__
        text = line.decode()[:-1]
        value, end = make_scanner(c)(text, 0)
        if end == len(text):
            return value
    except Exception:
        pass
    import json
    return json.loads(line)

def _ours(st, kind):
    # Ours alone: the owner is us and neither group nor others may write it
    # (nor read it: a cache is nobody else's business).
    return kind(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077

def _tmp():
    # tempfile.gettempdir()'s choice without importing tempfile (random, shutil...).
    for var in ("TMPDIR", "TEMP", "TMP"):
        d = os.environ.get(var)
        if d and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return d
    return "/tmp"

def _cache_dir():
    # As tether.journal.private_tmp_dir: a look-alike another user planted
    # is skipped; ours is the canonical name, an older private one, or new.
    tmp = _tmp()
    name = "tether-remote-%d" % os.geteuid()
    d = os.path.join(tmp, name)
    try:
        os.mkdir(d, 0o700)
    except OSError:
        pass
    def ours(path):
        try:
            return _ours(os.lstat(path), stat.S_ISDIR)
        except OSError:
            return False
    if ours(d):
        return d
    for n in sorted(os.listdir(tmp)):
        if n.startswith(name + ".") and ours(os.path.join(tmp, n)):
            return os.path.join(tmp, n)
    while True:
        d = os.path.join(tmp, "%s.%s" % (name, os.urandom(6).hex()))
        try:
            os.mkdir(d, 0o700)
            return d
        except FileExistsError:
            pass

def _sha256(entries):
    # A shipped engine's name, as the client's sources_digest: each entry
    # (name, NUL, length, NUL, bytes) in name order. Only when shipping:
    # hashlib loads OpenSSL's libcrypto (~3 ms).
    import hashlib
    h = hashlib.sha256()
    for name, data in entries:
        h.update(b"%s\\0%d\\0" % (name.encode(), len(data)) + data)
    return h.hexdigest()

def _digest(data):
    # A check that the file is whole (a torn or damaged write), not a seal:
    # the owner and mode checks are what keep others out. The size and a
    # CRC-32 (binascii, built in and the engine's anyway: 0.3 ms for the
    # ~1 MB zip, where blake2b took 1.5 ms of every connection's CPU).
    import binascii
    return b"tether-engine size=%d crc32=%08x" % (len(data), binascii.crc32(data))

def _ext_suffix():
    # This python's platform-tagged suffix of extension modules, as
    # ".cpython-311-x86_64-linux-gnu.so" (version, ABI flags, arch, libc): a
    # shipped native module is used only if built for exactly that (an
    # untagged ".so" or ".abi3.so" could be another python's, and loading
    # one into the wrong ABI crashes instead of failing).
    try:
        import _imp
        first = _imp.extension_suffixes()[0]
    except Exception:
        return None
    return first if first.startswith(".cpython-") else None

def _intact(path):
    # The cached engine is run only if it is a regular file (no symlink
    # followed), ours, closed to others and whole: its first line is the
    # size and CRC-32 of the zip after it (zipimport skips such a prefix).
    # The zip that was checked, or None.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _ours(os.fstat(fd), stat.S_ISREG):
            return None
        chunks, size = [], 0
        while True:
            c = os.read(fd, 1 << 20)
            if not c:
                break
            size += len(c)
            if size > 64 << 20:
                return None
            chunks.append(c)
    except OSError:
        return None
    finally:
        os.close(fd)
    blob = b"".join(chunks)
    cut = blob.find(b"\\n") + 1
    # A view of the zip, not a copy of ~1 MB: half the page faults of the
    # check (~0.8 ms of every connection's CPU, measured); _Engine reads views.
    data = memoryview(blob)[cut:]
    return data if cut and blob[: cut - 1] == _digest(data) else None

class _Engine:
    # Imports tether.* from the bytes _intact checked rather than through
    # zipimport by the file's name: what runs is what was checked (a file
    # replaced after the check is not read), and each module is read and
    # unmarshalled once (zipimport opens the file and unmarshals the code
    # twice per module, and as sys.path[0] is asked for every stdlib import
    # too). The zip is ours (_compile): stored .pyc entries, no zip64.

    def __init__(self, path, data, magic):
        self.path = path
        self.data = memoryview(data)
        self.magic = magic
        self.ext = _ext_suffix()
        self.memfds = []
        self.index = {}
        d = self.data
        u16 = lambda i: int.from_bytes(d[i:i + 2], "little")
        u32 = lambda i: int.from_bytes(d[i:i + 4], "little")
        end = len(d) - 22
        if end < 0 or d[end:end + 4] != b"PK\\5\\6":
            raise ValueError("no end of central directory")
        p = u32(end + 16)
        for _ in range(u16(end + 10)):
            if d[p:p + 4] != b"PK\\1\\2" or u16(p + 10) != 0:
                raise ValueError("not a stored entry")
            size, n, local = u32(p + 24), u16(p + 28), u32(p + 42)
            name = bytes(d[p + 46:p + 46 + n]).decode()
            if d[local:local + 4] != b"PK\\3\\4":
                raise ValueError("no local header")
            start = local + 30 + u16(local + 26) + u16(local + 28)
            if start + size > end:
                raise ValueError("entry past the end")
            self.index[name] = (start, start + size)
            p += 46 + n + u16(p + 30) + u16(p + 32)

    def find_spec(self, name, path=None, target=None):
        if name != "tether" and not name.startswith("tether."):
            return None
        rel = name.replace(".", "/")
        for entry, package in ((rel + "/__init__.pyc", True), (rel + ".pyc", False)):
            if entry in self.index:
                # __file__ and __path__ as zipimport sets them (tether.job
                # tells a zip from a directory by its __file__).
                spec = _ModuleSpec(name, self, origin=self.path + "/" + entry, is_package=package)
                spec.has_location = True
                if package:
                    spec.submodule_search_locations = [self.path + "/" + rel]
                return spec
        if self.ext is not None and rel + self.ext in self.index:
            # A native module shipped for this very platform tag (the
            # client's own _vspawn, _procscan): no ctypes to import.
            spec = _ModuleSpec(name, self, origin=self.path + "/" + rel + self.ext)
            spec.has_location = True
            return spec
        # The engine is all of tether here: no other finder is asked (the
        # path finder would have zipimport read the file's directory, ~1 ms,
        # for an optional module such as the native spawn, never shipped).
        raise ModuleNotFoundError("No module named %r" % name, name=name)

    def create_module(self, spec):
        entry = spec.origin[len(self.path) + 1:]
        if not entry.endswith(".pyc"):
            return self._native(spec, entry)
        return None

    def _native(self, spec, entry):
        # dlopen needs a file: the checked bytes go to an anonymous memfd,
        # loaded through /proc/self/fd, so what runs is what was checked
        # (nothing by name in the cache). Any failure (no memfd, a noexec
        # memfd policy, a libc too old for the module) is an ImportError:
        # the engine then does without it, as where none was built.
        import _imp
        start, end = self.index[entry]
        name = "tether-" + spec.name.rpartition(".")[2]
        try:
            try:
                # Executable on purpose: MFD_EXEC (Linux 6.3+; the kernel
                # warns of a memfd that says neither). Refused (EINVAL) by
                # an older kernel: then without it.
                fd = os.memfd_create(name, os.MFD_CLOEXEC | 0x10)
            except OSError as err:
                if err.errno != 22:
                    raise
                fd = os.memfd_create(name, os.MFD_CLOEXEC)
        except (AttributeError, OSError) as err:
            raise ImportError("%s: no memfd: %s" % (spec.name, err), name=spec.name)
        try:
            view = self.data[start:end]
            while view:
                view = view[os.write(fd, view):]
            where = _ModuleSpec(spec.name, None, origin="/proc/self/fd/%d" % fd)
            module = _imp.create_dynamic(where)
        except BaseException as err:
            os.close(fd)
            if isinstance(err, OSError):
                raise ImportError("%s: %s" % (spec.name, err), name=spec.name)
            raise
        # Kept open (close-on-exec): dlopen takes a path it loaded before
        # for the same library, so a second module must not find the first
        # one's descriptor number free again.
        self.memfds.append(fd)
        # Named as the zip's other modules, not after its descriptor.
        try:
            module.__file__ = spec.origin
        except AttributeError:
            pass
        return module

    def exec_module(self, module):
        entry = module.__spec__.origin[len(self.path) + 1:]
        if not entry.endswith(".pyc"):
            import _imp
            _imp.exec_dynamic(module)
            return
        start, end = self.index[entry]
        if self.data[start:start + 4] != self.magic:
            raise ImportError("%s: bytecode of another python" % module.__name__)
        exec(marshal.loads(self.data[start + 16:end]), module.__dict__)

def _cached(path, magic):
    # The intact cached engine, ready to import from; None: ship it again.
    data = _intact(path)
    if data is None:
        return None
    try:
        return _Engine(path, data, magic)
    except ValueError:
        return None  # whole, but no zip _compile made (a co-process of ours wrote it)

def _compile(blob, path, digest):
    # The shipped zip of sources becomes a zip of bytecode for
    # this python (unchecked hash-based .pyc, which zipimport loads without
    # compiling): compiled once per host, version and python, not each run.
    # Nothing is compiled unless its entries hash to the offered digest (as
    # the client's sources_digest: name, NUL, length, NUL, bytes, in name
    # order); None for a zip that does not, or is no zip, or does not compile.
    import importlib.util, io, zipfile, zlib
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as src:
            entries, size = [], 0
            for info in sorted(src.infolist(), key=lambda i: i.filename):
                data = src.read(info)
                size += len(data)
                if size > 64 << 20:
                    raise ValueError("more than 64 MiB of sources")
                entries.append((info.filename, data))
    except (zipfile.BadZipFile, ValueError, RuntimeError, EOFError, zlib.error) as err:
        sys.stderr.write("tether: the shipped engine is not a usable zip: %s\\n" % err)
        return None
    if _sha256(entries) != digest:
        sys.stderr.write("tether: the shipped engine is not the one offered\\n")
        return None
    out = io.BytesIO()
    flags = (1).to_bytes(4, "little")  # hash-based, source not checked
    ext = _ext_suffix()
    try:
        with zipfile.ZipFile(out, "w") as dst:
            for name, data in entries:
                if name.endswith(".py"):
                    # Bytecode alone: a remote agent's failure comes back as one
                    # line, so tracebacks need no source (and the file is half the size).
                    code = compile(data, path + "/" + name, "exec", dont_inherit=True)
                    pyc = importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(data)
                    dst.writestr(name + "c", pyc + marshal.dumps(code))
                elif ext is not None and name.endswith(ext):
                    # A native module built for exactly this platform tag:
                    # kept as it came (stored), for _Engine to load.
                    dst.writestr(name, data)
    except (SyntaxError, ValueError) as err:
        sys.stderr.write("tether: the engine does not compile on this python: %s\\n" % err)
        return None
    return out.getvalue()

def _put(path, data):
    # Never replace an intact engine: a job's watchdog may be importing from
    # it, and zipimport rereads the file by name at the offsets it listed
    # first. Whoever links first wins; a broken one is replaced.
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(_digest(data) + b"\\n" + data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            if _intact(path) is None:
                os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)

def _installed(want):
    # Stage 0 ran with -S (site costs every connection ~3 ms): only now,
    # with no cached engine, look in site-packages for an installed tether.
    import site
    site.main()
    try:
        import tether
        import tether.remote.agent as agent
        if tether.__version__ == want["version"] and agent.PROTOCOL == want["protocol"]:
            return agent
    except Exception:
        pass
    for name in [m for m in sys.modules if m == "tether" or m.startswith("tether.")]:
        del sys.modules[name]
    return None

def _stage1():
    env = dict(os.environ)
    want = _offer(_line())
    first = None
    if want.get("spec") is True:
        # The job's SPEC frame came right behind the offer (the client does
        # not wait for our answer: a round trip less before the job starts).
        # Read now, before a shipped engine can follow, for the agent.
        head = _read(5)
        size = int.from_bytes(head[1:], "big")
        if size > 64 << 20:  # protocol.MAX_FRAME
            os._exit(3)
        first = head + _read(size)
    agent = None
    try:
        # Bytecode is this interpreter's: its tag, and the magic number that
        # zipimport checks (prereleases of one version share the tag).
        try:
            from _frozen_importlib_external import MAGIC_NUMBER
        except ImportError:
            from importlib.util import MAGIC_NUMBER
        tag = "%s-%s" % (sys.implementation.cache_tag, MAGIC_NUMBER.hex())
        path = os.path.join(_cache_dir(), "tether-%s.%s.zip" % (want["sha256"][:32], tag))
        engine = _cached(path, MAGIC_NUMBER)
        mode = "ship" if engine is None else "cached"
    except OSError as err:
        _say("error", "cannot cache tether: %s" % err)
        return 125
    if mode == "ship":
        agent = _installed(want)
        if agent is not None:
            mode = "installed"
    _say(mode)
    if mode == "ship":
        blob = _compile(_read(int(_line())), path, want["sha256"])
        if blob is None:
            return 125
        _put(path, blob)
        engine = _Engine(path, blob, MAGIC_NUMBER)
    if agent is None:
        # The job's watchdog imports from the file (zipimport), should the agent die.
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = path + (os.pathsep + old if old else "")
        sys.meta_path.insert(0, engine)
        import tether.remote.agent as agent
    agent.serve(env, mode, first)

sys.exit(_stage1())
"""


class _Zip:
    """The package's sources, digest and zip, each made once per process."""

    lock = threading.Lock()
    #: (name in the zip, bytes) of every source file, in name order.
    sources: list[tuple[str, bytes]] | None = None
    digest: str | None = None
    built: bytes | None = None
    prefetching = False


def sources_digest(entries: Iterable[tuple[str, bytes]]) -> str:
    """The sha256 naming an engine: each (name, bytes), in name order, as
    ``name NUL length NUL bytes`` (stage 1's ``_compile`` checks a shipped
    zip's entries the same way)."""
    h = _sha256()
    for name, data in sorted(entries):
        h.update(b"%s\0%d\0" % (name.encode(), len(data)) + data)
    return h.hexdigest()


def _sha256() -> _Hash:
    # sha256 from the interpreter's own module: importing hashlib loads
    # OpenSSL's libcrypto and _blake2 first, ~4.5 ms of every command's CPU
    # for one hash of ~400 KB (a build without the module has hashlib's).
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            from hashlib import sha256
    h: _Hash = sha256()
    return h


def package_digest() -> str:
    """:func:`sources_digest` of the engine: the importable ``tether`` package
    but :data:`CLIENT_ONLY`, read once.

    What a connection offers: reading and hashing the sources (~3 ms) is all
    it needs unless the host asks for the engine (then :func:`package_zip`,
    built from the same bytes, so what is shipped is what was named).
    """
    with _Zip.lock:
        if _Zip.digest is None:
            _Zip.sources = _read_sources()
            _Zip.digest = sources_digest(_Zip.sources)
        return _Zip.digest


def package_zip() -> tuple[bytes, str]:
    """A zip of the engine's sources (:func:`package_digest`'s) and its digest.

    Deterministic (fixed timestamps, entries in name order). Built once per
    process, and only for a host that has no cached engine: a lock, not
    lru_cache, which lets every host's thread of a fan-out ask at once.
    """
    digest = package_digest()
    with _Zip.lock:
        if _Zip.built is None:
            _Zip.built = _build_package_zip()
        return _Zip.built, digest


def prefetch_package_zip() -> None:
    """Start reading the sources for :func:`package_digest` in the background
    (while ssh connects): it goes out as soon as the remote banner arrives."""
    with _Zip.lock:
        if _Zip.digest is not None or _Zip.prefetching:
            return
        _Zip.prefetching = True
    threading.Thread(target=package_digest, name="tether-package-digest", daemon=True).start()


#: What only the local side imports (the command line, the pruner, the
#: remote client): left out of the engine, which a host reads and hashes
#: whole on every connection (~45% of the sources). A test checks that
#: nothing the engine keeps imports any of it.
CLIENT_ONLY = (
    "tether/cli/",
    "tether/prune/",
    "tether/aio.py",
    "tether/config.py",
    "tether/display.py",
    "tether/pytest_plugin.py",
    "tether/remote/client.py",
    "tether/remote/fanout.py",
    "tether/remote/hostlist.py",
)


def _read_sources() -> list[tuple[str, bytes]]:
    import tether

    root = os.path.dirname(os.path.abspath(tether.__file__))
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py") or name == "py.typed":
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, os.path.dirname(root)).replace(os.sep, "/")
                if rel.startswith(CLIENT_ONLY):
                    continue
                with open(full, "rb") as f:
                    out.append((rel, f.read()))
    return sorted(out + _native_entries())


def _native_entries() -> list[tuple[str, bytes]]:
    """The native modules this process uses (the spawn, ``_vspawn``, and the
    /proc reader, ``_procscan``, each vetted by its loader: ABI, source),
    named with this python's platform-tagged suffix: a host whose python has
    the same tag loads them (stage 1's ``_Engine``), any other leaves them out
    and does without, as where they were never built."""
    import _imp

    suffix = _imp.extension_suffixes()[0]
    if not suffix.startswith(".cpython-"):
        return []
    try:
        from tether._platform.linux import procscan, spawn

        modules = (spawn._native_module(), procscan.module())
    except (ImportError, OSError):  # not Linux
        return []
    out = []
    for module in modules:
        path, name = getattr(module, "__file__", None), getattr(module, "__name__", "")
        if isinstance(path, str) and path.endswith(suffix) and name.startswith("tether."):
            with open(path, "rb") as f:
                out.append((name.replace(".", "/") + suffix, f.read()))
    return out


def _build_package_zip() -> bytes:
    # zipfile and the compression (~50 ms together) only for a host that
    # must be sent the engine: every other connection offers the digest alone.
    import io
    import zipfile

    assert _Zip.sources is not None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, data in _Zip.sources:
            info = zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def stage1_block(code_text: str = STAGE1, magic: str | None = None) -> bytes:
    """A block of Python as stage 0 reads it: a 10-digit length, then ``S`` and
    the source, or ``M`` and its code marshalled here when the host's python
    announced our bytecode's ``magic`` (its banner's hex MAGIC_NUMBER):
    compiling stage 1 there cost every connection ~1.5 ms of CPU."""
    if magic is not None and magic == _own_magic():
        block = b"M" + _marshalled(code_text)
    else:
        block = b"S" + code_text.encode()
    return b"%010d" % len(block) + block


def _own_magic() -> str:
    # As stage 0 reads it: the import system's own module, always loaded
    # (importlib.util would import contextlib and more, ~4 ms, for a constant).
    from importlib._bootstrap_external import MAGIC_NUMBER

    return MAGIC_NUMBER.hex()


#: Stage 1 blocks marshalled here, by their source (a dict, not
#: functools.lru_cache: functools is left unimported on a remote run's start).
_MARSHALLED: dict[str, bytes] = {}


def _marshalled(code_text: str) -> bytes:
    import marshal

    block = _MARSHALLED.get(code_text)
    if block is None:
        # As stage 0 compiles a source block: no flags of this module (its
        # ``from __future__``), asserts kept whatever -O this python runs with.
        code = compile(code_text, "<tether-stage1>", "exec", dont_inherit=True, optimize=0)
        block = _MARSHALLED[code_text] = marshal.dumps(code)
    return block
