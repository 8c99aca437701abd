"""Issue 17, item 6: another user pre-creating a predictable /tmp name stops no one.

The victim is a uid with no runtime directory (no XDG_RUNTIME_DIR), so its
journal and its remote cache fall back to /tmp; the attacker plants the
predictable names first, as every kind of object.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from helpers import TEST_VAR, ensure_unprivileged_user, is_root, user_python
from tether.remote.bootstrap import STAGE1

pytestmark = pytest.mark.skipif(not is_root(), reason="switching to another uid needs root")

VICTIM_UID = 40000 + os.getpid() % 20000


@pytest.fixture
def python() -> list[str]:
    py = user_python(ensure_unprivileged_user())
    if py is None:
        pytest.skip("no Python interpreter other users can run with tether importable")
    return py


@pytest.fixture
def planted() -> Iterator[None]:
    names = [f"/tmp/tether-{VICTIM_UID}", f"/tmp/tether-remote-{VICTIM_UID}"]
    assert not any(os.path.lexists(n) for n in names)
    yield
    for pattern in (f"/tmp/tether-{VICTIM_UID}*", f"/tmp/tether-remote-{VICTIM_UID}*"):
        for path in glob.glob(pattern):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)


def _plant(path: str, kind: str) -> None:
    if kind == "dir":
        os.mkdir(path, 0o777)  # a directory the attacker owns
    elif kind == "symlink":
        os.symlink("/etc", path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "w") as f:
            f.write("x")


def _as_victim(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = [f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}", f"{TEST_VAR}={os.environ[TEST_VAR]}"]
    cmd = [
        "setpriv",
        f"--reuid={VICTIM_UID}",
        f"--regid={VICTIM_UID}",
        "--clear-groups",
        "--reset-env",
        "env",
        *env,
        *argv,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("kind", ["dir", "symlink", "fifo", "file"])
def test_a_planted_journal_dir_does_not_stop_the_victims_jobs(
    python: list[str], planted: None, kind: str
) -> None:
    _plant(f"/tmp/tether-{VICTIM_UID}", kind)
    done = _as_victim([*python, "-m", "tether.cli", "run", "-q", "--", "true"])
    assert done.returncode == 0, done.stderr
    ps = _as_victim([*python, "-m", "tether.cli", "ps"])
    assert ps.returncode == 0, ps.stderr
    (journal,) = glob.glob(f"/tmp/tether-{VICTIM_UID}.*")
    st = os.lstat(journal)
    assert st.st_uid == VICTIM_UID and st.st_mode & 0o777 == 0o700


@pytest.mark.parametrize("kind", ["dir", "symlink"])
def test_a_planted_remote_cache_dir_is_skipped(planted: None, kind: str) -> None:
    _plant(f"/tmp/tether-remote-{VICTIM_UID}", kind)
    code = STAGE1.split("def _sha256")[0] + "\nprint(_cache_dir())\n"
    done = _as_victim(["python3", "-c", code])
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip()
    assert path.startswith(f"/tmp/tether-remote-{VICTIM_UID}.")
    st = os.lstat(path)
    assert st.st_uid == VICTIM_UID and st.st_mode & 0o777 == 0o700
    # Asked again, the victim finds the same private directory.
    assert _as_victim(["python3", "-c", code]).stdout.strip() == path
