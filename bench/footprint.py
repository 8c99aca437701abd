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

    python3 bench/footprint.py [--rounds 5] [--settle 0.5] [--idle 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

from _common import Tracked, Tree, median, pass_miss, reap

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


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def tether_command() -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "tether")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("tether")
    return [found] if found else [sys.executable, "-m", "tether.cli"]


class Sample:
    def __init__(self) -> None:
        self.pss: list[float] = []
        self.uss: list[float] = []
        self.rss: list[float] = []
        self.cpu: list[float] = []
        self.processes = 0
        self.left = 0


def one_round(name: str, prefix: list[str], settle: float, idle: float, sample: Sample) -> None:
    tracked = Tracked()
    tree = Tree(1, tracked)
    p = subprocess.Popen(
        [*prefix, *tree.argv],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tracked.add([p.pid])
    try:
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
    args = ap.parse_args()
    rows: list[tuple[str, list[str]]] = [("tether run", [*tether_command(), "run", "-q", "--"])]
    for tool, prefix in (("tini", ["tini", "-s", "--"]), ("dumb-init", ["dumb-init", "--"])):
        if shutil.which(tool):
            rows.append((" ".join(prefix[:-1]), prefix))
        else:
            print(f"({tool} not installed: no {tool} row)")
    samples = {name: Sample() for name, _ in rows}
    for _ in range(args.rounds):
        for name, prefix in rows:
            one_round(name, prefix, args.settle, args.idle, samples[name])

    print(
        f"supervisor footprint over one sleeping job, median of {args.rounds} rounds "
        f"(memory in MB, idle CPU over {args.idle:g} s)"
    )
    print(f"{'supervisor':<14} {'procs':>5} {'PSS':>7} {'USS':>7} {'RSS':>7} {'idle CPU s':>10}  left")
    for name, _ in rows:
        s = samples[name]
        print(
            f"{name:<14} {s.processes:5d} {median(s.pss):7.2f} {median(s.uss):7.2f} "
            f"{median(s.rss):7.2f} {median(s.cpu):10.2f}  {s.left}"
        )
    t = samples["tether run"]
    print("\ntargets (issue 15)")
    pss = median(t.pss)
    print(
        f"  tether run PSS (supervisor + watchdog) {pss:6.2f} MB (target <= {TARGET_PSS_MB:g} MB)"
        f"  {pass_miss(pss <= TARGET_PSS_MB)}"
    )
    if "tini -s" in samples:
        print(f"  ratio to tini's PSS                    {pss / median(samples['tini -s'].pss):6.1f}x")
    idle_cpu = max(t.cpu)
    print(
        f"  tether idle CPU (max of rounds)        {idle_cpu:6.2f} s (target 0)"
        f"  {pass_miss(idle_cpu == 0)}"
    )
    print(f"  processes left after SIGTERM           {sum(s.left for s in samples.values()):6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
