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


def _keeper_cpu() -> float:
    """CPU seconds of this process's keeper and the job keepers it reaped.

    Job keepers that wait for the next job are not reaped per call: their
    CPU shows here only once they exit, so the column undercounts by what the
    waiting ones spent (a fraction of a job keeper's life)."""
    import tether.keeper

    pid = tether.keeper._client.pid
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _cpu_now() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + _keeper_cpu()


def _measure(
    rows: dict[str, Callable[[], object]], calls: int, run: int = 1
) -> dict[str, tuple[float, float, float]]:
    """name -> (median wall ms, mean wall ms, mean CPU ms incl. reaped children
    and the keeper) per call.

    The rows take turns ``run`` calls at a time, so a load spike on the shared
    machine falls on all of them alike instead of on whichever row ran at the
    time. With run=1 a row's call follows another row's: whatever work a call
    leaves in the background (a job keeper going back to wait) lands on the
    next row; longer runs keep it within the row.
    """
    walls: dict[str, list[float]] = {name: [] for name in rows}
    cpu = dict.fromkeys(rows, 0.0)
    for _ in range(max(1, calls // run)):
        for name, call in rows.items():
            c0 = _cpu_now()
            for _ in range(run):
                start = time.perf_counter()
                call()
                walls[name].append((time.perf_counter() - start) * 1000)
            cpu[name] += _cpu_now() - c0
    return {
        name: (statistics.median(w), statistics.fmean(w), cpu[name] * 1000 / len(w))
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
    ratios = []
    for run in (1, 20):
        results = _measure(rows, args.calls, run)
        base = results["subprocess.run(['true'])"][0]
        print(f"{args.calls} calls each, taking turns {run} at a time, uid {os.geteuid()}")
        print(f"{'call':<48} {'median ms':>9} {'mean ms':>8} {'cpu ms':>7} {'x subprocess':>12}")
        for name, (median, mean, cpu) in results.items():
            print(f"{name:<48} {median:>9.2f} {mean:>8.2f} {cpu:>7.2f} {median / base:>12.1f}")
        ratios.append(results[f"tether.run(['true'], trackers={args.trackers!r})"][0] / base)
    ratio = max(ratios)  # the less flattering of the two
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"target: tether.run within {TARGET:g}x subprocess.run: {ratio:.1f}x {verdict}")


if __name__ == "__main__":
    main()
