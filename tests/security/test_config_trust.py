"""Issue 17, items 5 and 9: root reads only root's configuration; config input is bounded."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ensure_unprivileged_user, is_root, tether_cmd
from tether.config import ConfigError, load_config

needs_root = pytest.mark.skipif(not is_root(), reason="the ownership rules apply to root")


@pytest.fixture
def user_home() -> Iterator[tuple[pwd.struct_passwd, Path]]:
    """A home directory owned by the unprivileged user, as sudo -E would leave HOME."""
    user = ensure_unprivileged_user()
    home = Path(tempfile.mkdtemp(prefix="tether-home-"))
    try:
        yield user, home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _write_user_config(user: pwd.struct_passwd, home: Path, text: str) -> Path:
    cfg = home / ".config" / "tether" / "tether.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(text)
    for p in (home, home / ".config", cfg.parent, cfg):
        os.chown(p, user.pw_uid, user.pw_gid)
    return cfg


@needs_root
def test_root_never_runs_a_users_kill_script(
    user_home: tuple[pwd.struct_passwd, Path], tmp_path: Path
) -> None:
    user, home = user_home
    proof = tmp_path / "ran-as-root"
    cfg = _write_user_config(
        user,
        home,
        f'[termination]\nkill_script = ["/bin/sh", "-c", "id -u > {proof}"]\n'
        'kill_script_mode = "precede"\n',
    )
    env = {**os.environ, "HOME": str(home)}
    env.pop("XDG_CONFIG_HOME", None)
    done = subprocess.run(
        tether_cmd("run", "-q", "--timeout", "100ms", "--", "sleep", "5"),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 124, done.stderr
    assert not proof.exists(), "root ran a user's kill_script"
    assert f"skipping configuration file {cfg}" in done.stderr
    assert f"owned by uid {user.pw_uid}" in done.stderr


@needs_root
def test_root_skips_a_root_file_in_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    cfg = shared / "tether.toml"
    cfg.write_text('[termination]\npolicy = "KILL"\n')
    config = load_config({"XDG_CONFIG_HOME": str(tmp_path), "HOME": "/nonexistent"},
                         system_file=str(cfg))  # fmt: skip
    assert str(config["termination.policy"]) != "KILL,5s"
    with pytest.raises(ConfigError, match=r"refused as root.*writable by group or others"):
        load_config({"TETHER_CONFIG": str(cfg)}, system_file=None)


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("[run]\n\nx = " + "[" * 5000 + "]" * 5000 + "\n", 3, "nested deeper"),
        ("[run]\ntimeout = " + "9" * 5000 + "\n", 2, "number too large"),
        ('[run]\ntimeout = "30d"\n', 2, "at most"),
    ],
)
def test_hostile_toml_is_a_file_line_error(tmp_path: Path, text: str, line: int, what: str) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=what) as info:
        load_config({"TETHER_CONFIG": str(cfg)}, system_file=None)
    assert info.value.where == f"{cfg}:{line}"


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_config_must_be_a_small_regular_file(tmp_path: Path, kind: str) -> None:
    cfg = tmp_path / "t.toml"
    if kind == "fifo":
        os.mkfifo(cfg)  # a reader would hang until a writer came
    elif kind == "device":
        cfg = Path("/dev/zero")
    else:
        cfg.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"regular file|larger than"):
        load_config({"TETHER_CONFIG": str(cfg)}, system_file=None)


def test_a_duration_past_the_maximum_is_refused_before_the_job_starts(tmp_path: Path) -> None:
    proof = tmp_path / "started"
    done = subprocess.run(
        tether_cmd("run", "--timeout", "25d", "--", "touch", str(proof)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 125 and not proof.exists()
    assert done.stderr.count("\n") == 1 and "at most 24d" in done.stderr


def test_a_long_library_timeout_waits_in_chunks() -> None:
    import tether

    # 30 days is past one poll(2); the wait must loop, not overflow.
    done = tether.run(["true"], timeout=30 * 86400.0)
    assert done.returncode == 0 and not done.timed_out
