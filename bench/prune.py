"""Scan-and-classify time of `tether prune` on a node with thousands of processes.

Starts --procs processes (default: enough to bring the node to 5000): --jobs
batch jobs, each a session of its own run as one of four uids, listed in a
sessions file (as a Torque/SGE epilogue would list them), and a --stray-fraction
of orphaned user processes re-parented to init. Then compares, median of
--repeat runs (wall, and CPU: user + system of the process and its children),
with the same rules (every uid >= 1000, not in a listed session or below one,
min age 0, interactive sessions not exempt):

  - tether.prune.plan() in-process (scan + job list + classify);
  - `tether prune --json` end to end (Python and click start-up included);
  - a ps-based script, as per-site cron scripts do: `ps -eo ...` piped to awk;
  - with --python-row, the whole command without the optional native /proc
    reader (TETHER_NO_NATIVE_PROCSCAN=1).

All must name the same strays among the processes the bench started, exactly
the strays it made (checked; other users' processes on a shared node are
counted apart). What is timed is the method itself: its output is parsed
after the clock stops (for every method). Targets:
the whole command no slower than the ps-based script (issue 15); plan() under
100 ms and at least 5x faster than the script. Every process is started by this
script, held through a pidfd and killed through it: nothing by name.

    python3 bench/prune.py [--total 5000] [--jobs 40] [--stray-fraction 0.2] [--repeat 7]
                           [--src LABEL=DIR] [--python-row]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from _common import PYTHON, Tracked, compile_trees, median, pass_miss, raise_fd_limit

from tether.prune import PruneOptions, SessionList, plan

UID_BASE = 61000  # numeric uids, no passwd entry needed (setresuid takes any)

# Root launcher: jobs (setsid, drop to a uid, fork the rest of the job) and
# strays (double fork into init as the stray uid); writes every pid when ready.
LAUNCHER = r"""
import os, sys, time
jobs, per_job, strays, uid_base = (int(x) for x in sys.argv[1:5])
ready, sessions = sys.argv[5], sys.argv[6]
r, w = os.pipe()

def drop(uid):
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)

def sleep_forever():
    os.close(r)
    os.close(w)
    while True:
        time.sleep(3600)

lines = []
for j in range(jobs):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        drop(uid_base + 1 + j % 4)
        kids = [os.getpid()]
        for _ in range(per_job - 1):
            k = os.fork()
            if k == 0:
                sleep_forever()
            kids.append(k)
        os.write(w, "".join(f"j {k}\n" for k in kids).encode())
        sleep_forever()
    lines.append(f"{pid} job{j}")
for _ in range(strays):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        drop(uid_base + 9)
        g = os.fork()
        if g == 0:
            os.write(w, f"s {os.getpid()}\n".encode())
            sleep_forever()
        os._exit(0)
    os.waitpid(pid, 0)
os.close(w)
want = jobs * per_job + strays
buf = b""
while buf.count(b"\n") < want:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    buf += chunk
with open(sessions, "w") as f:
    f.write("\n".join(lines) + "\n")
with open(ready + ".tmp", "wb") as f:
    f.write(buf)
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(3600)
"""

PS_SCRIPT = r"""
# Strays: every uid >= FLOOR, older than MINAGE, not in (or below) a listed session.
sessions=$1 floor=$2 minage=$3
ps -eo pid=,ppid=,sid=,ruid=,euid=,suid=,fsuid=,etimes=,stat= | awk -v sf="$sessions" \
    -v floor="$floor" -v minage="$minage" -v self="$$" '
BEGIN {
  while ((getline line < sf) > 0) { split(line, f, " "); if (f[1] ~ /^[0-9]+$/) job[f[1]] = 1 }
}
{
  pid = $1; n++; order[n] = pid; ppid[pid] = $2; sid[pid] = $3
  ok[pid] = ($4 >= floor && $5 >= floor && $6 >= floor && $7 >= floor && $8 >= minage \
             && $9 !~ /^Z/ && pid != self)
}
END {
  for (i = 1; i <= n; i++) { p = order[i]; if (sid[p] in job) legit[p] = 1 }
  changed = 1
  while (changed) {
    changed = 0
    for (i = 1; i <= n; i++) {
      p = order[i]
      if (!(p in legit) && (ppid[p] in legit)) { legit[p] = 1; changed = 1 }
    }
  }
  for (i = 1; i <= n; i++) { p = order[i]; if (ok[p] && !(p in legit)) print p }
}'
"""


def cpu_seconds() -> float:
    """CPU (user + system) of this process and every child it waited for: on a
    shared machine less noisy than wall time, and it counts ps and awk too."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def node_processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--total", type=int, default=5000, help="processes on the node to reach")
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--stray-fraction", type=float, default=0.2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument(
        "--src", action="append", default=[], metavar="LABEL=DIR",
        help="also time the whole command with tether imported from DIR (e.g. an older\n"
             "`git archive` of src/), as a row of the same run",
    )  # fmt: skip
    ap.add_argument(
        "--python-row", action="store_true",
        help="also time the whole command with TETHER_NO_NATIVE_PROCSCAN=1 (Python /proc reader)",
    )  # fmt: skip
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (the processes run as other uids)", file=sys.stderr)
        return 2
    raise_fd_limit()
    src_trees = compile_trees(args.src)
    add = max(args.jobs, args.total - node_processes() - 1)
    strays = int(add * args.stray_fraction)
    per_job = max(1, (add - strays) // args.jobs)
    tmp = tempfile.mkdtemp(prefix="tether-bench-prune-")
    ready = os.path.join(tmp, "ready")
    sessions = os.path.join(tmp, "sessions")
    script = os.path.join(tmp, "strays.sh")
    with open(script, "w") as f:
        f.write(PS_SCRIPT)
    tracked = Tracked()
    launcher = subprocess.Popen(
        [PYTHON, "-c", LAUNCHER, str(args.jobs), str(per_job), str(strays), str(UID_BASE),
         ready, sessions],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    tracked.add([launcher.pid])
    rows: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    found: dict[str, set[int]] = {}
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(ready):
            if time.monotonic() > deadline or launcher.poll() is not None:
                raise RuntimeError("launcher did not get ready")
            time.sleep(0.05)
        with open(ready) as f:
            tagged = [line.split() for line in f.read().splitlines()]
        pids = [int(pid) for _kind, pid in tagged]
        expected = {int(pid) for kind, pid in tagged if kind == "s"}
        ours = {*pids, launcher.pid}
        tracked.add(pids)
        total = node_processes()
        # --include-ssh: the script knows no interactive sessions, so neither
        # may tether (a user logged in over ssh would otherwise split them).
        options = PruneOptions(min_uid=1000, min_age=0.0, include_ssh=True)

        # Each method returns how to read its answer, which is done after the
        # clock stops: parsing the command's 2 MB of JSON (~10 ms) or the
        # script's pids is the harness's work, not the command's.
        def tether_plan() -> Callable[[], set[int]]:
            p = plan(options, [SessionList(path=sessions)])
            return lambda: {s.pid for s in p.strays}

        def tether_cli(src: str | None = None, native: bool = True) -> Callable[[], set[int]]:
            env = dict(os.environ, PYTHONPATH=src) if src else None
            if not native:  # the pure-Python /proc reader (no _procscan)
                env = dict(env or os.environ, TETHER_NO_NATIVE_PROCSCAN="1")
            out = subprocess.run(
                [PYTHON, "-m", "tether.cli", "prune", "--json", "--no-syslog", "--batch", "none",
                 "--min-uid", "1000", "--min-age", "0", "--include-ssh", "--sessions-file",
                 sessions],
                capture_output=True,
                check=True,
                env=env,
            ).stdout  # fmt: skip
            return lambda: {s["pid"] for s in json.loads(out)["strays"]}

        def ps_script() -> Callable[[], set[int]]:
            out = subprocess.run(
                ["sh", script, sessions, "1000", "0"], capture_output=True, check=True
            ).stdout
            return lambda: {int(x) for x in out.split()}

        methods = [
            ("tether.prune.plan() in-process", tether_plan),
            ("tether prune --json (whole command)", tether_cli),
            ("ps -eo ... | awk (cron-style script)", ps_script),
        ]
        for label, src in src_trees:
            methods.append((f"tether prune --json ({label})", functools.partial(tether_cli, src)))
        if args.python_row:
            methods.append(
                ("tether prune --json (no native)", functools.partial(tether_cli, native=False))
            )
        for _name, fn in methods:  # warm-up: imports, dentry cache
            fn()
        for _ in range(args.repeat):
            for name, fn in methods:
                c0, t0 = cpu_seconds(), time.perf_counter()
                answer = fn()
                rows.setdefault(name, []).append(time.perf_counter() - t0)
                cpu.setdefault(name, []).append(cpu_seconds() - c0)
                found[name] = answer()
    finally:
        left = tracked.kill_leftovers()
        with contextlib.suppress(Exception):
            launcher.wait(timeout=30)
        for name in (ready, sessions, script):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        with contextlib.suppress(OSError):
            os.rmdir(tmp)
        if left:
            print(f"cleanup: killed {left} process(es) by pidfd", file=sys.stderr)

    print(
        f"prune scan-and-classify on a node with {total} processes: {args.jobs} jobs x "
        f"{per_job} processes (listed sessions), {strays} orphaned strays; median of "
        f"{args.repeat} (ms); {os.cpu_count()} cpus"
    )
    width = max(len(n) for n, _ in methods)
    print(
        f"{'method':<{width}}  {'median':>8}  {'min':>8}  {'max':>8}  {'cpu':>8}  {'strays':>6}  "
        "agrees"
    )
    print("-" * (width + 54))
    # Judged on the processes this bench started: other users' processes on a
    # shared node come and go between the runs of the methods.
    agree = {n: found[n] & ours == expected for n, _ in methods}
    for name, _ in methods:
        t = rows[name]
        print(
            f"{name:<{width}}  {median(t) * 1000:8.1f}  {min(t) * 1000:8.1f}  "
            f"{max(t) * 1000:8.1f}  {median(cpu[name]) * 1000:8.1f}  {len(found[name]):6d}  "
            f"{'yes' if agree[name] else 'NO'}"
        )
    foreign = found[methods[2][0]] - ours
    if foreign:
        print(f"(the script's last run also named {len(foreign)} other users' processes)")
    mine = median(rows[methods[0][0]])
    cli = median(rows[methods[1][0]])
    ps = median(rows[methods[2][0]])
    print("\ntargets (informational):")
    cli_cpu, ps_cpu = median(cpu[methods[1][0]]), median(cpu[methods[2][0]])
    print(f"  whole command <= the ps script: {cli / ps:.2f}x  {pass_miss(cli <= ps)}")
    print(f"  (CPU, median: {cli_cpu / ps_cpu:.2f}x  {pass_miss(cli_cpu <= ps_cpu)})")
    print(f"  plan() under 100 ms: {mine * 1000:.1f} ms  {pass_miss(mine < 0.1)}")
    print(f"  at least 5x faster than the ps script: {ps / mine:.1f}x  {pass_miss(ps >= 5 * mine)}")
    return 0 if all(agree.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
