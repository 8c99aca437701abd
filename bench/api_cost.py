"""Per-call cost of the Python API: tether.run(['true']) beside subprocess.run(['true']).

Prints wall and CPU (this process and its children) per call for each, and the
ratio. Run: python3 bench/api_cost.py [--calls N] [--trackers auto|session,cookie,walk]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import tether


def _measure(call: Callable[[], object], calls: int) -> tuple[float, float, float]:
    """(median wall ms, mean wall ms, mean CPU ms incl. reaped children) per call."""
    walls = []
    t0 = os.times()
    for _ in range(calls):
        start = time.perf_counter()
        call()
        walls.append((time.perf_counter() - start) * 1000)
    t1 = os.times()
    cpu = (t1.user + t1.system + t1.children_user + t1.children_system) - (
        t0.user + t0.system + t0.children_user + t0.children_system
    )
    return statistics.median(walls), statistics.fmean(walls), cpu * 1000 / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--trackers", default="auto")
    args = parser.parse_args()
    os.environ.setdefault("TETHER_RUNTIME_DIR", tempfile.mkdtemp(prefix="tether-bench-"))
    rows = {
        "subprocess.run(['true'])": lambda: subprocess.run(["true"], check=True),
        f"tether.run(['true'], trackers={args.trackers!r})": lambda: tether.run(
            ["true"], trackers=args.trackers
        ),
        "tether.run(['true'], watchdog=False)": lambda: tether.run(
            ["true"], trackers=args.trackers, watchdog=False
        ),
    }
    for call in rows.values():  # warm up imports and caches
        call()
    results = {name: _measure(call, args.calls) for name, call in rows.items()}
    base = results["subprocess.run(['true'])"][0]
    print(f"{args.calls} calls each, uid {os.geteuid()}")
    print(f"{'call':<48} {'median ms':>9} {'mean ms':>8} {'cpu ms':>7} {'x subprocess':>12}")
    for name, (median, mean, cpu) in results.items():
        print(f"{name:<48} {median:>9.2f} {mean:>8.2f} {cpu:>7.2f} {median / base:>12.1f}")


if __name__ == "__main__":
    main()
