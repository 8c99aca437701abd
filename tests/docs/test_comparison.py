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
    rows = []
    for line in lines[start + 2 :]:
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
