"""The README's first command, ``./demo``, on the distribution's python3.

A stock Debian/Ubuntu ``/usr/bin/python3`` refuses ``pip install`` outside a
venv (PEP 668, externally-managed-environment), and ships ensurepip in a
separate package. ./demo and ./run-tests share tools/venv.sh, which makes the
project venv (.venv) from the python3 first on PATH: these tests run ./demo in
a fresh copy of the working tree with /usr/bin first on PATH, as root and as
an unprivileged user, and check the message when ensurepip is missing.

./run-tests itself, on that interpreter: ``PATH=/usr/bin:$PATH ./run-tests``
(or ``PYTHON=/usr/bin/python3 ./run-tests``) in a fresh clone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import TEST_VAR, as_user, ensure_unprivileged_user, is_root

ROOT = Path(__file__).resolve().parent.parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def _distribution_python() -> str | None:
    """Why /usr/bin/python3 cannot be used here, or None if it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON}"
    probe = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    if (
        subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, check=False).returncode
        != 0
    ):
        return f"{SYSTEM_PYTHON} is older than 3.11 or has no venv/ensurepip"
    if shutil.which("git") is None:
        return "needs git"
    return None


needs_system_python = pytest.mark.skipif(
    _distribution_python() is not None, reason=str(_distribution_python())
)


def _fresh_tree(dest: Path) -> Path:
    """The working tree's files that git does not ignore, as a fresh clone
    would have them (with uncommitted edits: the tree under test)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
    return dest


def _check_demo(done: subprocess.CompletedProcess[str], tree: Path) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(
        r"^OK: \d+ processes found, every one ended, none survived\.$", done.stdout, re.M
    )
    # The venv was made from the distribution's interpreter; the system's
    # site-packages did not get tether.
    base = (tree / ".venv" / ".tether-base").read_text().split()
    assert base[0] == SYSTEM_PYTHON
    check = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import tether"], capture_output=True, cwd="/", check=False
    )
    assert check.returncode != 0


@needs_system_python
@pytest.mark.skipif(not is_root(), reason="needs root")
def test_demo_as_root_with_the_distribution_python(tmp_path: Path) -> None:
    tree = _fresh_tree(tmp_path / "tether")
    env = {**os.environ, "PATH": f"/usr/bin:{os.environ['PATH']}"}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHON", "TETHER_VENV"):
        env.pop(name, None)
    done = subprocess.run(
        ["./demo"], cwd=tree, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    _check_demo(done, tree)


@pytest.fixture
def user_home() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp_path is
    under a 0700 directory of root's)."""
    home = Path(tempfile.mkdtemp(prefix="tether-bootstrap-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _user_tree(home: Path) -> tuple[Path, list[str]]:
    """A fresh tree the unprivileged user owns, and env(1) arguments with a
    HOME of its own (the user has none) and /usr/bin first on PATH."""
    user = ensure_unprivileged_user()
    tree = _fresh_tree(home / "tether")
    for path in [home, *home.rglob("*")]:
        os.lchown(path, user.pw_uid, user.pw_gid)
    home.chmod(0o755)
    # PYTHONPATH: as_user points it at this checkout's src/; the copy's own is wanted.
    env = [
        f"HOME={home}",
        "PATH=/usr/bin:/bin",
        "PYTHONPATH=",
        f"{TEST_VAR}={os.environ.get(TEST_VAR, '')}",
    ]
    return tree, env


@needs_system_python
@pytest.mark.skipif(not is_root(), reason="needs root to create the unprivileged user")
def test_demo_as_a_user_with_the_distribution_python(user_home: Path) -> None:
    tree, env = _user_tree(user_home)
    user = ensure_unprivileged_user()
    done = subprocess.run(
        as_user(user, ["env", *env, "./demo"]), cwd=tree, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    _check_demo(done, tree)


@needs_system_python
@pytest.mark.skipif(not is_root(), reason="needs root to create the unprivileged user")
def test_missing_ensurepip_is_one_line_saying_what_to_install(user_home: Path) -> None:
    """Debian without python3.X-venv: ``import ensurepip`` fails (the module
    is in that package), and ``python3 -m venv`` would leave a venv without
    pip. A user cannot apt-get: tools/venv.sh says what to install."""
    tree, env = _user_tree(user_home)
    shim = user_home / "no-ensurepip"
    (shim / "ensurepip").mkdir(parents=True)
    (shim / "ensurepip" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'ensurepip\'", name="ensurepip")\n'
    )
    shim.chmod(0o755)
    user = ensure_unprivileged_user()
    done = subprocess.run(
        as_user(user, ["env", *env, f"PYTHONPATH={shim}", "./demo"]), cwd=tree,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    short = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "demo: python3 cannot make a virtual environment (no ensurepip module): install it "
        f"(sudo apt-get install python{short}-venv), or set PYTHON to another Python >= 3.11\n"
    )
    assert not (tree / ".venv").exists()
