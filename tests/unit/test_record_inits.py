"""tether._record_inits: every record's ``__init__`` compiled ahead must be the
code ``tether._records`` would compile, bound with the same defaults, and
the file must be current (tools/gen_record_inits.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tether._records as records
from tether._record_inits import CODES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import gen_record_inits  # noqa: E402

CLASSES = gen_record_inits.record_classes()


def test_the_generated_file_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_record_inits.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_tether_record_is_there() -> None:
    assert len(CLASSES) > 30
    missing = [c.__qualname__ for c in CLASSES if records.source_of(c) not in CODES]
    assert missing == []


def _ordered(cls: type) -> list[Any]:
    fields = list(cls.__record_fields__.values())  # type: ignore[attr-defined]
    return [f for f in fields if not f.kw_only] + [f for f in fields if f.kw_only]


def _frozen(cls: type) -> bool:
    return cls.__dict__.get("__setattr__") is records._frozen_setattr  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_the_ahead_code_is_what_a_compile_gives(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    ahead = records._init(cls, _ordered(cls), _frozen(cls))  # type: ignore[attr-defined]
    monkeypatch.setattr(records, "_codes", [{}])
    compiled = records._init(cls, _ordered(cls), _frozen(cls))  # type: ignore[attr-defined]
    assert ahead.__code__.co_filename.endswith("_record_inits.py")
    assert compiled.__code__.co_filename.startswith("<record ")
    for attr in (
        "co_code",
        "co_consts",
        "co_names",
        "co_varnames",
        "co_argcount",
        "co_posonlyargcount",
        "co_kwonlyargcount",
        "co_flags",
    ):
        assert getattr(ahead.__code__, attr) == getattr(compiled.__code__, attr), attr
    assert ahead.__defaults__ == compiled.__defaults__
    assert ahead.__kwdefaults__ == compiled.__kwdefaults__
    assert ahead.__annotations__ == compiled.__annotations__
    assert ahead.__qualname__ == compiled.__qualname__
    assert ahead.__globals__.keys() == compiled.__globals__.keys() - {"__builtins__", "__init__"}


def test_defaults_and_factories_of_an_ahead_init_work() -> None:
    from tether.tracking.select import Selection

    fields = records.fields(Selection)
    factories = [f for f in fields if f.default_factory is not records.MISSING]  # type: ignore[attr-defined]
    assert factories, "a record with a default_factory field"
    assert records.source_of(Selection) in CODES
    required = {
        f.name: None
        for f in fields
        if f.default is records.MISSING and f.default_factory is records.MISSING  # type: ignore[attr-defined]
    }
    one, two = Selection(**required), Selection(**required)
    for f in factories:
        assert getattr(one, f.name) == f.default_factory()
        assert getattr(one, f.name) is not getattr(two, f.name)


def test_without_its_bytecode_the_module_is_not_compiled_for_the_inits(tmp_path: Path) -> None:
    """A tree without tether/__pycache__ (PYTHONDONTWRITEBYTECODE in a fresh
    checkout): compiling _record_inits.py from source would cost what it saves."""
    import shutil

    shutil.copytree(
        ROOT / "src" / "tether", tmp_path / "tether",
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )  # fmt: skip
    code = (
        "import sys\n"
        "from tether.tracking.select import Selection\n"
        "Selection(frozenset())\n"
        "print('tether._record_inits' in sys.modules,"
        " Selection.__init__.__code__.co_filename)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.split(" ", 1)
    assert out == ["False", "<record Selection>\n"]
    # Where bytecode is written, the first start writes it, and uses it.
    del env["PYTHONDONTWRITEBYTECODE"]
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout.split(" ", 1)
        assert out[0] == "True"
        assert out[1].rstrip().endswith("_record_inits.py")
    assert list((tmp_path / "tether" / "__pycache__").glob("_record_inits.*.pyc"))
