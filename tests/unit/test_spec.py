"""JobSpec: built once, checked once, and the same on both ends of the wire."""

from __future__ import annotations

import base64
import binascii
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.errors import PolicyError, UsageError
from tether.policy import Policy
from tether.spec import JobSpec
from tether.supervise import exit_status, forwarded_signals
from tether.tracking.base import TRACKER_NAMES


def test_defaults() -> None:
    spec = JobSpec(argv=("true",))
    assert spec.policy == Policy.default()
    assert spec.trackers is None  # auto: what can be used here, said in the report
    assert spec.trackers_text == "auto"
    assert JobSpec(argv=("true",), trackers="auto").trackers is None  # type: ignore[arg-type]
    assert JobSpec(argv=("t",), trackers="walk,session").trackers_text == "session,walk"  # type: ignore[arg-type]
    assert (spec.env, spec.cwd, spec.timeout, spec.tag_gid) == (None, None, None, None)
    assert spec.leftovers == "terminate" and not spec.restartable


def test_a_string_command_is_refused_with_a_hint() -> None:
    with pytest.raises(UsageError, match=r"not a string.*shlex.split"):
        JobSpec(argv="make test")  # type: ignore[arg-type]


def test_an_argument_exec_cannot_take_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot be encoded"):
        JobSpec(argv=("echo", "\ud800"))
    with pytest.raises(UsageError, match="not int"):
        JobSpec(argv=("echo", 5))  # type: ignore[arg-type]


def test_paths_and_bytes_are_arguments() -> None:
    spec = JobSpec(argv=(Path("/bin/echo"), b"\xff", "x"))  # type: ignore[arg-type]
    assert spec.argv == ("/bin/echo", os.fsdecode(b"\xff"), "x")


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"argv": ()}, "no command"),
        ({"timeout": 0}, "positive"),
        ({"timeout": float("nan")}, "positive"),
        ({"tag_gid": -1}, "not a group id"),
        ({"leftovers": "keep"}, "leftovers"),
        ({"trackers": "cgroup,bogus"}, "unknown tracker bogus"),
    ],
)
def test_bad_fields_are_one_line_errors(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(UsageError, match=error):
        JobSpec(**{"argv": ("true",), **changes})


def test_policy_text_is_parsed_once_into_a_policy() -> None:
    spec = JobSpec(argv=("true",), policy="INT,2s,KILL")  # type: ignore[arg-type]
    assert isinstance(spec.policy, Policy) and str(spec.policy) == "INT,2s,KILL,5s"
    with pytest.raises(PolicyError):
        JobSpec(argv=("true",), policy="TERM,forever")  # type: ignore[arg-type]


def test_spec_is_frozen_and_evolve_checks_again() -> None:
    spec = JobSpec(argv=("true",))
    with pytest.raises(AttributeError):
        spec.timeout = 3  # type: ignore[misc]
    assert spec.evolve(timeout=3).timeout == 3.0
    with pytest.raises(UsageError):
        spec.evolve(timeout=-1)


_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12)
_bytes = st.binary(max_size=12).filter(lambda b: b"\0" not in b)


@given(
    argv=st.lists(st.one_of(_text, _bytes), min_size=1, max_size=5),
    env=st.none() | st.dictionaries(_text.filter(lambda k: k and "=" not in k), _text),
    timeout=st.none() | st.floats(min_value=0.001, max_value=1e6),
    trackers=st.sets(st.sampled_from(TRACKER_NAMES), min_size=1),
    restartable=st.booleans(),
    tag_gid=st.none() | st.integers(0, 2**31),
    leftovers=st.sampled_from(["terminate", "wait"]),
)
def test_wire_round_trip(**fields: Any) -> None:
    spec = JobSpec(policy=Policy.parse("INT,2s,TERM,1500ms,KILL"), **fields)
    back = JobSpec.from_wire(spec.to_wire())
    assert back == spec
    assert [os.fsencode(a) for a in back.argv] == [os.fsencode(a) for a in spec.argv]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda w: "not a dict",
        lambda w: {**w, "argv": []},
        lambda w: {**w, "argv": ["!!not base64"]},
        lambda w: {**w, "argv": [123]},
        lambda w: {**w, "env": ["A=1"]},
        lambda w: {**w, "timeout": "10"},
        lambda w: {**w, "timeout": True},
        lambda w: {**w, "trackers": ["cgroup"]},
        lambda w: {**w, "restartable": "yes"},
        lambda w: {**w, "tag_gid": -5},
        lambda w: {**w, "leftovers": "keep"},
        lambda w: {**w, "policy": {"steps": 5}},
    ],
)
def test_malformed_wire_is_a_usage_error(mangle: Any) -> None:
    wire = JobSpec(argv=("true",)).to_wire()
    with pytest.raises(UsageError):
        JobSpec.from_wire(mangle(wire))


def test_forwarded_signals_restores_handlers_and_wakeup_fd_on_error() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    wakeup_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_before)
    with pytest.raises(RuntimeError), forwarded_signals(wake_on_child=True) as inbox:
        os.kill(os.getpid(), signal.SIGTERM)
        assert inbox.received == [signal.SIGTERM]
        raise RuntimeError("boom")
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.set_wakeup_fd(wakeup_before) == wakeup_before


@pytest.mark.parametrize(
    ("returncode", "timed_out", "complete", "status"),
    [(0, False, True, 0), (3, False, True, 3), (-9, False, True, 137), (0, True, True, 124),
     (0, True, False, 125), (None, False, True, 125)],
)  # fmt: skip
def test_exit_status_follows_timeout(
    returncode: int | None, timed_out: bool, complete: bool, status: int
) -> None:
    assert exit_status(returncode, timed_out, complete=complete) == status


def test_the_environment_copy_is_dict_of_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Job copies os.environ from its bytes; it must read as dict(os.environ),
    undecodable bytes (surrogateescape) included."""
    from tether.job import _environ_copy

    monkeypatch.setenv("TETHER_TEST_NON_ASCII", "é\udcff")
    assert _environ_copy() == dict(os.environ)


@given(
    st.lists(
        st.sampled_from(["", "/usr/bin", "/bin", "/nonexistent", "/usr/bin", "/tmp", "."]),
        max_size=6,
    ),
    st.sampled_from(["true", "sh", "ls", "no-such-command-here", "tmp"]),
)
def test_which_is_shutils(dirs: list[str], cmd: str) -> None:
    """job._which stands in for shutil.which (not imported on the run path)."""
    import shutil

    from tether.job import _which

    path = os.pathsep.join(dirs)
    assert _which(cmd, path) == shutil.which(cmd, path=path)


@given(
    st.text(alphabet="AYQz+/=\n é", max_size=12)
    | st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode())
)
def test_a_wire_argument_is_read_as_b64decode_validate_reads_it_or_refused(text: str) -> None:
    """binascii in strict mode, not base64: never a byte string that
    b64decode(validate=True) would not give, and every b64encode is read."""
    from tether import spec as spec_module

    try:
        expected: bytes | None = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        expected = None
    try:
        got: bytes | None = spec_module._unb64(text, "argv")
    except UsageError:
        got = None
    if got is not None:
        assert got == expected
    if text == base64.b64encode(expected or b"").decode():
        assert got == expected
