"""The installed `tether` command runs nothing before tether's code (issue 15).

It is a script of the project's own (src/scripts/tether, pyproject.toml's
script-files), not pip's wrapper for a [project.scripts] entry point, which
imports re (with enum, functools and collections, ~8 ms in a fresh
interpreter) only to strip a Windows suffix from argv[0]. These tests read
the `tether` installed next to this interpreter (the project's venv: its
editable install, or a wheel's) and run its text under a probe, in a fresh
interpreter, without -X importtime.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tether

INSTALLED = Path(sys.executable).parent / "tether"

needs_installed = pytest.mark.skipif(
    not INSTALLED.is_file(),
    reason=f"no installed tether command next to {sys.executable} (tether is not installed "
    "in this interpreter's environment: run tools/venv.sh)",
)

#: Heavy modules pip's wrapper imports before tether (re and what it pulls in).
HEAVY = ("re", "enum", "functools", "collections")

# Runs the installed script's text as `python SCRIPT --version` would, and
# reports (one line each, before tether's own exit): the modules the script
# itself imported, in order; the heavy modules loaded when the first module
# of tether was looked up; and those loaded when tether.cli.main was entered.
# The probe imports nothing but sys and builtins, so what it sees loaded is
# site's doing or the script's; `re` loaded by site already is said too.
_PROBE = """
import builtins, sys
script = sys.argv[1]
heavy = sys.argv[2].split(",")
loaded = lambda: ",".join(m for m in heavy if m in sys.modules) or "-"
print("probe-start", loaded(), "tether" in sys.modules, flush=True)
with open(script, "rb") as f:
    code = compile(f.read(1 << 16), script, "exec")
namespace = {"__name__": "__main__", "__file__": script, "__builtins__": builtins}
direct = []

class Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "tether":
            print("probe-tether", loaded(), flush=True)
        return None

real_import = builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
    if globals is namespace:
        direct.append(name)
    module = real_import(name, globals, locals, fromlist, level)
    if globals is namespace and name == "tether.cli":
        main = module.main
        def entered(*args):
            print("probe-direct", ",".join(direct), flush=True)
            print("probe-main", loaded(), flush=True)
            return main(*args)
        module.main = entered
    return module

builtins.__import__ = spy
sys.meta_path.insert(0, Watch)
# As when the kernel runs the script: its directory first on sys.path.
sys.path[0] = script.rpartition("/")[0]
sys.argv = [script, "--version"]
exec(code, namespace)
"""


def _probe() -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(INSTALLED), ",".join(HEAVY)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, rest = line.partition(" ")
        if key.startswith("probe-"):
            seen[key.removeprefix("probe-")] = rest.split()
    assert seen.get("start", [None, None])[1] == "False", "tether was imported before the script"
    # The script went on to run tether --version.
    assert f"tether {tether.__version__}" in done.stdout
    return seen


@needs_installed
def test_the_installed_command_names_its_interpreter() -> None:
    with INSTALLED.open("rb") as f:
        first = f.readline(4096).decode("utf-8", "replace").rstrip("\n")
    assert first.startswith("#!"), first
    interpreter = first[2:].split()[0]
    # The installer wrote an absolute interpreter (the venv's own, for pip,
    # pipx and uv); `#!python`, the wheel's placeholder, would not run.
    assert interpreter.startswith("/") and os.access(interpreter, os.X_OK), first
    assert any("python" in Path(word).name for word in first[2:].split()), first
    assert os.access(INSTALLED, os.X_OK)


@needs_installed
def test_the_installed_command_imports_only_sys_before_tether() -> None:
    seen = _probe()
    # Exactly `import sys; from tether.cli import main`: pip's wrapper has
    # `import re` first.
    assert seen["direct"][0].split(",") == ["sys", "tether.cli"], seen


@needs_installed
def test_re_is_not_loaded_when_tether_starts() -> None:
    seen = _probe()
    start = seen["start"][0]
    if "re" in start.split(","):
        pytest.skip(f"this interpreter's site loads {start} before any script: nothing to tell")
    # Nothing heavy before tether's first module, nor (tether.cli imports none
    # of them either) when tether.cli.main is entered.
    assert seen["tether"] == [start], f"loaded before tether's code ran: {seen['tether']}"
    assert "re" not in seen["main"][0].split(","), f"loaded when main was entered: {seen['main']}"


@needs_installed
def test_the_installed_command_runs_jobs_with_their_status() -> None:
    version = subprocess.run(
        [str(INSTALLED), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (version.returncode, version.stdout) == (0, f"tether {tether.__version__}\n")
    ran = subprocess.run(
        [str(INSTALLED), "run", "--", "sh", "-c", "exit 7"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 7, ran.stderr
    missing = subprocess.run(
        [str(INSTALLED), "run", "--", "/nonexistent/tether-test-command"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 127, missing.stderr
