"""Fan-out of ``true`` over OpenSSH: tether vs pdsh, clush and plain ssh (issue 15).

Every "host" is an ssh_config alias of one of two real sshd instances on
127.0.0.1 (tests/remote/sshd.py): every tool reads the same ``-F`` config, so
all of them get the same ciphers, key exchange and keys. Rows, interleaved in
each repetition so drift affects them alike:

- ``tether``: ``tether run -F CFG -q -w b[01-N] -f N -- true`` (the console
  script's module, end to end: interpreter start, bootstrap, report);
- ``pdsh``: ``pdsh -R ssh -f N -w b[01-N] true`` with
  ``PDSH_SSH_ARGS="-F CFG %h"`` (apt-get install pdsh);
- ``clush``: ``clush -f N -w b[01-N] -o "-F CFG" true``
  (pip install clustershell, in any venv: the bench only, not a dependency;
  found on PATH or with ``--clush PATH``);
- ``ssh``: N plain ``ssh -F CFG bXX true`` started together from here;
- ``ssh+py``: the same with ``python3 -S -c pass`` for ``true``: what starting
  the host's python costs a host (the floor of any engine that runs in a
  python of its own per job, as tether's does: its server CPU less this row's
  is what tether itself spends);
- ``base`` (with ``--baseline SRC``): ``tether`` again from another source
  tree (``PYTHONPATH=SRC``), e.g. this one with the remote package of an
  earlier commit, for a before/after from the same run; ``--baseline`` again
  adds ``base2``, ``base3``... (say, a tree with a change proposed elsewhere).

Wall time is from the command's start to its exit (for ``ssh``: the last
one's). **Server CPU** is everything the sshd servers and whatever ran under
them spent (sshd session processes, remote pythons, agents, watchdogs, jobs):
the servers are started in a cgroup of their own (cgroup v1 ``cpuacct``,
``cpuacct.usage``; else cgroup v2 ``cpu.stat`` ``usage_usec``) and the figure
is its delta across the run, after the cgroup is back to the sshd masters
alone. A process that outlived its run is counted in ``left`` and the run
waits for it (up to 5 s) before reading the figure. Per host = delta / N.
**Client CPU** is the tool's and everything it waited for (its ssh clients),
from this process's ``RUSAGE_CHILDREN``.

Targets (issue 15): at 50 hosts, tether's wall <= 1.5x pdsh's and server CPU
per host <= 50 ms; at 1 host, wall <= plain ssh + 100 ms.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "remote"))

from _common import median, pass_miss, raise_fd_limit
from sshd import SshLab, make_lab, sshd_available

TETHER = [sys.executable, "-m", "tether.cli"]
#: Source trees of the base, base2, ... rows (--baseline, set once by main).
BASELINE: dict[str, str] = {}
CPUACCT_V1 = "/sys/fs/cgroup/cpuacct"


class ServerCgroup:
    """A cgroup holding the sshd masters (and so every session and job under them)."""

    def __init__(self) -> None:
        self.path, self.v1 = self._create()

    @staticmethod
    def _create() -> tuple[str, bool]:
        name = f"tether-bench-fanout-{os.getpid()}"
        if os.path.exists(os.path.join(CPUACCT_V1, "cpuacct.usage")):
            path = os.path.join(CPUACCT_V1, name)
            os.mkdir(path)
            return path, True
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1] for line in f if line.split()[2] == "cgroup2"]
        if not mounts:
            raise SystemExit("needs a cgroup (v1 cpuacct or v2) to measure server CPU")
        path = os.path.join(mounts[0], name)
        os.mkdir(path)
        return path, False

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def procs(self) -> list[int]:
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]

    def cpu(self) -> float:
        """CPU seconds of everything that ran in the cgroup so far."""
        if self.v1:
            with open(os.path.join(self.path, "cpuacct.usage")) as f:
                return int(f.read()) / 1e9
        with open(os.path.join(self.path, "cpu.stat")) as f:
            for line in f:
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        raise RuntimeError("cpu.stat has no usage_usec")

    def remove(self) -> None:
        """Remove the cgroup once the stopped servers' last processes are gone."""
        deadline = time.monotonic() + 5
        while self.procs() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.procs():
            print(f"left in {self.path}: {self.procs()} (not removed)")
        else:
            os.rmdir(self.path)


def start_lab(base: Path, n: int, cg: ServerCgroup) -> tuple[SshLab, set[int]]:
    lab = make_lab(base / "lab")
    for name in ("s1", "s2"):
        server = lab.start(name)
        assert server.proc is not None
        cg.add(server.proc.pid)
    for i in range(1, n + 1):
        lab.alias(f"b{i:02d}", f"s{(i - 1) % 2 + 1}")
    masters = {s.proc.pid for s in lab.servers.values() if s.proc is not None}
    return lab, masters


def commands(tool: str, lab: SshLab, n: int, clush: str) -> list[list[str]]:
    cfg = lab.config_file
    hosts = f"b[01-{n:02d}]"
    if tool == "tether" or tool in BASELINE:
        return [[*TETHER, "run", "-F", cfg, "-q", "-w", hosts, "-f", str(n), "--", "true"]]
    if tool == "pdsh":
        return [["pdsh", "-R", "ssh", "-f", str(n), "-w", hosts, "true"]]
    if tool == "clush":
        return [[clush, "-f", str(n), "-w", hosts, "-o", f"-F {cfg}", "true"]]
    remote = ["python3", "-S", "-c", "pass"] if tool == "ssh+py" else ["true"]
    return [["ssh", "-F", cfg, "-T", f"b{i:02d}", *remote] for i in range(1, n + 1)]


def measure(
    tool: str, lab: SshLab, n: int, cg: ServerCgroup, masters: set[int], clush: str
) -> dict[str, float]:
    env = dict(os.environ, PDSH_SSH_ARGS=f"-F {lab.config_file} %h")
    if tool in BASELINE:
        env["PYTHONPATH"] = BASELINE[tool]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0, t0 = cg.cpu(), time.monotonic()
    procs = [
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
        for argv in commands(tool, lab, n, clush)
    ]  # fmt: skip
    errors = [p.communicate(timeout=300)[1] for p in procs]
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The tool and everything it waited for (its ssh clients): the client side.
    client = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    bad = [
        (p.returncode, e.decode(errors="replace")[-300:])
        for p, e in zip(procs, errors, strict=True)
        if p.returncode
    ]
    # Whatever the run left under the servers is still charged to it: wait
    # (bounded) until only the masters remain, then read the figure.
    deadline = time.monotonic() + 5
    left = set(cg.procs()) - masters
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = set(cg.procs()) - masters
    server = cg.cpu() - c0
    if bad:
        print(f"       ! {tool} {n}: {len(bad)} failed, e.g. {bad[0]}")
    return {
        "wall": wall,
        "server": server,
        "client": client,
        "left": float(len(left)),
        "failed": float(len(bad)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", default="1,50", help="fan-outs, e.g. 1,50")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clush", default=shutil.which("clush"), help="clush to run")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="a tether source tree (the dir holding tether/); again for more rows",
    )
    args = parser.parse_args()
    if not sshd_available() or os.geteuid() != 0:
        raise SystemExit("needs root and OpenSSH (apt-get install openssh-server)")
    tools = ["tether", "ssh", "ssh+py"]
    for i, tree in enumerate(args.baseline, 1):
        name = "base" if i == 1 else f"base{i}"
        BASELINE[name] = os.path.abspath(tree)
        tools.insert(i, name)
    if shutil.which("pdsh"):
        tools.append("pdsh")
    else:
        print("pdsh not found (apt-get install pdsh): no pdsh rows")
    if args.clush:
        tools.append("clush")
    else:
        print("clush not found (pip install clustershell, or --clush PATH): no clush rows")
    raise_fd_limit()
    counts = [int(x) for x in args.hosts.split(",") if x]
    base = Path(tempfile.mkdtemp(prefix="tether-bench-fanout-"))
    runtime = base / "runtime"
    runtime.mkdir(mode=0o700)
    os.environ["TETHER_RUNTIME_DIR"] = str(runtime)
    cg = ServerCgroup()
    lab, masters = start_lab(base, max(counts), cg)
    try:
        for tool in tools:  # warm: tether's first connection ships its engine
            measure(tool, lab, 1, cg, masters, args.clush)
        ssh_v = subprocess.run(["ssh", "-V"], check=False, capture_output=True, text=True)
        method = "cgroup v1 cpuacct" if cg.v1 else "cgroup v2 cpu.stat"
        # Every agent scans /proc when its job's leader exits: the machine's
        # process count is part of the conditions.
        nprocs = sum(1 for n in os.listdir("/proc") if n.isdigit())
        print(f"{nprocs} processes on the machine, load average "
              f"{os.getloadavg()[0]:.1f} before the runs")  # fmt: skip
        print(f"{ssh_v.stderr.strip()}; {os.cpu_count()} cores; median of {args.repeat}; "
              f"server CPU from a {method} around the sshd servers")  # fmt: skip
        # Hosts whose python has this one's platform tag load the native
        # spawn shipped with the engine (no ctypes there): part of the conditions.
        from tether.remote.bootstrap import _read_sources

        native = [name for name, _ in _read_sources() if name.endswith(".so")]
        print(f"tether row: the engine ships {', '.join(native) or 'no native module'}")
        rows: dict[tuple[str, int], list[dict[str, float]]] = {}
        for n in counts:
            for _ in range(args.repeat):
                for tool in tools:
                    rows.setdefault((tool, n), []).append(
                        measure(tool, lab, n, cg, masters, args.clush)
                    )
        print()
        print(f"{'hosts':>5}  {'tool':<7} {'wall':>9} {'server CPU':>11} {'per host':>9} "
              f"{'client CPU':>11} {'failed':>6} {'left':>4}")  # fmt: skip
        med: dict[tuple[str, int], tuple[float, float]] = {}
        failed = any(r["failed"] or r["left"] for rs in rows.values() for r in rs)
        for n in counts:
            for tool in tools:
                rs = rows[(tool, n)]
                wall, server = median([r["wall"] for r in rs]), median([r["server"] for r in rs])
                client = median([r["client"] for r in rs])
                med[(tool, n)] = wall, server
                print(f"{n:>5}  {tool:<7} {wall * 1000:7.0f}ms {server * 1000:9.0f}ms "
                      f"{server / n * 1000:7.1f}ms {client * 1000:9.0f}ms "
                      f"{max(r['failed'] for r in rs):>6.0f} "
                      f"{max(r['left'] for r in rs):>4.0f}")  # fmt: skip
        print()
        if failed:
            print("a run failed or left processes behind: every target below is a MISS")
        for n in counts:
            wall, server = med[("tether", n)]
            for name in BASELINE:
                b_wall, b_server = med[(name, n)]
                print(f"info: {n} hosts, tether / {name}: wall {wall / b_wall:.2f}x, "
                      f"server CPU {server / b_server:.2f}x")  # fmt: skip
            if n > 1 and ("pdsh", n) in med:
                ratio = wall / med[("pdsh", n)][0]
                print(f"target: {n} hosts, tether wall <= 1.5x pdsh ({ratio:.2f}x): "
                      f"{pass_miss(ratio <= 1.5 and not failed)}")  # fmt: skip
            if n > 1 and ("ssh+py", n) in med:
                floor = med[("ssh+py", n)][1] / n * 1000
                above = server / n * 1000 - floor
                print(f"info: {n} hosts, server CPU a host: a bare python3 -S per host "
                      f"{floor:.1f} ms; tether above it {above:.1f} ms")  # fmt: skip
            if n > 1:
                per = server / n * 1000
                print(f"target: {n} hosts, server CPU per host <= 50 ms ({per:.1f} ms): "
                      f"{pass_miss(per <= 50 and not failed)}")  # fmt: skip
            else:
                extra = (wall - med[("ssh", n)][0]) * 1000
                print(f"target: 1 host, tether wall <= plain ssh + 100 ms (+{extra:.0f} ms): "
                      f"{pass_miss(extra <= 100 and not failed)}")  # fmt: skip
    finally:
        lab.stop()
        cg.remove()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
