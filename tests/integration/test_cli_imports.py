"""Layering of the command line: tether.cli sits on top, nothing below imports it.

remote/ is click-free (no import cycle between tether.cli and tether.remote),
each command's module is imported only when that command runs, and a local
``tether run`` imports nothing of remote/. Every check runs in a fresh
interpreter: this process has imported everything already.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import tether.remote
from tether.cli import COMMANDS


def imported_after(code: str) -> set[str]:
    """The modules ``code`` leaves in sys.modules, run in a fresh interpreter."""
    # The list is taken before the probe imports json to print it.
    probe = f"{code}\nimport sys\nseen = sorted(sys.modules)\n"
    probe += "import json\nprint(json.dumps(seen))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


REMOTE_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(tether.remote.__path__, "tether.remote.")
)


def test_remote_modules_are_found() -> None:
    assert {"tether.remote.client", "tether.remote.fanout", "tether.remote.agent"} <= set(
        REMOTE_MODULES
    )


def test_no_remote_module_imports_click_or_the_cli() -> None:
    loaded = imported_after("\n".join(f"import {m}" for m in REMOTE_MODULES))
    assert set(REMOTE_MODULES) <= loaded
    assert "click" not in loaded
    assert not {m for m in loaded if m == "tether.cli" or m.startswith("tether.cli.")}


@pytest.mark.parametrize("module", ["tether", "tether.job", "tether.config", "tether.caller"])
def test_the_library_does_not_import_the_cli(module: str) -> None:
    loaded = imported_after(f"import {module}")
    assert "tether.cli" not in loaded
    assert "click" not in loaded


def test_commands_are_imported_only_when_run() -> None:
    loaded = imported_after("import tether.cli")
    command_modules = {target.partition(":")[0] for target in COMMANDS.values()}
    assert not command_modules & loaded
    assert "tether.remote" not in loaded


def test_a_local_run_imports_no_other_command_and_nothing_remote() -> None:
    loaded = imported_after(
        "import contextlib\n"
        "from tether.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(['run', '--', 'true'])\n"
    )
    assert "tether.cli.run" in loaded
    others = {target.partition(":")[0] for target in COMMANDS.values()} - {"tether.cli.run"}
    assert not others & loaded
    assert not {m for m in loaded if m == "tether.remote" or m.startswith("tether.remote.")}
    assert "tether.display" not in loaded  # piped: no colour, no tables
    # Records are written by tether._compact_json, reports only with --json,
    # and no remote option was given: ~2 ms of json and the remote options.
    assert "json" not in loaded and "tether.cli._remote" not in loaded


def test_version_answers_without_click() -> None:
    """`tether --version` is answered before click (or any command) is imported,
    and prints what click's version option would."""
    loaded = imported_after(
        "import contextlib\n"
        "from tether.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(['--version'])\n"
    )
    assert "click" not in loaded
    assert "tether.cli._common" not in loaded
    done = subprocess.run(
        [sys.executable, "-m", "tether.cli", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, f"tether {tether.__version__}\n", "")


def test_the_remote_cli_module_imports_click_only_when_a_click_command_asks() -> None:
    """tether.cli._remote builds click's options only in with_remote_options:
    a click-free path of ``tether run`` can run a fan-out without click."""
    assert "click" not in imported_after("import tether.cli._remote")
    asks = "import tether.cli._remote as r\nr.with_remote_options(lambda **kw: None)"
    assert "click" in imported_after(asks)


_RUN = "import contextlib\nfrom tether.cli import main\nwith contextlib.suppress(SystemExit):\n"


@pytest.mark.parametrize(
    ("code", "ran"),
    [
        ("import tether", "tether"),
        ("import tether\ntether.run(['true'])", "tether.job"),
        ("import tether\nwith tether.start(['true']) as job:\n    job.wait()", "tether.job"),
        (f"{_RUN}    main(['run', '--', 'true'])", "tether.job"),
        (
            f"{_RUN}    main(['run', '--timeout', '1m', '-s', 'INT', '--json', '--', 'true'])",
            "tether.job",
        ),
        (f"{_RUN}    main(['ps'])", "tether.cli.ps"),
        (f"{_RUN}    main(['prune', '--json'])", "tether.prune.scan"),
    ],
)
def test_start_up_does_not_import_typing(code: str, ran: str) -> None:
    """typing costs every start ~5 ms (issue 15): names used only in
    annotations are imported under TYPE_CHECKING, and what typing made at run
    time (Protocol bases, aliases, JobOptions) has a stand-in or is deferred."""
    loaded = imported_after(code)
    assert ran in loaded
    assert "click" not in loaded  # the fast path: click itself imports typing
    assert "typing" not in loaded


def test_job_options_is_typings_typeddict_on_first_use() -> None:
    """tether.job makes JobOptions (a TypedDict) only when it is asked for."""
    code = (
        "import typing\nfrom tether.job import JobOptions\n"
        "assert typing.is_typeddict(JobOptions), JobOptions\n"
        "assert not JobOptions.__required_keys__ and not JobOptions.__total__\n"
        "assert {'policy', 'leftovers', 'stdout', 'watchdog'} <= JobOptions.__optional_keys__\n"
        "assert (JobOptions.__module__, JobOptions.__qualname__) == ('tether.job', 'JobOptions')\n"
        "import tether.job\nassert tether.job.JobOptions is JobOptions\n"
    )
    assert "tether.job" in imported_after(code)


def test_a_remote_run_parses_without_click() -> None:
    """`tether run -w ...` is read by the fast parser too (click's import is
    ~27 ms of a one-host run); here every host is excluded, so it fails once
    it has read its options and resolved its hosts, before any ssh."""
    loaded = imported_after(
        f"{_RUN}    main(['run', '-w', 'n[1-2]', '-x', 'n[1-2]', '-f', '2', '--', 'true'])"
    )
    assert "tether.remote.hostlist" in loaded
    assert "click" not in loaded


#: What `tether run -- true` must not import (issue 15): each is 1-8 ms of a
#: start on a 2-core machine, measured in a fresh interpreter. subprocess
#: brings locale, re, enum, signal's enums, threading, selectors and warnings;
#: contextlib and functools bring collections; the pip-generated console
#: script brings re (tether's own script, src/scripts/tether, does not).
STDLIB_NOT_ON_THE_RUN_PATH = frozenset(
    {"re", "enum", "signal", "subprocess", "contextlib", "functools", "collections",
     "threading", "locale", "selectors", "warnings", "types", "typing", "json", "struct",
     "operator", "keyword", "reprlib", "copyreg", "weakref", "dataclasses", "tempfile"}
)  # fmt: skip

# No contextlib in the probe itself.
_BARE_RUN = "from tether.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--", "true"],
        ["run", "--timeout", "10s", "-s", "INT", "--kill-after", "1.5s", "--", "true"],
        ["run", "--", "sh", "-c", "exit 3"],
    ],
)
def test_a_local_run_imports_none_of_the_heavy_standard_library(argv: list[str]) -> None:
    """The leader is spawned without subprocess (tether.job._SpawnedLeader),
    signals are numbered without signal's enums (tether._signals), durations
    read without re: each module below is a start-up cost the run path
    does not need. A module that creeps back in fails here, by name."""
    loaded = imported_after(_BARE_RUN.format(argv=argv))
    assert "tether.job" in loaded and "tether._signals" in loaded
    assert not loaded & STDLIB_NOT_ON_THE_RUN_PATH, sorted(loaded & STDLIB_NOT_ON_THE_RUN_PATH)
    assert "tether._cgroup_popen" not in loaded and "tether._run_errors" not in loaded


def test_the_errors_of_check_are_subprocess_classes_on_first_use() -> None:
    """JobFailedError and JobTimeoutError subclass subprocess's errors: their
    module is imported when they are named, from tether or tether.job."""
    code = (
        "import subprocess, pickle, tether, tether.job\n"
        "assert tether.JobFailedError is tether.job.JobFailedError\n"
        "assert tether.JobTimeoutError is tether.job.JobTimeoutError\n"
        "assert issubclass(tether.JobFailedError, subprocess.CalledProcessError)\n"
        "assert issubclass(tether.JobTimeoutError, subprocess.TimeoutExpired)\n"
        "assert issubclass(tether.JobFailedError, tether.TetherError)\n"
        "e = pickle.loads(pickle.dumps(tether.JobFailedError(3, ['x'])))\n"
        "assert (type(e), e.returncode, e.cmd) == (tether.JobFailedError, 3, ['x'])\n"
    )
    assert "tether._run_errors" in imported_after(code)
