"""``tether config`` as a subprocess: output, --json keys, exit status, one-line errors.

HOME, XDG_CONFIG_HOME and TETHER_CONFIG point into tmp_path; the machine's own
/etc/tether/tether.toml would change the defaults, so its presence skips the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from helpers import tether_cmd
from tether.config import SETTINGS, SYSTEM_CONFIG_FILE

pytestmark = pytest.mark.skipif(
    os.path.exists(SYSTEM_CONFIG_FILE), reason=f"{SYSTEM_CONFIG_FILE} exists on this machine"
)


def tether_config(
    tmp_path: Path, *args: str, named: str | None = None, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_CONFIG", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    if user is not None:
        path = tmp_path / "xdg" / "tether" / "tether.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(user)
    if named is not None:
        path = tmp_path / "named.toml"
        path.write_text(named)
        env["TETHER_CONFIG"] = str(path)
    return subprocess.run(
        tether_cmd("config", *args),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tether: "), lines[0]
    return lines[0]


def test_prints_every_setting_with_its_source(tmp_path: Path) -> None:
    done = tether_config(
        tmp_path,
        user='[run]\ntimeout = "10m"\n',
        named='# ci runners\n[termination]\npolicy = "INT,2s,TERM,10s,KILL"\n',
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    user_file = tmp_path / "xdg" / "tether" / "tether.toml"
    named = tmp_path / "named.toml"
    lines = done.stdout.splitlines()
    assert f"# files read: {user_file}, {named} (TETHER_CONFIG)" in lines
    assert "# effective termination policy: INT,2s,TERM,10s,KILL,5s" in lines
    by_key = {}
    table = ""
    for line in lines:
        if line.startswith("["):
            table = line.strip("[]")
        elif " = " in line and not line.startswith("#"):
            name, _, rest = line.partition(" = ")
            by_key[f"{table}.{name}"] = rest
    assert set(by_key) == {s.key for s in SETTINGS}
    assert by_key["termination.policy"].endswith(f"# {named}:3 (TETHER_CONFIG)")
    assert by_key["run.timeout"].startswith('"10m"')
    assert by_key["run.timeout"].endswith(f"# {user_file}:2")
    assert by_key["run.trackers"].endswith("# default")


def test_output_is_a_config_file_that_reads_back_the_same(tmp_path: Path) -> None:
    first = tether_config(
        tmp_path, named='[prune]\nexclude_comm = ["^slurm", "s\\\\d+"]\nmin_uid = 500\n'
    )
    assert first.returncode == 0, first.stderr
    tomllib.loads(first.stdout)
    again = tether_config(tmp_path / "x", "--json", named=first.stdout)
    before = tether_config(tmp_path, "--json")
    assert again.returncode == 0, again.stderr
    values = {s["key"]: s["value"] for s in json.loads(again.stdout)["settings"]}
    assert values["prune.exclude_comm"] == ["^slurm", "s\\d+"]
    assert values["prune.min_uid"] == 500
    defaults = {s["key"]: s["value"] for s in json.loads(before.stdout)["settings"]}
    assert {
        k: v for k, v in values.items() if k not in ("prune.exclude_comm", "prune.min_uid")
    } == {k: v for k, v in defaults.items() if k not in ("prune.exclude_comm", "prune.min_uid")}


def test_json_has_stable_keys(tmp_path: Path) -> None:
    done = tether_config(tmp_path, "--json", named="[termination]\ntree_delay = 2\n")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"schema", "files", "settings", "effective_policy"}
    assert out["schema"] == 1
    assert [f["found"] for f in out["files"]] == [False, False, True]
    assert [s["key"] for s in out["settings"]] == [s.key for s in SETTINGS]
    for row in out["settings"]:
        assert set(row) == {"key", "value", "source", "kind", "path", "line", "note"}
    rows = {s["key"]: s for s in out["settings"]}
    assert rows["termination.tree_delay"]["value"] == 2.0
    assert rows["termination.tree_delay"]["line"] == 2
    assert rows["termination.tree_delay"]["kind"] == "file"
    assert rows["termination.policy"]["source"] == "default"
    assert rows["termination.leader_signal"]["value"] is None
    assert rows["run.timeout"]["value"] is None


def test_keys_print_values(tmp_path: Path) -> None:
    done = tether_config(tmp_path, "termination.policy", "run.timeout")
    assert (done.returncode, done.stdout) == (0, '"TERM,10s,KILL"\n"none"\n')
    assert "unknown setting 'run.nope'" in one_line_error(tether_config(tmp_path, "run.nope"))


@pytest.mark.parametrize(
    ("text", "where", "needle"),
    [
        ("[run]\n\ntrakers = 'auto'\n", 3, "unknown setting run.trakers"),
        ("[termination]\npolicy = 'TERM,1s,BOGUS'\n", 2, "unknown signal 'BOGUS'"),
        ("[termination]\nkill_tree = false\n", 2, "always terminates the whole tree"),
        ("[prune]\nmin_uid = 'a lot'\n", 2, "must be an integer"),
        ("\n\n@@@ not toml\n", 3, "not valid TOML"),
    ],
)
def test_malformed_config_is_a_one_line_error(
    tmp_path: Path, text: str, where: int, needle: str
) -> None:
    line = one_line_error(tether_config(tmp_path, named=text))
    assert line.startswith(f"tether: {tmp_path / 'named.toml'}:{where}: "), line
    assert needle in line


def test_error_in_the_user_file_names_it(tmp_path: Path) -> None:
    line = one_line_error(tether_config(tmp_path, "--json", user="[remote]\nfanout = -1\n"))
    assert line.startswith(f"tether: {tmp_path / 'xdg' / 'tether' / 'tether.toml'}:2: ")


def test_missing_tether_config(tmp_path: Path) -> None:
    done = tether_config(tmp_path, named="")
    assert done.returncode == 0
    (tmp_path / "named.toml").unlink()
    env = dict(os.environ, HOME=str(tmp_path), TETHER_CONFIG=str(tmp_path / "named.toml"))
    done = subprocess.run(
        tether_cmd("config"), capture_output=True, text=True, env=env, timeout=60, check=False
    )
    line = one_line_error(done)
    assert line == f"tether: TETHER_CONFIG: {tmp_path / 'named.toml'}: no such file"


def test_help_has_exit_status(tmp_path: Path) -> None:
    done = tether_config(tmp_path, "--help")
    assert done.returncode == 0
    assert "EXIT STATUS:" in done.stdout
    assert "TETHER_CONFIG" in done.stdout
    listing = subprocess.run(
        tether_cmd("--help"), capture_output=True, text=True, timeout=60, check=False
    )
    assert "config" in listing.stdout


# -- tether run and kill read the configuration ----------------------------------------


def _run_env(tmp_path: Path, text: str) -> dict[str, str]:
    config = tmp_path / "tether.toml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    env.update(HOME=str(tmp_path / "home"), TETHER_CONFIG=str(config))
    return env


def test_run_takes_policy_and_timeout_from_the_file(tmp_path: Path) -> None:
    env = _run_env(tmp_path, '[termination]\npolicy = "INT,1s,KILL"\n[run]\ntimeout = "200ms"\n')
    done = subprocess.run(
        tether_cmd("run", "-q", "--json", "--", "sleep", "30"),
        env=env, capture_output=True, check=False,
    )  # fmt: skip
    assert done.returncode == 124, done.stderr
    report = json.loads(done.stdout)
    assert report["policy"] == "INT,1s,KILL,5s"
    assert report["reason"] == "timeout"
    assert report["members"][0]["ended_by"] == "INT"


def test_flags_override_the_file(tmp_path: Path) -> None:
    env = _run_env(tmp_path, '[termination]\npolicy = "INT,1s,KILL"\ngrace = "3s"\n')
    done = subprocess.run(
        tether_cmd("run", "-q", "--timeout", "100ms", "-s", "HUP", "-k", "2s", "--json",
                   "--", "sleep", "30"),
        env=env, capture_output=True, check=False,
    )  # fmt: skip
    assert done.returncode == 124, done.stderr
    assert json.loads(done.stdout)["policy"] == "HUP,2s,KILL,5s"


def test_run_with_a_bad_file_starts_nothing(tmp_path: Path) -> None:
    env = _run_env(tmp_path, '[termination]\npolicy = "TERM,banana"\n')
    marker = tmp_path / "ran"
    done = subprocess.run(
        tether_cmd("run", "--", "touch", str(marker)), env=env, capture_output=True, check=False
    )
    err = done.stderr.decode()
    assert done.returncode == 125
    assert err.startswith(f"tether: {tmp_path / 'tether.toml'}:2: ")
    assert len(err.splitlines()) == 1
    assert not marker.exists()
