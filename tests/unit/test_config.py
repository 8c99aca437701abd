"""Configuration files: precedence, strict validation with FILE:LINE, sources, round trips.

Every test points the loader at files under tmp_path (system file, HOME,
XDG_CONFIG_HOME, TETHER_CONFIG): the real /etc and ~ are never read.
"""

from __future__ import annotations

import pickle
import signal
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.config import (
    SETTINGS,
    ConfigError,
    EffectiveConfig,
    Flag,
    config_files,
    key_lines,
    load_config,
)
from tether.errors import TetherError
from tether.policy import Policy


class Files:
    """A sandbox: system file, $HOME, and an optional TETHER_CONFIG, all under tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.system = root / "etc" / "tether.toml"
        self.home = root / "home"
        self.user = self.home / ".config" / "tether" / "tether.toml"
        self.env: dict[str, str] = {"HOME": str(self.home)}

    def write(self, path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def named(self, text: str, name: str = "named.toml") -> Path:
        path = self.write(self.root / name, text)
        self.env["TETHER_CONFIG"] = str(path)
        return path

    def load(self) -> EffectiveConfig:
        return load_config(self.env, system_file=str(self.system))


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def error_of(files: Files) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        files.load()
    return info.value


# -- defaults and precedence ---------------------------------------------------------


def test_no_files_gives_defaults(files: Files) -> None:
    config = files.load()
    for s in config.items():
        assert s.source.kind == "default", s
    assert config["termination.policy"] == Policy.parse("TERM,10s,KILL")
    assert config.setting("termination.policy").text == '"TERM,10s,KILL"'
    assert config["run.timeout"] is None
    assert config["run.trackers"] == "auto"
    assert config["prune.min_uid"] == 1000
    assert config["remote.transport"] == "openssh"
    assert config.policy_for_run() == Policy.default()
    assert [f.found for f in config.files] == [False, False]
    assert [s.key for s in config.items()] == [s.key for s in SETTINGS]


def test_precedence_default_system_user_env_flag(files: Files) -> None:
    files.write(files.system, '[termination]\npolicy = "TERM,1s,KILL"\n[run]\ntimeout = "1m"\n')
    files.write(files.user, '[termination]\npolicy = "TERM,2s,KILL"\n')
    named = files.named('\n\n[termination]\npolicy = "TERM,3s,KILL"\n')

    config = files.load()
    policy = config.setting("termination.policy")
    assert policy.value == Policy.parse("TERM,3s,KILL")
    assert policy.literal == "TERM,3s,KILL"
    assert (policy.source.path, policy.source.line, policy.source.via_env) == (str(named), 4, True)
    assert str(policy.source) == f"{named}:4 (TETHER_CONFIG)"
    # Keys the later files do not set keep the earlier file's value and source.
    timeout = config.setting("run.timeout")
    assert timeout.value == 60.0
    assert (timeout.source.path, timeout.source.line) == (str(files.system), 4)
    assert config.setting("run.trackers").source.kind == "default"

    flagged = config.with_override("termination.policy", "TERM,4s,KILL", source="--policy")
    assert flagged.setting("termination.policy").literal == "TERM,4s,KILL"
    assert str(flagged.setting("termination.policy").source) == "--policy"
    assert config.setting("termination.policy").literal == "TERM,3s,KILL"  # immutable

    del files.env["TETHER_CONFIG"]
    assert files.load().setting("termination.policy").literal == "TERM,2s,KILL"
    files.user.unlink()
    assert files.load().setting("termination.policy").literal == "TERM,1s,KILL"


def test_xdg_config_home_is_honoured(files: Files, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    files.write(files.user, '[run]\ntrackers = "session"\n')
    files.write(xdg / "tether" / "tether.toml", '[run]\ntrackers = "cookie,walk"\n')
    files.env["XDG_CONFIG_HOME"] = str(xdg)
    assert files.load()["run.trackers"] == "cookie,walk"
    # A relative XDG_CONFIG_HOME is invalid per the XDG spec: ~/.config is used.
    files.env["XDG_CONFIG_HOME"] = "relative/dir"
    assert files.load()["run.trackers"] == "session"


def test_candidate_files_in_order(files: Files) -> None:
    files.env["TETHER_CONFIG"] = "/x/y.toml"
    assert config_files(files.env, system_file="/s.toml") == [
        ("/s.toml", False),
        (str(files.user), False),
        ("/x/y.toml", True),
    ]
    files.env["TETHER_CONFIG"] = ""  # set but empty: as if unset
    assert config_files(files.env, system_file=None) == [(str(files.user), False)]


def test_missing_tether_config_is_an_error(files: Files, tmp_path: Path) -> None:
    files.env["TETHER_CONFIG"] = str(tmp_path / "missing.toml")
    err = error_of(files)
    assert str(err) == f"TETHER_CONFIG: {tmp_path / 'missing.toml'}: no such file"


def test_empty_file_is_all_defaults(files: Files) -> None:
    files.named("")
    config = files.load()
    assert all(s.source.kind == "default" for s in config.items())
    assert [f.found for f in config.files] == [False, False, True]


# -- strict validation: FILE:LINE ---------------------------------------------------

LAYOUT = """\
# site settings
[termination]
policy = "TERM,10s,KILL"   # the default, written out

[run]
# jobs on this node
{line}
[prune]
min_uid = 1000
"""


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("trakers = 'auto'", "unknown setting run.trakers (did you mean trackers?)"),
        ("timeout = '5 parsecs'", "run.timeout: bad duration"),
        ("timeout = -3", "non-negative"),
        ("timeout = true", "run.timeout: must be a duration"),
        ("trackers = 'cgroup,bogus'", "unknown tracker bogus"),
        ("wait_leftovers = 'yes'", "must be true or false, not a string"),
        ("policy = 'TERM,10s,KILL'", "run.policy belongs in [termination]"),
    ],
)
def test_bad_setting_reports_file_and_line(files: Files, line: str, needle: str) -> None:
    path = files.named(LAYOUT.format(line=line))
    err = error_of(files)
    assert err.where == f"{path}:7", err
    assert needle in err.message, err


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ('[termination]\npolicy = "TERM,1s,BOGUS"\n', 2, "unknown signal 'BOGUS'"),
        ('[termination]\npolicy = ""\n', 2, "empty policy"),
        ("[termination]\nleader_signal = 99\n", 2, "unknown signal"),
        ("[termination]\ntree_delay = 'soon'\n", 2, "bad duration"),
        ("[termination]\nkill_script_mode = 'after'\n", 2, "'precede' or 'replace'"),
        ('[termination]\nkill_script = "echo \'unbalanced"\n', 2, "cannot split"),
        ("[termination]\n\n  kill_tree = false\n", 3, "tether always terminates the whole tree"),
        ("[prune]\nmin_uid = 0\n", 2, "root is never pruned"),
        ("[prune]\nmin_uid = 1.5\n", 2, "must be an integer"),
        ("[prune]\nexclude_comm = ['ok', '(unclosed']\n", 2, "item 2 ('(unclosed') is not a valid"),
        ("[prune]\nexclude_comm = 'sshd'\n", 2, "must be an array"),
        ("[prune]\nexclude_users = ['bad user']\n", 2, "not a user name"),
        ("[remote]\nfanout = 0\n", 2, "between 1 and"),
        ("[remote]\ntransport = 'telnet'\n", 2, "must be 'openssh'"),
        ("[remote]\nssh_options = ['-v']\n", 2, 'passed as "-o ITEM"'),
        ("[remote]\nssh_options = [1]\n", 2, "item 1 must be"),
        ("[runn]\ntimeout = 1\n", 1, "unknown table [runn] (did you mean run?)"),
        ("\npolicy = 'KILL'\n", 2, "policy must be in a table: write it under [termination]"),
        ("run = 3\n", 1, "run must be a table"),
        ("termination.polcy = 'KILL'\n", 1, "unknown setting termination.polcy"),
        ('[termination]\npolicy = "KILL"\ngrace = "3s"\n', 3, "use final_wait"),
    ],
)
def test_bad_values(files: Files, text: str, line: int, needle: str) -> None:
    path = files.named(text)
    err = error_of(files)
    assert err.where == f"{path}:{line}", err
    assert needle in err.message, err
    assert str(err) == f"{path}:{line}: {err.message}"
    assert isinstance(err, TetherError)


def test_errors_in_a_lower_file_are_not_hidden_by_a_higher_one(files: Files) -> None:
    files.write(files.system, "[run]\ntimeout = 'forever'\n")
    files.named("[run]\ntimeout = '1m'\n")
    assert error_of(files).where == f"{files.system}:2"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[termination\npolicy = 1\n", 1),
        ("\n\nthis is not toml at all\n", 3),
        ('[run]\ntimeout = "1m"\ntimeout = "2m"\n', 3),
        ("[run]\ntimeout = '''open\n", 2),
    ],
    ids=["unclosed-header", "garbage", "duplicate-key", "unterminated-string"],
)
def test_not_toml_is_one_error_with_a_line(files: Files, text: str, line: int) -> None:
    path = files.named(text)
    err = error_of(files)
    assert err.where == f"{path}:{line}", err
    assert err.message.startswith("not valid TOML: "), err
    assert "\n" not in str(err)


def test_binary_garbage(files: Files, tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"[run]\n\xff\xfe\x00garbage")
    files.env["TETHER_CONFIG"] = str(path)
    assert str(error_of(files)) == f"{path}:2: not UTF-8 text"


def test_directory_and_unreadable(files: Files, tmp_path: Path) -> None:
    files.env["TETHER_CONFIG"] = str(tmp_path)
    assert "is a directory" in str(error_of(files))


def test_config_error_pickles() -> None:
    err = ConfigError("/etc/tether/tether.toml:3", "bad")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.where, back.message, str(back)) == (
        ConfigError,
        err.where,
        err.message,
        str(err),
    )


# -- values ------------------------------------------------------------------------


def test_value_forms(files: Files) -> None:
    files.named(
        """
[termination]
policy = " INT,2s,TERM,10s,KILL "
leader_signal = 15
tree_delay = 1.5
final_wait = "1min 30s"
kill_script = "/usr/local/bin/stop-job --hard 'two words'"
kill_script_timeout = 3
[run]
timeout = 0
trackers = ["cookie", "session", "cookie"]
[prune]
exclude_users = ["slurm", "1001"]
[remote]
ssh_options = ["ConnectTimeout=10", "BatchMode yes"]
"""
    )
    config = files.load()
    assert config.setting("termination.policy").text == '"INT,2s,TERM,10s,KILL"'
    assert config["termination.policy"] == Policy.parse("INT,2s,TERM,10s,KILL")
    leader_signal = config["termination.leader_signal"]
    assert leader_signal == signal.SIGTERM and leader_signal.name == "SIGTERM"
    assert config["termination.tree_delay"] == 1.5
    assert config["termination.final_wait"] == 90.0
    assert config["termination.kill_script"] == (
        "/usr/local/bin/stop-job",
        "--hard",
        "two words",
    )
    assert config["run.timeout"] is None  # 0 disables, as in timeout(1)
    assert config["run.trackers"] == "cookie,session"
    assert config["prune.exclude_users"] == ("slurm", "1001")
    policy = config.policy_for_run()
    assert str(policy) == "INT,2s,TERM,10s,KILL,90s"
    assert policy.leader_signal == signal.SIGTERM
    assert policy.tree_delay == 1.5
    assert policy.kill_script is not None
    assert policy.kill_script.timeout == 3.0
    assert policy.kill_script.mode == "precede"


def test_tree_signal_and_grace_map_onto_the_first_step(files: Files) -> None:
    files.named('[termination]\ntree_signal = "INT"\ngrace = "3s"\n')
    assert str(files.load().policy_for_run()) == "INT,3s,KILL,5s"
    files.named('[termination]\npolicy = "HUP,1s,TERM,10s,KILL,20s"\ntree_signal = "QUIT"\n')
    assert str(files.load().policy_for_run()) == "QUIT,1s,TERM,10s,KILL,20s"


def test_a_later_policy_replaces_earlier_modifiers(files: Files) -> None:
    files.write(files.system, '[termination]\ngrace = "30s"\ntree_signal = "INT"\n')
    config = files.load()
    assert str(config.policy_for_run()) == "INT,30s,KILL,5s"
    # --policy is the whole policy: /etc's grace and tree_signal do not bend it.
    flagged = config.with_override("termination.policy", "KILL", source="--policy")
    assert str(flagged.policy_for_run()) == "KILL,5s"
    grace = flagged.setting("termination.grace")
    assert grace.value is None
    assert grace.note is not None
    assert f"{files.system}:2" in grace.note
    # ...but a flag that modifies the policy applies to whatever policy is in force.
    k = flagged.with_override("termination.tree_signal", "TERM", source="-s")
    assert str(k.policy_for_run()) == "TERM,5s"


def test_with_override(files: Files) -> None:
    config = files.load()
    assert config.with_override("run.timeout", None) is config
    assert config.with_override("prune.min_uid", "500")["prune.min_uid"] == 500
    assert config.with_override("run.wait_leftovers", True)["run.wait_leftovers"] is True
    assert config.with_override("prune.exclude_comm", ("^a$", "b"))["prune.exclude_comm"] == (
        "^a$",
        "b",
    )
    assert str(config.with_override("run.timeout", "10m").setting("run.timeout").source) == (
        "--timeout"
    )
    with pytest.raises(ConfigError) as info:
        config.with_override("termination.policy", "TERM,1s,NOPE", source="--policy")
    assert str(info.value).startswith("--policy: unknown signal 'NOPE'")
    with pytest.raises(ConfigError) as info:
        config.with_override("prune.min_uid", "lots")
    assert str(info.value) == "--min-uid: must be an integer, not a string"


def test_with_flags_is_one_merge_for_every_command(files: Files) -> None:
    files.named(
        '[termination]\npolicy = "INT,2s,TERM,10s,KILL"\n'
        '[prune]\nexclude_comm = ["^a$"]\nexclude_users = ["slurm"]\n'
        '[remote]\nssh_options = ["ConnectTimeout=10"]\n'
    )
    config = files.load()
    assert config.with_flags({"run.timeout": None, "prune.exclude_comm": ()}) is config
    flagged = config.with_flags(
        {
            "termination.policy": Flag(Policy.from_timeout_flags(signal.SIGINT, 3.0), "-s/-k"),
            "termination.tree_delay": "1s",
            "run.timeout": "10m",
            "run.wait_leftovers": True,
            "prune.exclude_comm": ("^b$",),
            "prune.exclude_users": Flag(("root",), "--exclude-user"),
            "remote.ssh_options": ("ConnectTimeout=5",),
        }
    )
    policy = flagged.setting("termination.policy")
    assert (str(policy.source), policy.literal) == ("-s/-k", "INT,3s,KILL,5s")
    assert str(flagged.policy_for_run()) == "INT,3s,KILL,5s"
    assert flagged.policy_for_run().tree_delay == 1.0
    assert flagged["run.timeout"] == 600.0
    assert flagged["run.wait_leftovers"] is True
    # Lists add to the files': after them, or (ssh: first value wins) before them.
    assert flagged["prune.exclude_comm"] == ("^a$", "^b$")
    assert flagged["prune.exclude_users"] == ("slurm", "root")
    assert str(flagged.setting("prune.exclude_users").source) == "--exclude-user"
    assert flagged["remote.ssh_options"] == ("ConnectTimeout=5", "ConnectTimeout=10")
    # The files' configuration is untouched.
    assert config["run.timeout"] is None
    with pytest.raises(ConfigError) as info:
        config.with_flags({"prune.policy": Flag("TERM,soon,KILL", "--policy")})
    assert str(info.value).startswith("--policy: unknown signal 'soon'")


def test_policies_are_parsed_once_per_source(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    files.named('[termination]\npolicy = "INT,2s,KILL"\n')
    calls: list[str] = []
    parse = Policy.parse.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Policy], text: str, **options: object) -> Policy:
        calls.append(text)
        return parse(cls, text, **options)  # type: ignore[no-any-return]

    monkeypatch.setattr(Policy, "parse", classmethod(counting))
    config = files.load().with_flags({"termination.tree_delay": "1s", "run.timeout": "5s"})
    for _ in range(3):
        config.policy_for_run()
        config.policy_for_prune()
    assert calls == ["INT,2s,KILL"]


def test_to_dict_has_stable_keys(files: Files) -> None:
    path = files.named("[run]\ntimeout = '90s'\n")
    out = files.load().to_dict()
    assert set(out) == {"schema", "files", "settings", "effective_policy"}
    assert out["schema"] == 1
    assert out["effective_policy"] == "TERM,10s,KILL,5s"
    row = {s["key"]: s for s in out["settings"]}["run.timeout"]
    assert row == {
        "key": "run.timeout",
        "value": 90.0,
        "source": f"{path}:2 (TETHER_CONFIG)",
        "kind": "file",
        "path": str(path),
        "line": 2,
        "note": None,
    }


def test_rendered_config_reads_back_the_same(files: Files, tmp_path: Path) -> None:
    files.named(
        """
[termination]
policy = "INT,2s,TERM,10s,KILL"
leader_signal = "HUP"
grace = "250ms"
kill_script = ["/bin/echo", "a \\"quoted\\" word"]
[prune]
exclude_comm = ['^slurm\\w+$', "sshd"]
min_age = "1h"
[remote]
ssh_options = ["ConnectTimeout=10"]
transport = "openssh"
"""
    )
    first = files.load()
    text = first.render_toml()
    tomllib.loads(text)  # valid TOML
    again = Files(tmp_path / "again")
    again.named(text)
    second = again.load()
    assert [(s.key, s.value) for s in second.items()] == [(s.key, s.value) for s in first.items()]


# -- properties ----------------------------------------------------------------------

_durations = st.one_of(
    st.integers(0, 10**6).map(float),
    st.integers(1, 10**6).map(lambda ms: ms / 1000),
)
_signals = st.sampled_from([signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL])


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tree_delay=_durations,
    timeout=_durations,
    leader=st.one_of(st.none(), _signals),
    min_uid=st.integers(1, 2**32 - 2),
    comm=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), max_size=3),
)
def test_render_round_trips(
    tmp_path_factory: pytest.TempPathFactory,
    tree_delay: float,
    timeout: float,
    leader: signal.Signals | None,
    min_uid: int,
    comm: list[str],
) -> None:
    import re

    for pattern in comm:
        try:
            re.compile(pattern)
        except re.error:
            return
    config = (
        EffectiveConfig.defaults()
        .with_override("termination.tree_delay", tree_delay)
        .with_override("run.timeout", timeout)
        .with_override("termination.leader_signal", leader)
        .with_override("prune.min_uid", min_uid)
        .with_override("prune.exclude_comm", comm)
    )
    box = Files(tmp_path_factory.mktemp("rt"))
    box.named(config.render_toml())
    back = box.load()
    assert [(s.key, s.value) for s in back.items()] == [(s.key, s.value) for s in config.items()]


@settings(max_examples=60)
@given(
    before=st.lists(st.sampled_from(["", "# note", "[run]", "timeout = 1", "  "]), max_size=6),
    dotted=st.booleans(),
)
def test_key_lines_point_at_the_key(before: list[str], dotted: bool) -> None:
    if dotted:  # a dotted key belongs to the top level: before any header
        lines, line = ["# floors", 'prune . "min_uid" = 1000', *before], 2
    else:
        lines = [*before, "[prune]", "# floors", "min_uid = 1000"]
        line = len(lines)
    assert key_lines("\n".join(lines) + "\n")[("prune", "min_uid")] == line
