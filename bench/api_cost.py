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
import tether.job

#: Issue 14 item 6: tether.run(['true']) within this many times subprocess.run's wall time.
TARGET = 3.0


def _measure(
    rows: dict[str, Callable[[], object]], calls: int
) -> dict[str, tuple[float, float, float]]:
    """name -> (median wall ms, mean wall ms, mean CPU ms incl. reaped children) per call.

    The rows take turns call by call, so a load spike on the shared machine
    falls on all of them alike instead of on whichever row ran at the time.
    """
    walls: dict[str, list[float]] = {name: [] for name in rows}
    cpu = dict.fromkeys(rows, 0.0)
    for _ in range(calls):
        for name, call in rows.items():
            t0 = os.times()
            start = time.perf_counter()
            call()
            walls[name].append((time.perf_counter() - start) * 1000)
            t1 = os.times()
            cpu[name] += (t1.user + t1.system + t1.children_user + t1.children_system) - (
                t0.user + t0.system + t0.children_user + t0.children_system
            )
    return {
        name: (statistics.median(w), statistics.fmean(w), cpu[name] * 1000 / calls)
        for name, w in walls.items()
    }


def _shim(call: Callable[[], object]) -> object:
    tether.job._CLONE_INTO_CGROUP = False
    try:
        return call()
    finally:
        tether.job._CLONE_INTO_CGROUP = True


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
        # The fallback spawn (a /bin/sh shim writes cgroup.procs before exec),
        # as every job started before clone3(CLONE_INTO_CGROUP) was used.
        "  same, shim spawn (no clone3)": lambda: _shim(
            lambda: tether.run(["true"], trackers=args.trackers)
        ),
        "tether.run(['true'], watchdog=False)": lambda: tether.run(
            ["true"], trackers=args.trackers, watchdog=False
        ),
    }
    for call in rows.values():  # warm up imports and caches
        call()
    results = _measure(rows, args.calls)
    base = results["subprocess.run(['true'])"][0]
    print(f"{args.calls} calls each, uid {os.geteuid()}")
    print(f"{'call':<48} {'median ms':>9} {'mean ms':>8} {'cpu ms':>7} {'x subprocess':>12}")
    for name, (median, mean, cpu) in results.items():
        print(f"{name:<48} {median:>9.2f} {mean:>8.2f} {cpu:>7.2f} {median / base:>12.1f}")
    ratio = results[f"tether.run(['true'], trackers={args.trackers!r})"][0] / base
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"target: tether.run within {TARGET:g}x subprocess.run: {ratio:.1f}x {verdict}")


if __name__ == "__main__":
    main()
