"""The tether demo: a job whose tree tries every common way out, cancelled.

The job starts a double-forked daemon (re-parented away from its parent), a
child that leaves the session with setsid, a process that ignores SIGTERM and
one that clears its environment. `tether run --timeout` cancels it, the report
shows every process found and how it ended, and the demo then checks, by
(pid, start time), that not one of them is still alive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

JOB = r"""
echo "job: leader $$ starting its tree"
( sleep 300 & ) ;                                  # double fork: re-parented daemon
setsid sleep 301 &                                 # leaves the session and process group
sh -c 'trap "" TERM; while :; do sleep 1; done' &  # ignores SIGTERM
env -i /bin/sleep 302 &                            # no environment, so no cookie
sleep 1
echo "job: tree started, now waiting forever"
wait
"""


def alive(pid: int, start_time: float) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    fields = data[data.rindex(b")") + 2 :].split()
    ticks = int(fields[19])
    with open("/proc/stat", "rb") as f:
        btime = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
    same = abs(btime + ticks / os.sysconf("SC_CLK_TCK") - start_time) < 0.05
    return same and fields[0] != b"Z"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "report.json")
        cmd = [
            sys.executable, "-m", "tether.cli", "run",
            "--timeout", "2s", "--policy", "TERM,2s,KILL", "--json-file", report_path,
            "--", "sh", "-c", JOB,
        ]  # fmt: skip
        print("$ tether run --timeout 2s --policy TERM,2s,KILL --json-file r.json -- sh -c JOB")
        sys.stdout.flush()
        done = subprocess.run(cmd, check=False)
        sys.stderr.flush()
        print(f"tether run exited with {done.returncode} (124 = timed out, as coreutils timeout)")
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    escapes = {"sleep 300": "double-forked daemon", "sleep 301": "setsid child",
               "trap": "TERM-ignoring process", "/bin/sleep 302": "env -i child"}  # fmt: skip
    found = {
        what: [
            m for m in report["members"] if key in m["cmdline"] and "its tree" not in m["cmdline"]
        ]
        for key, what in escapes.items()
    }
    failures = [what for what, ms in found.items() if not ms]
    survivors = [m for m in report["members"] if alive(m["pid"], m["start_time"])]
    print()
    rows = [(what, m) for what, ms in found.items() for m in ms]
    for what, m in rows:
        print(f"  {what:<22} pid {m['pid']:<7} ended by {m['ended_by'] or '-':<4}  "
              f"found by {','.join(m['found_by'])}")  # fmt: skip
    if done.returncode != 124:
        failures.append(f"exit status {done.returncode}, expected 124")
    if not report["complete"]:
        failures.append("the kernel did not confirm the tree empty")
    if survivors:
        failures.append(f"still alive: {[m['pid'] for m in survivors]}")
    if failures:
        print("DEMO FAILED: " + "; ".join(failures))
        return 1
    print(f"\nOK: {len(report['members'])} processes found, every one ended, none survived.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
