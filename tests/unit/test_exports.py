"""The public surface: ``tether.__all__``, docstrings, and how errors look and travel."""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import inspect
import pickle
import subprocess
import traceback

import pytest

import tether

PUBLIC = [
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "CompletedJob",
    "JournalError",
    "Job",
    "JobFailedError",
    "JobSpec",
    "JobTimeoutError",
    "KillScript",
    "MemberRecord",
    "NoSuchProcessError",
    "Policy",
    "PolicyError",
    "Report",
    "Step",
    "StepRecord",
    "Survivor",
    "TetherError",
    "TrackerError",
    "TrackerStatus",
    "UnsafeTargetError",
    "UsageError",
    "__version__",
    "kill_gid",
    "kill_tree",
    "parse_duration",
    "parse_signal",
    "run",
    "start",
]

ERRORS = [
    "CommandNotExecutableError",
    "CommandNotFoundError",
    "JobFailedError",
    "JobTimeoutError",
    "NoSuchProcessError",
    "PolicyError",
    "TetherError",
    "TrackerError",
    "UnsafeTargetError",
    "UsageError",
]


def test_all_is_pinned() -> None:
    assert sorted(tether.__all__) == sorted(PUBLIC)
    assert len(set(tether.__all__)) == len(tether.__all__)


def test_star_import_gives_exactly_all() -> None:
    ns: dict[str, object] = {}
    exec("from tether import *", ns)
    assert {k for k in ns if k != "__builtins__"} == set(PUBLIC)


@pytest.mark.parametrize("name", [n for n in PUBLIC if n != "__version__"])
def test_public_name_is_importable_and_documented(name: str) -> None:
    module = importlib.import_module("tether")
    obj = getattr(module, name)
    doc = inspect.getdoc(obj)
    assert doc, f"tether.{name} has no docstring"
    # A dataclass without a docstring gets its signature as __doc__.
    assert obj.__doc__ is not None
    assert not obj.__doc__.startswith(f"{name}("), f"tether.{name} has no real docstring"


def test_version() -> None:
    assert isinstance(tether.__version__, str)
    assert tether.__version__ == importlib.metadata.version("tether")


@pytest.mark.parametrize("name", ERRORS)
def test_errors_show_as_tether_dot_name(name: str) -> None:
    cls = getattr(tether, name)
    assert cls.__module__ == "tether"
    assert f"{cls.__module__}.{cls.__qualname__}" == f"tether.{name}"
    assert issubclass(cls, tether.TetherError)
    assert cls.__doc__


def test_error_traceback_line_says_tether() -> None:
    try:
        tether.parse_signal("NOPE")
    except tether.PolicyError as err:
        (line,) = traceback.format_exception_only(err)
    assert line.startswith("tether.PolicyError: unknown signal 'NOPE'")


def test_error_hierarchy() -> None:
    assert issubclass(tether.UsageError, ValueError)
    assert issubclass(tether.PolicyError, tether.UsageError)
    assert issubclass(tether.UnsafeTargetError, tether.UsageError)
    assert issubclass(tether.CommandNotFoundError, FileNotFoundError)
    assert issubclass(tether.CommandNotExecutableError, PermissionError)
    assert issubclass(tether.NoSuchProcessError, ProcessLookupError)
    assert not issubclass(tether.TrackerError, tether.UsageError)
    assert issubclass(tether.JobFailedError, subprocess.CalledProcessError)
    assert issubclass(tether.JobTimeoutError, subprocess.TimeoutExpired)
    assert tether.JobTimeoutError.exit_code == 124
    assert tether.TetherError.exit_code == 125
    assert tether.CommandNotFoundError.exit_code == 127
    assert tether.CommandNotExecutableError.exit_code == 126


def test_command_not_found_is_caught_as_file_not_found() -> None:
    with pytest.raises(FileNotFoundError) as info:
        raise tether.CommandNotFoundError("no-such-cmd")
    assert str(info.value) == "command not found: no-such-cmd"
    assert info.value.command == "no-such-cmd"
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, tether.TetherError)


def _samples() -> list[tuple[BaseException, dict[str, object]]]:
    return [
        (tether.TetherError("boom"), {}),
        (tether.UsageError("bad input"), {}),
        (tether.PolicyError("bad policy"), {}),
        (tether.TrackerError("no cgroup"), {}),
        (tether.UnsafeTargetError(1, "it is init"), {"pid": 1, "why": "it is init"}),
        (tether.CommandNotFoundError("frobnicate"), {"command": "frobnicate"}),
        (tether.CommandNotExecutableError("/etc/passwd"), {"command": "/etc/passwd"}),
        (tether.NoSuchProcessError(424242), {"pid": 424242}),
        (
            tether.JobFailedError(3, ["make"], b"out", b"err"),
            {"returncode": 3, "cmd": ["make"], "stdout": b"out", "stderr": b"err"},
        ),
        (
            tether.JobTimeoutError(["make"], 1.5, b"out", None),
            {"cmd": ["make"], "timeout": 1.5, "output": b"out"},
        ),
    ]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_errors_pickle_round_trip(protocol: int) -> None:
    for err, fields in _samples():
        back = pickle.loads(pickle.dumps(err, protocol=protocol))
        assert type(back) is type(err)
        assert str(back) == str(err)
        assert back.args == err.args
        for k, v in fields.items():
            assert getattr(back, k) == v
        copied = copy.deepcopy(err)
        assert type(copied) is type(err)
        assert str(copied) == str(err)


def test_error_messages() -> None:
    assert str(tether.UnsafeTargetError(1, "it is init")) == "refusing to kill pid 1: it is init"
    assert str(tether.CommandNotExecutableError("x")) == "command not executable: x"
    assert str(tether.NoSuchProcessError(5)) == "no such process: 5"


def test_public_types_are_the_real_ones() -> None:
    from tether.policy import Policy, parse_duration
    from tether.report import Report

    assert tether.Policy is Policy
    assert tether.Report is Report
    assert tether.parse_duration is parse_duration
