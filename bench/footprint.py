"""Supervision footprint: memory (PSS) and idle CPU of `tether run`, beside tini.

For --rounds rounds (interleaved), starts each supervisor over the same job
(a Python process that sleeps; its start is signalled through a file, never
a sleep), waits --settle seconds, then reads for the supervisor's own
processes — tether and its watchdog; tini alone — PSS, USS and RSS from
/proc/PID/smaps_rollup, and their utime+stime over --idle seconds of
supervision. Then SIGTERM to the supervisor and a check, by identity
(pidfds), that the job and the supervisor's processes are gone.

PSS counts a page shared by k processes as 1/k: other Python processes on
the machine lower tether's figure, so USS (pages only this process maps) is
printed beside it. Only one supervisor runs at a time.

tether's rows come twice: as the environment has it, and "(pyc cached)":
PYTHONDONTWRITEBYTECODE removed, bytecode kept under a temporary
PYTHONPYCACHEPREFIX (compiling from source leaves the supervisor's heap
~3 MB larger). With --baseline SRC (another checkout's src/), the same rows
for that tether (on PYTHONPATH), in the same interleaved rounds.

    python3 bench/footprint.py [--rounds 5] [--settle 0.5] [--idle 5] [--baseline SRC]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from _common import Tracked, Tree, cpu_ticks, median, pass_miss, reap
from idle import tether_command

CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_PSS_MB = 10.0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def memory_kb(pid: int) -> dict[str, int]:
    """Pss, Rss and USS (Private_Clean + Private_Dirty) in kB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                values[key] = int(parts[0])
    return {
        "pss": values["Pss"],
        "rss": values["Rss"],
        "uss": values["Private_Clean"] + values["Private_Dirty"],
    }


class Sample:
    def __init__(self) -> None:
        self.pss: list[float] = []
        self.uss: list[float] = []
        self.rss: list[float] = []
        self.cpu: list[float] = []
        self.processes = 0
        self.left = 0


def one_round(
    prefix: list[str], env: dict[str, str] | None, settle: float, idle: float, sample: Sample
) -> None:
    tracked = Tracked()
    tree = Tree(1, tracked)
    p = subprocess.Popen(
        [*prefix, *tree.argv],
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tracked.add([p.pid])
    try:
        while not os.path.exists(tree.ready):  # readiness, or the supervisor's early exit
            if p.poll() is not None:
                raise RuntimeError(f"{' '.join(prefix)} exited {p.returncode} before its job ran")
            time.sleep(0.005)
        (job,) = tree.wait_ready(None)
        # The supervisor's own processes: itself and (tether) its watchdog,
        # a direct child that is not the job.
        own = [p.pid, *(c for c in children(p.pid) if c != job)]
        tracked.add(own)
        time.sleep(settle)
        mem = [memory_kb(pid) for pid in own]
        cpu0 = sum(cpu_ticks(pid) for pid in own)
        time.sleep(idle)
        cpu1 = sum(cpu_ticks(pid) for pid in own)
        sample.pss.append(sum(m["pss"] for m in mem) / 1024)
        sample.uss.append(sum(m["uss"] for m in mem) / 1024)
        sample.rss.append(sum(m["rss"] for m in mem) / 1024)
        sample.cpu.append((cpu1 - cpu0) / CLK_TCK)
        sample.processes = len(own)
        p.send_signal(signal.SIGTERM)  # our unreaped child: the pid is still the supervisor
        p.wait(timeout=60)
        tracked.wait_exited(10)
        sample.left += len(tracked.alive())
    finally:
        if p.poll() is None:
            p.kill()
        reap(p)
        sample.left += tracked.kill_leftovers()
        tree.remove_files()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--settle", type=float, default=0.5, help="seconds before reading memory")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    ap.add_argument("--baseline", metavar="SRC", help="another tether's src/ to compare with")
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="tether-bench-pyc-")
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = cache
    tether = [*tether_command(), "run", "-q", "--"]
    rows: list[tuple[str, list[str], dict[str, str] | None]] = [
        ("tether run", tether, None),
        ("tether run (pyc cached)", tether, cached),
    ]
    if args.baseline:
        # python -m: the console script would import the installed tether first.
        base = [sys.executable, "-m", "tether.cli", "run", "-q", "--"]
        path = {"PYTHONPATH": os.path.abspath(args.baseline)}
        rows.append(("baseline", base, {**os.environ, **path}))
        rows.append(("baseline (pyc cached)", base, {**cached, **path}))
    for tool, prefix in (("tini", ["tini", "-s", "--"]), ("dumb-init", ["dumb-init", "--"])):
        if shutil.which(tool):
            rows.append((" ".join(prefix[:-1]), prefix, None))
        else:
            print(f"({tool} not installed: no {tool} row)")
    samples = {name: Sample() for name, _, _ in rows}
    for _name, prefix, env in rows:  # warm-up: the bytecode cache
        subprocess.run([*prefix, "true"], env=env, check=False)
    for _ in range(args.rounds):
        for name, prefix, env in rows:
            one_round(prefix, env, args.settle, args.idle, samples[name])
    shutil.rmtree(cache, ignore_errors=True)

    print(
        f"supervisor footprint over one sleeping job, median of {args.rounds} rounds "
        f"(memory in MB, idle CPU over {args.idle:g} s)"
    )
    print(
        f"{'supervisor':<28} {'procs':>5} {'PSS':>7} {'USS':>7} {'RSS':>7} {'idle CPU s':>10}  left"
    )
    for name, _, _ in rows:
        s = samples[name]
        print(
            f"{name:<28} {s.processes:5d} {median(s.pss):7.2f} {median(s.uss):7.2f} "
            f"{median(s.rss):7.2f} {median(s.cpu):10.2f}  {s.left}"
        )
    print("\ntargets (issue 15): PSS of supervisor + watchdog <= 10 MB; idle CPU 0")
    for name, _, _ in rows:
        if not name.startswith(("tether", "baseline")):
            continue
        t = samples[name]
        pss = median(t.pss)
        ratio = (
            f", {pss / median(samples['tini -s'].pss):.0f}x tini's" if "tini -s" in samples else ""
        )
        print(
            f"  {name:<28} PSS {pss:6.2f} MB{ratio}  {pass_miss(pss <= TARGET_PSS_MB)};"
            f"  idle CPU {max(t.cpu):.2f} s  {pass_miss(max(t.cpu) == 0)}"
        )
    print(f"  processes left after SIGTERM           {sum(s.left for s in samples.values()):6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
