"""The native spawn (``_vspawn``) shipped with the remote engine (issue 15).

A host whose python has the client's platform-tagged extension suffix
(``.cpython-311-x86_64-linux-gnu.so``: version, ABI flags, arch, libc) loads
the client's ``_vspawn`` from the engine's checked bytes through a memfd:
no ctypes to import and no ctypes clone for every job (~12 ms of a host's CPU
per job, bench/remote_fanout.py). Any other suffix is left out, and a host
that cannot load it (no memfd, a libc too old) does without it, as where it
was never built.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sshd import SshLab
from test_engine_cache import SYSTEM_PYTHON, _stage1_functions
from test_remote import finish, tether_run

from tether._platform.linux import procscan, spawn
from tether.remote import bootstrap
from tether.remote.bootstrap import sources_digest

needs_native = pytest.mark.skipif(
    not spawn.native(), reason="the _vspawn extension is not built here: nothing to ship"
)


def _suffix(python: str) -> str:
    code = "import _imp; print(_imp.extension_suffixes()[0])"
    return subprocess.run([python, "-S", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


@needs_native
def test_the_engine_ships_the_native_modules_it_uses_under_this_pythons_tag() -> None:
    """The spawn always (this test needs it built), the /proc reader where
    this process would use it (built, and not stale in a checkout)."""
    entries = dict(bootstrap._read_sources())
    suffix = _suffix(sys.executable)
    used = ["_vspawn"] + (["_procscan"] if procscan.module() is not None else [])
    names = sorted(f"tether/_platform/linux/{module}{suffix}" for module in used)
    assert sorted(n for n in entries if n.endswith(".so")) == names
    assert all(entries[name][:4] == b"\x7fELF" for name in names)


@needs_native
def test_a_remote_job_runs_under_an_agent_with_the_native_spawn_from_a_memfd(
    lab: SshLab,
) -> None:
    """The job's parent is its agent: its mappings show _vspawn loaded from
    the memfd holding the checked bytes (not a file in the cache, and not
    ctypes, which it then never imports)."""
    if _suffix(SYSTEM_PYTHON or "python3") != _suffix(sys.executable):
        pytest.skip("the host's python has another platform tag: it does without")
    script = "cat /proc/$PPID/maps"
    rc, out, err = finish(tether_run(lab, "--host", "h01", "--", "sh", "-c", script))
    assert rc == 0, err
    assert "/memfd:tether-_vspawn" in out, out[-2000:]
    assert "_ctypes" not in out, out[-2000:]


#: Stage 1's _compile and _Engine in the host's python: compile a shipped
#: zip, import the spawn module from it, and say what it got.
_LOAD = """
import json
names = json.loads(sys.argv[1])
with open("shipped.zip", "rb") as f:
    blob = _compile(f.read(), "engine.zip", sys.argv[2])
import zipfile, io
kept = sorted(n for n in zipfile.ZipFile(io.BytesIO(blob)).namelist() if n.endswith(".so"))
if sys.argv[3] == "no-memfd":
    def _refuse(*args):
        raise OSError(38, "Function not implemented")
    os.memfd_create = _refuse
from _frozen_importlib_external import MAGIC_NUMBER
sys.meta_path.insert(0, _Engine("engine.zip", blob, MAGIC_NUMBER))
from tether._platform.linux import procscan, spawn
native = spawn._native_module()
reader = procscan.module()
with open("/proc/self/maps") as f:
    memfd = "/memfd:tether-_vspawn" in f.read()
print(json.dumps({"kept": kept, "native": native is not None, "memfd": memfd,
                  "procscan": reader is not None,
                  "file": getattr(native, "__file__", None), "ctypes": "ctypes" in sys.modules}))
"""


def _load(tmp_path: Path, extra: dict[str, bytes], how: str = "") -> dict[str, object]:
    """Ship the engine plus ``extra`` entries to stage 1 in the system python."""
    import json

    entries = dict(bootstrap._read_sources())
    entries.update(extra)
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(entries.items()):
            zf.writestr(name, data)
    (tmp_path / "shipped.zip").write_bytes(blob.getvalue())
    code = _stage1_functions(tmp_path) + _LOAD
    python = SYSTEM_PYTHON or sys.executable
    argv = [
        python,
        "-S",
        "-c",
        code,
        json.dumps(sorted(extra)),
        sources_digest(entries.items()),
        how,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@needs_native
def test_only_a_native_module_of_the_hosts_own_tag_is_kept_and_loaded(tmp_path: Path) -> None:
    host = _suffix(SYSTEM_PYTHON or sys.executable)
    if host != _suffix(sys.executable):
        pytest.skip("the host's python has another platform tag")
    so = dict(bootstrap._read_sources())["tether/_platform/linux/_vspawn" + host]
    # The same bytes under names another python could load as well (untagged,
    # stable ABI) or that are another platform's: left out, never dlopened.
    other_tag = ".cpython-39-s390x-linux-gnu.so"
    assert other_tag != host
    others = {
        "tether/_platform/linux/_other.so": so,
        "tether/_platform/linux/_other.abi3.so": so,
        "tether/_platform/linux/_other" + other_tag: so,
    }
    got = _load(tmp_path, others)
    ours = ["_procscan", "_vspawn"] if procscan.module() is not None else ["_vspawn"]
    assert got["kept"] == [f"tether/_platform/linux/{m}{host}" for m in ours], got
    assert got["procscan"] == (procscan.module() is not None), got
    assert got["native"] and got["memfd"] and not got["ctypes"], got
    # Named as a module of the zip (no source beside it: no stale-build check).
    assert str(got["file"]).endswith("engine.zip/tether/_platform/linux/_vspawn" + host), got


@needs_native
def test_a_host_that_cannot_load_it_does_without(tmp_path: Path) -> None:
    """No memfd (an old kernel, a seccomp filter): an ImportError, so the
    engine takes ctypes as where the module was never built; and bytes that
    are no loadable module under the right name do the same."""
    host = _suffix(SYSTEM_PYTHON or sys.executable)
    if host != _suffix(sys.executable):
        pytest.skip("the host's python has another platform tag")
    got = _load(tmp_path, {}, "no-memfd")
    assert not got["native"] and not got["memfd"], got
    got = _load(tmp_path, {"tether/_platform/linux/_vspawn" + host: b"\x7fELF not a module"})
    assert not got["native"] and not got["memfd"], got
