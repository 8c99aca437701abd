"""The wheel builds from the repository without a deprecation warning, holds
the whole package, the JSON schemas, the LICENSE and the man pages (but not
the build tools under tools/), installs into a fresh venv and runs from there;
the sdist holds the LICENSE too. The optional native spawn (a C extension)
is in the wheel where this machine can compile it, and a build that cannot
compile it still installs a tether that runs jobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import tether
from helpers import cgroup_writable, is_root

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = ROOT / "src" / "tether"


def _source_tree(dest: Path) -> Path:
    """The files a build reads, copied: an in-tree build would leave build/
    behind, whose stale files a later build would ship."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy2(ROOT / name, dest / name)
    # *.so: an editable install's in-place build of the extension.
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", "*.so")
    # src/tether/schemas is a link to docs/schemas, kept as a link.
    shutil.copytree(ROOT / "src", dest / "src", ignore=ignore, symlinks=True)
    shutil.copytree(ROOT / "docs", dest / "docs")
    shutil.copytree(ROOT / "contrib", dest / "contrib")
    shutil.copytree(ROOT / "examples", dest / "examples", ignore=ignore)
    shutil.copytree(ROOT / "man", dest / "man")
    # As in a checkout: the build must leave tools/ out by itself.
    shutil.copytree(ROOT / "tools", dest / "tools", ignore=ignore)
    return dest


def _can_compile() -> bool:
    """This interpreter and machine can build the native spawn."""
    if not sys.platform.startswith("linux") or os.uname().machine not in ("x86_64", "aarch64"):
        return False
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(cc) is not None and headers.is_file()


def _cgroups() -> int:
    """1 if an in-process job's leader is cloned into its cgroup here."""
    return int(is_root() and cgroup_writable())


def _wheel(tmp_path: Path, env: dict[str, str] | None = None) -> Path:
    tree = _source_tree(tmp_path / "tree")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(dist), "."],
        cwd=tree, capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("tether-*.whl")
    return wheel


def _install(wheel: Path, venv: Path) -> Path:
    """A fresh venv with ``wheel`` installed: its python."""
    # No pip or click of its own (ensurepip is slow, the index may be out of
    # reach): the running interpreter's site-packages come after the venv's
    # own through a .pth line. Not --system-site-packages: when the suite
    # runs in the project's venv, that would be the base interpreter's
    # (Debian's python3 has no click). Its .pth files are not run, so the
    # checkout's editable tether stays out; pip installs into this venv.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "_suite.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    # Not PYTHONPATH's tether either (pip would take it as installed).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


#: Run by an installed tether: whether the native spawn is used, and a job
#: run in this process (its leader cloned into its cgroup where it can).
_NATIVE = """
import json, tether
from tether._platform.linux import spawn
ctypes_clones, real = [], spawn._clone_ctypes
def spy(*args):
    ctypes_clones.append(1)
    return real(*args)
spawn._clone_ctypes = spy
done = tether.run(["true"], watchdog=False)
print(json.dumps([spawn.native(), done.returncode, len(ctypes_clones)]))
"""


def test_wheel_builds_installs_and_runs(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    # Modules and the files they read at run time (the remote shell agent).
    shipped = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.sh")]
    modules = {f"tether/{p.relative_to(PACKAGE).as_posix()}" for p in shipped}
    assert {"tether/cli/__init__.py", "tether/cli/run.py", "tether/remote/fanout.py"} <= modules
    assert not modules - names, f"missing from the wheel: {sorted(modules - names)}"
    # Build tools (tools/manpage.py) stay out of the runtime package.
    assert (ROOT / "tools" / "manpage.py").is_file()
    built_tools = sorted(n for n in names if "manpage" in n or n.startswith("tools/"))
    assert not built_tools, f"build tools in the wheel: {built_tools}"
    assert "tether/py.typed" in names
    schemas = {f"tether/schemas/{p.name}" for p in (ROOT / "docs" / "schemas").glob("*.json")}
    assert "tether/schemas/run.schema.json" in schemas
    assert not schemas - names, f"schemas missing from the wheel: {sorted(schemas - names)}"
    info = f"tether-{tether.__version__}.dist-info"
    assert f"{info}/licenses/LICENSE" in names
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(f"{info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    data = f"tether-{tether.__version__}.data/data/share/man"
    pages = {f"{data}/man{p.suffix[1:]}/{p.name}" for p in (ROOT / "man").glob("tether*.[158]")}
    assert f"{data}/man1/tether.1" in pages and f"{data}/man5/tether.toml.5" in pages
    assert not pages - names, f"man pages missing from the wheel: {sorted(pages - names)}"

    native = {n for n in names if n.startswith("tether/_platform/linux/_vspawn.")}
    # The module where it compiles, never its source (the sdist has that).
    assert len(native) == (1 if _can_compile() else 0), sorted(native)
    assert all(n.endswith(".so") for n in native), sorted(native)

    venv = tmp_path / "venv"
    python = _install(wheel, venv)
    assert (venv / "share" / "man" / "man8" / "tether-prune.8").is_file()

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import tether; print(tether.__file__)"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(venv)), "the venv imported another tether"
    version = subprocess.run(
        [str(venv / "bin" / "tether"), "--version"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert (version.returncode, version.stdout) == (0, f"tether {tether.__version__}\n")
    ran = subprocess.run(
        [str(venv / "bin" / "tether"), "run", "--", "true"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    failed = subprocess.run(
        [str(venv / "bin" / "tether"), "run", "--", "sh", "-c", "exit 7"],
        capture_output=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert failed.returncode == 7
    schema = subprocess.run(
        [str(venv / "bin" / "tether"), "schema", "report"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert schema.returncode == 0, schema.stderr
    assert schema.stdout == (ROOT / "docs" / "schemas" / "report.schema.json").read_text()
    used = subprocess.run(
        [str(python), "-c", _NATIVE], capture_output=True, text=True, env=env, timeout=60,
        check=True,
    )  # fmt: skip
    # Built here: the native spawn is used, the ctypes clone never.
    assert json.loads(used.stdout) == [_can_compile(), 0, 0 if _can_compile() else _cgroups()]


def test_a_build_that_cannot_compile_still_installs_and_runs(tmp_path: Path) -> None:
    # No C compiler (CC fails): the wheel has no extension, installs, and
    # tether spawns as without it: the ctypes clone3 where it can, else the
    # shim, never an error.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    wheel = _wheel(tmp_path, {**env, "CC": "/bin/false"})
    with zipfile.ZipFile(wheel) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".so")]
    python = _install(wheel, tmp_path / "venv")
    used = subprocess.run(
        [str(python), "-c", _NATIVE], capture_output=True, text=True, env=env, timeout=60,
        check=True,
    )  # fmt: skip
    native, returncode, ctypes_clones = json.loads(used.stdout)
    assert (native, returncode) == (False, 0)
    # As root with cgroups the leader was cloned by ctypes into its cgroup.
    assert ctypes_clones == _cgroups()


def test_backend_builds_sdist_and_wheel_without_deprecation_warnings(tmp_path: Path) -> None:
    """setuptools warns about outdated metadata (a license table, classifiers
    that duplicate the SPDX expression) only in the backend's own output,
    which pip hides: the backend is called directly."""
    tree = _source_tree(tmp_path / "tree")
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import sys; from setuptools import build_meta as b; "
        "print(b.build_sdist(sys.argv[1])); print(b.build_wheel(sys.argv[1]))"
    )
    built = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=tree, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    assert "deprecat" not in (built.stdout + built.stderr).lower(), built.stderr
    (sdist,) = out.glob("tether-*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    expected = {"LICENSE", "docs/json.md", "docs/schemas/run.schema.json", "contrib/README.md"}
    # The native spawn builds from the sdist too.
    expected |= {"setup.py", "src/tether/_platform/linux/_vspawn.c"}
    assert expected <= names, f"missing from the sdist: {sorted(expected - names)}"
