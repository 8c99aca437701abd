"""Supervision cost: CPU and peak RSS of `tether run` over an idle 100-process tree.

Starts `tether run -- <launcher of 100 sleeping processes>`, waits until the
tree is ready, reads utime+stime of the tether process from /proc/PID/stat,
sleeps --seconds (default 30), reads them again, and VmHWM (peak RSS) from
/proc/PID/status. Then sends SIGTERM to tether and checks, by identity
(pidfds opened when the tree was ready), that every process of the tree is gone.

    python3 bench/idle.py [--seconds 30] [--size 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

from _common import Tracked, Tree, cpu_ticks, pass_miss, raise_fd_limit, reap

CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(key.encode() + b":"):
                return int(line.split()[1])
    raise KeyError(key)


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2 :].split()[1])


def tether_command() -> list[str]:
    # The console script installed beside this interpreter (a pyenv shim would
    # put bash + pyenv in front of it); fall back to PATH, then to -m.
    beside = os.path.join(os.path.dirname(sys.executable), "tether")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("tether")
    return [found] if found else [sys.executable, "-m", "tether.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--size", type=int, default=100, help="processes in the tree")
    args = ap.parse_args()
    raise_fd_limit()

    tracked = Tracked()
    tree = Tree(args.size, tracked)
    argv = [*tether_command(), "run", "--", *tree.argv]
    started = time.monotonic()
    p = subprocess.Popen(
        argv, start_new_session=True, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    tracked.add([p.pid])
    try:
        pids = tree.wait_ready(None)
        ready_after = time.monotonic() - started
        if ppid_of(pids[0]) != p.pid:
            raise RuntimeError(f"tree leader {pids[0]} is not a child of tether {p.pid}")
        cpu0, t0 = cpu_ticks(p.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1, t1 = cpu_ticks(p.pid), time.monotonic()
        hwm = status_kb(p.pid, "VmHWM")
        rss = status_kb(p.pid, "VmRSS")
        cpu_s = (cpu1 - cpu0) / CLK_TCK
        pct = 100 * cpu_s / (t1 - t0)

        c0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)  # p is our unreaped child: the pid is still tether
        _out, err = p.communicate(timeout=60)
        cancel_s = time.monotonic() - c0
        left_after = len([pid for pid in tracked.alive() if pid != p.pid])
    finally:
        if p.poll() is None:
            p.kill()
        reap(p)
        leaked = tracked.kill_leftovers()
        tree.remove_files()

    print(
        f"`tether run` supervising an idle tree of {args.size} processes for {t1 - t0:.1f} s "
        f"({' '.join(argv[:2])} ...)"
    )
    print(
        f"  tree ready after            {ready_after * 1000:8.1f} ms "
        f"(tether start + {args.size - 1} forks)"
    )
    print(
        f"  tether CPU while idle       {cpu_s:8.2f} s  = {pct:.3f}% of one core "
        f"(clock tick {1000 / CLK_TCK:.0f} ms)"
    )
    print(f"  tether peak RSS (VmHWM)     {hwm / 1024:8.1f} MB  (VmRSS now {rss / 1024:.1f} MB)")
    print(f"  SIGTERM -> tether exited    {cancel_s * 1000:8.1f} ms, exit status {p.returncode}")
    print(f"  tree processes left alive   {left_after:8d}   (after tether exited; by identity)")
    if leaked:
        print(f"  cleanup SIGKILLed           {leaked:8d}   leftover process(es)")
    last = err.decode(errors="replace").strip().splitlines()
    if last:
        print("  tether's report (stderr), first lines:")
        for line in last[:6]:
            print(f"    {line}")
    print("\ntargets (informational)")
    print(f"  CPU  {pct:7.3f}% of one core  (target <= 0.5%)  {pass_miss(pct <= 0.5)}")
    print(
        f"  RSS  {hwm / 1024:7.1f} MB peak        (target <= 40 MB) {pass_miss(hwm <= 40 * 1024)}"
    )
    print(f"  tree gone after SIGTERM: {'yes' if left_after == 0 else f'NO, {left_after} left'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
