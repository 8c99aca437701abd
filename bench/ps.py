"""`tether ps PID` of a 1000-process tree against `pstree -p PID`, whole commands.

Starts one real tree (bench/_common.py's launcher: a Python process that forks
N-1 sleeping children), then times, interleaved within each repetition so
drift hits all alike, each command from exec to exit with its output going
to a pipe (what a script or `| less` sees), wall and CPU (user + system):

  - `tether ps PID` (the console script: Python and click start-up included);
  - `tether ps --all PID` (one row per process, as pstree -p prints them);
  - `pstree -p PID` (psmisc), the reference.

Every row must name all N pids of the tree (checked; `tether ps` without
--all collapses identical leaves into N*[COMMAND] rows, so only --all is
checked by pid). Target (issue 15): `tether ps PID` no slower than pstree.
The tree is held by pidfds and killed through them: nothing by name.

    python3 bench/ps.py [--n 1000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time

from _common import Tracked, Tree, compile_trees, median, pass_miss, raise_fd_limit, reap


def tether_bin() -> list[str]:
    here = os.path.join(os.path.dirname(sys.executable), "tether")
    return [here] if os.path.exists(here) else [sys.executable, "-m", "tether.cli"]


def children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def run(argv: list[str], src: str | None = None) -> tuple[float, float, bytes]:
    """Wall and CPU (user + system: less noisy on a shared machine) of one run, its output."""
    env = dict(os.environ, PYTHONPATH=src) if src else None
    c0, t0 = children_cpu(), time.perf_counter()
    out = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True, env=env
    )
    return time.perf_counter() - t0, children_cpu() - c0, out.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="processes in the tree")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument(
        "--src", action="append", default=[], metavar="LABEL=DIR",
        help="also time `tether ps PID` with tether imported from DIR (e.g. an older\n"
             "`git archive` of src/), as a row of the same run",
    )  # fmt: skip
    args = ap.parse_args()
    pstree = shutil.which("pstree")
    if pstree is None:
        print("needs pstree (apt-get install psmisc)", file=sys.stderr)
        return 2
    raise_fd_limit()
    src_trees = compile_trees(args.src)
    tracked = Tracked()
    tree = Tree(args.n, tracked)
    launcher = subprocess.Popen(tree.argv, start_new_session=True, stdin=subprocess.DEVNULL)
    tracked.add([launcher.pid])
    rows: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    complete: dict[str, bool] = {}
    try:
        pids = tree.wait_ready(launcher.pid)
        root = str(pids[0])
        want = set(pids)
        tether_argv = tether_bin()
        methods = [
            ("tether ps PID", [*tether_argv, "ps", root], False, None),
            ("tether ps --all PID", [*tether_argv, "ps", "--all", root], True, None),
        ]
        for label, src in src_trees:
            module = [sys.executable, "-m", "tether.cli", "ps", root]
            methods.append((f"tether ps PID ({label})", module, False, src))
        methods.append(("pstree -p PID", [pstree, "-p", root], True, None))
        for _name, argv, _, src in methods:  # warm-up: pyc files, dentry cache
            run(argv, src)
        for _ in range(args.repeat):
            for name, argv, by_pid, src in methods:
                took, used, out = run(argv, src)
                rows.setdefault(name, []).append(took)
                cpu.setdefault(name, []).append(used)
                text = out.decode(errors="replace")
                if by_pid:
                    numbers = {int(x) for x in re.findall(r"\((\d+)\)", text)}
                    if not numbers:  # tether's columns: the first field of a row
                        numbers = {int(line.split()[0]) for line in text.splitlines()
                                   if line.split() and line.split()[0].isdigit()}  # fmt: skip
                    complete[name] = want <= numbers and complete.get(name, True)
                else:
                    complete[name] = root in text and complete.get(name, True)
    finally:
        left = tracked.kill_leftovers()
        reap(launcher)
        tree.remove_files()
        if left:
            print(f"cleanup: killed {left} process(es) by pidfd", file=sys.stderr)

    print(
        f"`tether ps` vs `pstree -p` of one {args.n}-process tree, output to a pipe; "
        f"{sum(1 for n in os.listdir('/proc') if n.isdigit())} processes on the node; "
        f"median of {args.repeat} (ms); {os.cpu_count()} cpus"
    )
    width = max(len(n) for n, *_ in methods)
    print(
        f"{'command':<{width}}  {'median':>8}  {'min':>8}  {'max':>8}  {'ratio':>6}  "
        f"{'cpu':>8}  {'ratio':>6}  all pids"
    )
    print("-" * (width + 66))
    ref = median(rows[methods[-1][0]])
    ref_cpu = median(cpu[methods[-1][0]])
    for name, _, by_pid, _ in methods:
        t = rows[name]
        shown = ("yes" if complete[name] else "NO") if by_pid else "-"
        print(
            f"{name:<{width}}  {median(t) * 1000:8.1f}  {min(t) * 1000:8.1f}  "
            f"{max(t) * 1000:8.1f}  {median(t) / ref:5.2f}x  {median(cpu[name]) * 1000:8.1f}  "
            f"{median(cpu[name]) / ref_cpu:5.2f}x  {shown}"
        )
    mine = median(rows[methods[0][0]])
    print("\ntargets (informational):")
    mine_cpu = median(cpu[methods[0][0]])
    print(f"  tether ps PID <= pstree -p PID: {mine / ref:.2f}x  {pass_miss(mine <= ref)}")
    print(f"  (CPU, median: {mine_cpu / ref_cpu:.2f}x  {pass_miss(mine_cpu <= ref_cpu)})")
    return 0 if all(complete.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
