"""Process-table snapshot cost with 2000 extra sleeping processes running.

Compares tether.process.snapshot() (stat only, and with uids + cmdline)
against psutil.process_iter([...]) and `ps -eo ...`, median of --repeat runs.

    python3 bench/snapshot.py [--extra 2000] [--repeat 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
from _common import Tracked, Tree, median, pass_miss, raise_fd_limit, reap

from tether.process import snapshot

PSUTIL_ATTRS = ["pid", "ppid", "uids", "cmdline", "create_time", "status"]


def tether_stat() -> int:
    return len(snapshot())


def tether_fields() -> int:
    return len(snapshot(fields=("uids", "cmdline")))


def psutil_iter() -> int:
    # A fresh iteration each time: process_iter caches Process objects between
    # calls, which would only help a long-running caller.
    psutil.process_iter.cache_clear()
    return sum(1 for _ in psutil.process_iter(PSUTIL_ATTRS))


def ps_cmd() -> int:
    out = subprocess.run(
        ["ps", "-eo", "pid,ppid,pgid,sid,uid,lstart,stat,args"],
        capture_output=True,
        check=True,
    ).stdout
    return out.count(b"\n") - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--extra", type=int, default=2000, help="extra sleeping processes")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    raise_fd_limit()

    tracked = Tracked()
    tree = Tree(args.extra + 1, tracked)  # launcher + extra children
    p = subprocess.Popen(tree.argv, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        tree.wait_ready(p.pid)
        methods: list[tuple[str, Callable[[], int]]] = [
            ("tether snapshot() (stat only)", tether_stat),
            ('tether snapshot(fields=("uids","cmdline"))', tether_fields),
            ("psutil.process_iter(pid,ppid,uids,cmdline,create_time,status)", psutil_iter),
            ("ps -eo pid,ppid,pgid,sid,uid,lstart,stat,args", ps_cmd),
        ]
        times: dict[str, list[float]] = {m: [] for m, _ in methods}
        counts: dict[str, int] = {}
        for _name, fn in methods:  # warm-up (imports, dentry cache)
            fn()
        for _ in range(args.repeat):
            for name, fn in methods:
                t0 = time.perf_counter()
                counts[name] = fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        # The tree leads its own process group; killpg reaches only it, and the
        # identity check below confirms every process we started is gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        reap(p)
        tracked.wait_exited(30)  # SIGKILL of 2000 processes takes a moment to land
        left = tracked.kill_leftovers()
        tree.remove_files()
        if left:
            print(f"cleanup: {left} process(es) needed a second SIGKILL", file=sys.stderr)

    print(
        f"process-table snapshot with {args.extra} extra sleeping processes, "
        f"median of {args.repeat} (ms); {os.cpu_count()} cpus"
    )
    width = max(len(m) for m, _ in methods)
    print(f"{'method':<{width}}  {'median':>8}  {'min':>8}  {'max':>8}  {'rows':>6}  {'us/row':>7}")
    print("-" * (width + 46))
    for name, _ in methods:
        t = times[name]
        print(
            f"{name:<{width}}  {median(t) * 1000:8.1f}  {min(t) * 1000:8.1f}  "
            f"{max(t) * 1000:8.1f}  {counts[name]:6d}  {median(t) * 1e6 / counts[name]:7.1f}"
        )
    ps = median(times[methods[2][0]])
    print("\ntargets (informational): at most half psutil's time")
    for name, _ in methods[:2]:
        t = median(times[name])
        print(
            f"  {name:<{width}} {t / ps:5.2f}x psutil  (target <= 0.5x)  {pass_miss(t <= 0.5 * ps)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
