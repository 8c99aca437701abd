"""docs/comparison.md holds bench/compare.py's table as the script prints it.

Running the script takes minutes, so this checks what can go stale without
it: the rows and columns are the script's (a scenario or method renamed or
added there fails here until the page is regenerated), each row's cells are
in the script's cell format, and the "all gone" counts add up.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent.parent
PAGE = ROOT / "docs" / "comparison.md"
CELL = re.compile(r"yes|\*\*left [^*]+\*\*")


def compare_module() -> ModuleType:
    """bench/compare.py, imported (main() is not run); it imports bench/_common.py."""
    bench = str(ROOT / "bench")
    spec = importlib.util.spec_from_file_location("tether_bench_compare", f"{bench}/compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    sys.path.insert(0, bench)
    before = sys.modules.pop("_common", None)  # bench's own _common, not another
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(bench)
        sys.modules.pop("_common", None)
        if before is not None:
            sys.modules["_common"] = before
    return module


def table() -> list[list[str]]:
    lines = PAGE.read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("<!-- bench/compare.py: "))
    assert lines[start + 1] == "", "the script prints a blank line after its comment"
    return _rows(lines[start + 2 :])


def _rows(lines: list[str]) -> list[list[str]]:
    """The cells of the markdown table the lines start with."""
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_page_has_the_scripts_rows_and_columns() -> None:
    compare = compare_module()
    head, rule, *body = table()
    assert head == ["scenario", *(m.column for m in compare.methods())]
    assert set(rule) == {"---"}
    *scenarios, total = body
    assert [row[0] for row in scenarios] == [s.row for s in compare.SCENARIOS]
    assert total[0] == "**all gone**"
    for column in range(1, len(head)):
        cells = [row[column] for row in scenarios]
        assert all(CELL.fullmatch(cell) for cell in cells), cells
        passed = sum(cell == "yes" for cell in cells)
        assert total[column] == f"{passed}/{len(scenarios)}", head[column]


POLITE_CELL = re.compile(r"[01]\.\d\d, (\d+ ms|\*\*left [^*]+\*\*)")


def test_the_polite_table_has_the_scripts_rows_columns_and_verdicts() -> None:
    compare = compare_module()
    lines = PAGE.read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("| program | "))
    head, rule, *body = _rows(lines[start:])
    columns = [m.column for m in compare.methods() if m.key in compare.POLITE_METHODS]
    assert head == ["program", *columns, "goal"]
    assert set(rule) == {"---"}
    assert [row[0] for row in body] == [p.row for p in compare.PROGRAMS]
    for row in body:
        assert all(POLITE_CELL.fullmatch(cell) for cell in row[1:-1]), row
        assert row[-1] == "PASS" or row[-1].startswith("MISS ("), row
    verdict = "PASS" if all(row[-1] == "PASS" for row in body) else "MISS"
    assert any(line.startswith("Goal (") and line.endswith(f": {verdict}") for line in lines)
