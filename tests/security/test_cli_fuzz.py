"""Issue 17, item 9: a fuzz test of the CLI's argument parsing (hypothesis).

Random argv for run, kill, ps, prune and config, built from each command's
real options (so parsing goes deep: values for the right options, ``--``,
repeats) and hostile values (huge numbers, NaN, 25d, control characters,
non-UTF-8 surrogates, empty strings). Each case runs the real ``main`` in
this process, with the only functions that would act (start a job, kill,
prune, reach a host, run a program) replaced by a stop; under RLIMIT_AS and
a wall-clock limit (TETHER_FUZZ_EXAMPLES: more cases). It must end with an
exit status the command documents, a ``tether:`` message, never a traceback
and never an "internal error" (a bug the catch-all only hides).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tether.cli import cli, main

COMMANDS = ("run", "kill", "ps", "prune", "config")

#: Exit statuses each command documents (its --help EXIT STATUS; run's 0 is
#: --help, and the command's own status when it is not stopped).
DOCUMENTED = {
    "run": {0, 123, 124, 125, 126, 127},
    "kill": {0, 1, 2},
    "ps": {0, 1, 2},
    "prune": {0, 1, 2},
    "config": {0, 2},
}


class _Acted(BaseException):
    """Parsing got through: the command was about to act (start, kill, connect)."""


class _TooSlow(BaseException):
    pass


def _options(name: str) -> list[tuple[str, bool]]:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    out = []
    for p in command.params:
        if isinstance(p, click.Option):
            for opt in (*p.opts, *p.secondary_opts):
                out.append((opt, not p.is_flag and not p.count))
    return out


OPTIONS = {name: _options(name) for name in COMMANDS}

#: Values that broke parsers before (issue 17) or are at an edge.
EDGES = [
    "", "0", "-1", "1", "65536", "9" * 5000, "nan", "inf", "1e400", "25d", "24d", "30d",
    "0.000001s", "1min 30", "TERM,10s,KILL", "KILL,0", "TERM,", "10", "HUP", "SIGTERM",
    "-9", "--", "-", "=", "a=b", "\x1b[2J", "\udcff", "é", "[", "node[1-99999999]",
    "n[1-65535]-[1-65535]", "user@host:0", "-oProxyCommand=x", "x" * 3000, "1,2,3",
    "cgroup", "session,cookie", "none", "all", "slurm", "pbs", "0x10", " 5 ",
]  # fmt: skip

_value = st.one_of(
    st.sampled_from(EDGES),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    # Relative names only: a value may be a --json-file or --log-file path.
    st.text(max_size=40).map(lambda t: t.replace("/", "_").replace("\0", "")),
)


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    name = draw(st.sampled_from(COMMANDS))
    argv = [name]
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind <= 5 and OPTIONS[name]:
            opt, takes = draw(st.sampled_from(OPTIONS[name]))
            if takes and draw(st.integers(0, 9)):
                value = draw(_value)
                if opt.startswith("--") and draw(st.booleans()):
                    argv.append(f"{opt}={value}")
                else:
                    argv += [opt, value]
            else:
                argv.append(opt)
        elif kind == 6:
            argv.append("--")
        else:
            argv.append(draw(_value))
    if name == "run" and draw(st.booleans()):
        argv += ["--", "true"]
    return argv


@contextlib.contextmanager
def _limits() -> Iterator[None]:
    """RLIMIT_AS (4 GiB above what we use) and a 20 s wall clock per case."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + (4 << 30), hard))

    def expired(_sig: int, _frame: FrameType | None) -> None:
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 20.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture
def stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Everything that would act raises _Acted; no config, journal or cwd of ours."""
    import tether.job
    import tether.prune.outcome
    import tether.prune.sources
    import tether.remote.fanout

    def stop(*_a: Any, **_k: Any) -> Any:
        raise _Acted

    def no_program(*_a: Any, **_k: Any) -> Any:
        raise FileNotFoundError(errno.ENOENT, "not run in the fuzz test")

    for module, attribute in [
        (tether.job, "Job"),
        (tether.job, "kill_tree"),
        (tether.job, "kill_gid"),
        (tether.prune.outcome, "execute"),
        (tether.remote.fanout, "fan_out"),
    ]:
        monkeypatch.setattr(module, attribute, stop)
    monkeypatch.setattr(tether.prune.sources.subprocess, "Popen", no_program)
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith("TETHER_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("TETHER_RUNTIME_DIR", str(tmp_path / "journal"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _outcome(argv: list[str]) -> tuple[int | str, str]:
    """(exit status, or "acted"/"too slow"/"returned"; stderr) of ``tether ARGV``."""
    # Text streams with a .buffer, as sys.stdout/stderr (remote output is bytes).
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape")
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape")
    status: int | str = "returned"
    with _limits(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as done:
            status = done.code if isinstance(done.code, int) else 0
        except _Acted:
            status = "acted"
        except _TooSlow:
            status = "too slow"
    err.flush()
    stderr = err.buffer.getvalue().decode(errors="replace")  # type: ignore[attr-defined]
    return status, stderr


def _check(argv: list[str], status: int | str, stderr: str) -> None:
    assert "Traceback" not in stderr, (argv, stderr)
    assert "internal error" not in stderr, (argv, stderr)
    assert status not in ("too slow", "returned"), (argv, status)
    if status != "acted":
        assert status in DOCUMENTED[argv[0]], (argv, status, stderr)
    if status not in ("acted", 0):
        errors = [line for line in stderr.splitlines() if line.startswith("tether: ")]
        assert errors, (argv, status, stderr)


@settings(
    max_examples=int(os.environ.get("TETHER_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=argvs())
@example(argv=["ps", "\u00b9"])  # str.isdigit() is True, int() refuses it: was a traceback
def test_random_argv_is_never_a_traceback(stopped: Path, argv: list[str]) -> None:
    status, stderr = _outcome(argv)
    _check(argv, status, stderr)


def test_the_fuzz_reaches_every_outcome(stopped: Path) -> None:
    """The cases are not all rejected early: some parse and get to act."""
    for argv in (["run", "--", "true"], ["kill", "12345"], ["prune", "--kill", "--batch", "none"]):
        status, stderr = _outcome(argv)
        _check(argv, status, stderr)
        assert status == "acted", (argv, status, stderr)


def test_a_planted_bug_fails_the_check(stopped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tether.cli.config

    def bug(*_a: Any, **_k: Any) -> Any:
        raise KeyError("planted")

    monkeypatch.setattr(tether.cli.config, "load_config", bug)
    status, stderr = _outcome(["config"])
    with pytest.raises(AssertionError):
        _check(["config"], status, stderr)
