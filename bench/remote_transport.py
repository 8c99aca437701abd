"""SSH transports for remote fan-out: the OpenSSH client (as tether does it) vs asyncssh.

Issue 4: the OpenSSH client by default (the user's ~/.ssh/config just works),
asyncssh as an optional transport for large fan-out *if it measures better*.
This measures it, against real sshd instances on 127.0.0.1 (two servers, each
with its own host key and config; hosts ``b01..bNN`` are ssh_config aliases of
them, see tests/remote/sshd.py), with the same bootstrap and frames:

- ``openssh``: tether's own client code in one process: one
  :class:`tether.remote.client.HostRun` per host (one ``ssh`` process, the
  real ``Connection.handshake()``, SPEC, frames until RESULT), all hosts at
  once.
- ``openssh/x25519``: the same with ``-o KexAlgorithms=curve25519-sha256``.
  OpenSSH 9.0-9.9 clients negotiate sntrup761x25519 (post-quantum) by default,
  whose client-side key generation dominates the ssh process's CPU; asyncssh
  (without liboqs) has no sntrup761 and gets curve25519-sha256 from such a
  server. This row compares the transports at the same key exchange.
- ``openssh cli``: the same end to end, ``tether run -w b[01-NN] -f NN -- true``
  as a subprocess (adds interpreter start-up and imports).
- ``asyncssh``: one asyncio loop, one asyncssh connection per host,
  ``conn.create_process(REMOTE_COMMAND)``, and the same exchange as
  ``Connection.handshake()`` + ``HostRun`` re-implemented here on asyncssh's
  streams with tether.remote.bootstrap's blocks and tether.remote.protocol's
  frames. It reads the same ssh_config (``config=[...]``: HostName, Port,
  User, IdentityFile, UserKnownHostsFile, SendEnv).

Each measured run is a fresh worker process (this script with ``--worker``):
"wall" and "run CPU" cover connect -> every RESULT -> every connection closed,
inside the worker (run CPU = the worker's utime+stime plus that of its reaped
ssh children, from getrusage); "process CPU" is the worker's whole life from
``os.wait4`` (interpreter start, imports); "peak RSS" is the worker's own
VmHWM (the Python process alone: ssh processes are in the cancel rows' memory;
not wait4's ru_maxrss, which keeps the forking parent's size across exec).
"server CPU" is what the loopback
sshd processes and everything under them (remote pythons, agents, jobs) spent,
from the sshd masters' /proc stat (utime+stime+cutime+cstime): on loopback
they share the 2 cores with the client, so it bounds the wall time.

Cancel rows run ``sleep 60`` on every host, wait until every job has STARTED,
sample the client side's memory (RSS and PSS of the worker and its ssh
processes, /proc/PID/smaps_rollup: the cost of holding N jobs), let the jobs
run 0.5 s more (see SETTLE), then send the CANCEL frame to all and time until
every RESULT is in (and every connection closed); every report must be
complete, and every member it lists is checked gone by identity (pid + start
time).

Every process a worker learns of (ssh clients, remote agents, job leaders and
members) is written to an identity file; after the worker is reaped, whatever
is still alive is counted ("left") and SIGKILLed by identity. The sshd servers
are this script's children, stopped by pid. Nothing is killed by name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import median, pass_miss, raise_fd_limit, starttime
from remote_cancel import TETHER, alive, cleanup
from sshd import SshLab, make_lab, sshd_available

from tether.policy import Policy
from tether.process import starttime_to_epoch
from tether.remote import protocol
from tether.remote.bootstrap import REMOTE_COMMAND, package_zip, stage1_block

POLICY = "TERM,5s,KILL"
#: OpenSSH 9.0-9.9 negotiate sntrup761x25519 (post-quantum, costly to generate a
#: key for); asyncssh without liboqs cannot, and gets curve25519-sha256 from
#: such a server. This row gives the OpenSSH client the same key exchange.
X25519 = "KexAlgorithms=curve25519-sha256"
JOBS = {"true": ("true",), "sleep": ("sleep", "60")}
WORKER_TIMEOUT = 300.0
#: Cancel rows let every job run this long after the last STARTED: a cancel
#: within milliseconds of the start can catch the leader still in tether's
#: cgroup shim (``sh -c 'echo 0 >cgroup.procs; exec "$@"'``), where the engine
#: currently reports it "still alive after the last step" and it survives.
SETTLE = 0.5


# -- measurement helpers ---------------------------------------------------------


def cpu_now() -> float:
    """utime+stime of this process and of its reaped children."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """Summed Rss and Pss (kB) of these processes (/proc/PID/smaps_rollup)."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def stat_identity(pid: int) -> list[int] | None:
    st = starttime(pid)
    return None if st is None else [pid, st]


def member_identity(member: dict[str, Any]) -> list[int] | None:
    """A report member (start time as Unix time) as [pid, starttime ticks], if still there."""
    ident = stat_identity(member["pid"])
    if ident is None or abs(starttime_to_epoch(ident[1]) - member["start_time"]) > 0.011:
        return None  # gone (its pid is free or someone else's)
    return ident


def sshd_cpu(lab: SshLab) -> float:
    """CPU seconds of the sshd masters and their reaped descendants."""
    total = 0
    for server in lab.servers.values():
        assert server.proc is not None
        with open(f"/proc/{server.proc.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


class Recorder:
    """What a worker measures and which identities it saw (written as it goes)."""

    def __init__(self, ids_file: str) -> None:
        self._ids = open(ids_file, "a")  # noqa: SIM115 (kept open for the run)
        self._lock = threading.Lock()
        self.out: dict[str, Any] = {"errors": [], "ok": 0, "complete": 0, "members": []}

    def identity(self, ident: object) -> None:
        if isinstance(ident, list) and len(ident) == 2:
            with self._lock:
                self._ids.write(f"{ident[0]} {ident[1]}\n")
                self._ids.flush()

    def result(self, label: str, data: dict[str, Any] | None, error: str | None) -> None:
        with self._lock:
            if error is not None or data is None:
                self.out["errors"].append(f"{label}: {error}")
                return
            if data.get("returncode") == 0:
                self.out["ok"] += 1
            report = data.get("report") or {}
            if report.get("complete"):
                self.out["complete"] += 1
            elif report:
                left = [(v["pid"], v["cmdline"], v["reason"]) for v in report["survivors"]]
                self.out["errors"].append(f"{label}: report not complete: {left}")
            members = [i for m in report.get("members", ()) if (i := member_identity(m))]
            self.out["members"].extend(members)
        for ident in members:
            self.identity(ident)

    def finish(self) -> None:
        members = [(int(a), int(b)) for a, b in self.out.pop("members")]
        self.out["survivors"] = sum(1 for i in members if alive(i))
        with open("/proc/self/status") as f:
            hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")]
        self.out["hwm_kb"] = int(hwm[0])
        self._ids.close()
        print(json.dumps(self.out), flush=True)


# -- worker: the OpenSSH client through tether's own code ----------------------


def openssh_worker(config: str, n: int, job: str, rec: Recorder, options: list[str]) -> None:
    from tether.remote.client import HostRun, OutputSink, SshOptions
    from tether.remote.hostlist import Target
    from tether.spec import JobSpec

    package_zip()  # both workers start with the zip built
    spec = JobSpec(argv=JOBS[job], policy=Policy.parse(POLICY))
    ssh = SshOptions(options=tuple(options), config_file=config)
    devnull = open(os.devnull, "wb")  # noqa: SIM115
    sink = OutputSink(True, stdout=devnull, stderr=devnull)
    changed = threading.Condition()

    def on_event() -> None:
        with changed:
            changed.notify_all()

    runs = [HostRun(Target(f"b{i:02d}"), spec, ssh, sink, on_event) for i in range(1, n + 1)]
    t0, c0 = time.monotonic(), cpu_now()
    for run in runs:
        run.start()
    if job == "sleep":
        with changed:
            changed.wait_for(lambda: all(r.job_id is not None or r.done.is_set() for r in runs))
        ssh_pids = [r.conn.proc.pid for r in runs if r.conn is not None]
        for pid in ssh_pids:
            rec.identity(stat_identity(pid))
        for r in runs:
            rec.identity(r.result.remote.get("identity"))
        rec.out["rss_kb"], rec.out["pss_kb"] = memory_kb([os.getpid(), *ssh_pids])
        rec.out["threads"] = threading.active_count()
        time.sleep(SETTLE)
        t1 = time.monotonic()
        for run in runs:
            run.cancel("bench: cancel")
    for run in runs:
        run.thread.join()
    t_end, c_end = time.monotonic(), cpu_now()
    for run in runs:
        r = run.result
        data = None
        if r.error is None:
            data = {"returncode": r.returncode, "report": r.report}
        rec.result(run.label, data, r.error)
    rec.out["wall"], rec.out["cpu"] = t_end - t0, c_end - c0
    if job == "sleep":
        rec.out["cancel"] = t_end - t1


# -- worker: asyncssh, the same bootstrap and frames ----------------------------


class _Host:
    """One host over asyncssh: handshake, SPEC, frames until RESULT."""

    def __init__(self, asyncssh: Any, alias: str, config: str, rec: Recorder) -> None:
        self.asyncssh = asyncssh
        self.alias = alias
        self.config = config
        self.rec = rec
        self.started = asyncio.Event()
        self.proc: Any = None

    async def read_frame(self) -> tuple[bytes, bytes]:
        kind, size = protocol.parse_header(await self.proc.stdout.readexactly(protocol.HEADER_SIZE))
        return kind, await self.proc.stdout.readexactly(size)

    async def handshake(self) -> dict[str, Any]:
        """What Connection.handshake() does, on asyncssh's streams."""
        import tether

        banner = b""
        for _ in range(200):
            banner = await self.proc.stdout.readline()
            if not banner or banner.startswith((b"TETHER-PY ", b"TETHER-NO-PYTHON")):
                break
        if not banner.startswith(b"TETHER-PY "):
            raise RuntimeError(f"no bootstrap banner ({banner[:80]!r})")
        blob, digest = package_zip()
        offer = {"version": tether.__version__, "protocol": protocol.PROTOCOL, "sha256": digest}
        self.proc.stdin.write(stage1_block() + json.dumps(offer).encode() + b"\n")
        mode = json.loads(await self.proc.stdout.readline())
        if mode.get("mode") == "ship":
            self.proc.stdin.write(b"%d\n" % len(blob) + blob)
        elif mode.get("mode") not in ("installed", "cached"):
            raise RuntimeError(f"stage 1 said {mode!r}")
        kind, payload = await self.read_frame()
        if kind != protocol.HELLO:
            raise RuntimeError(f"expected HELLO, got {kind!r}")
        return protocol.load_json(payload)

    async def run(self, argv: tuple[str, ...]) -> None:
        try:
            async with await self.asyncssh.connect(self.alias, config=[self.config]) as conn:
                self.proc = await conn.create_process(REMOTE_COMMAND, encoding=None)
                hello = await self.handshake()
                self.rec.identity(hello.get("identity"))
                spec = {
                    "op": "run",
                    "argv": protocol.encode_argv(argv),
                    "policy": Policy.parse(POLICY).to_dict(),
                    "timeout": None,
                    "trackers": "auto",
                    "env": {},
                }
                self.proc.stdin.write(protocol.json_frame(protocol.SPEC, spec))
                while True:
                    kind, payload = await self.read_frame()
                    if kind == protocol.STARTED:
                        self.rec.identity(protocol.load_json(payload).get("leader"))
                        self.started.set()
                    elif kind == protocol.ERROR:
                        raise RuntimeError(protocol.load_json(payload).get("message"))
                    elif kind == protocol.RESULT:
                        self.rec.result(self.alias, protocol.load_json(payload), None)
                        break
                self.proc.stdin.write_eof()
                await self.proc.wait_closed()
        except Exception as err:
            self.rec.result(self.alias, None, f"{type(err).__name__}: {err}")
        finally:
            self.started.set()

    def cancel(self) -> None:
        if self.proc is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.write(protocol.json_frame(protocol.CANCEL, {"reason": "bench"}))


def asyncssh_worker(config: str, n: int, job: str, rec: Recorder, options: list[str]) -> None:
    import asyncssh  # checked by the parent before any worker starts

    assert not options, "-o options are OpenSSH's"

    package_zip()

    async def main() -> None:
        hosts = [_Host(asyncssh, f"b{i:02d}", config, rec) for i in range(1, n + 1)]
        t0, c0 = time.monotonic(), cpu_now()
        tasks = [asyncio.create_task(h.run(JOBS[job])) for h in hosts]
        if job == "sleep":
            await asyncio.gather(*(h.started.wait() for h in hosts))
            rec.out["rss_kb"], rec.out["pss_kb"] = memory_kb([os.getpid()])
            rec.out["threads"] = threading.active_count()
            await asyncio.sleep(SETTLE)
            t1 = time.monotonic()
            for h in hosts:
                h.cancel()
        await asyncio.gather(*tasks)
        t_end, c_end = time.monotonic(), cpu_now()
        rec.out["wall"], rec.out["cpu"] = t_end - t0, c_end - c0
        if job == "sleep":
            rec.out["cancel"] = t_end - t1

    asyncio.run(asyncio.wait_for(main(), WORKER_TIMEOUT - 30))


# -- the parent: workers by identity, the table ---------------------------------


def have_asyncssh() -> str | None:
    try:
        import asyncssh
    except ImportError:
        return None
    return str(asyncssh.__version__)


def read_ids(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    lines = set(path.read_text().splitlines())  # a leader is also a member
    return [(int(a), int(b)) for a, b in (line.split() for line in lines)]


def reap(proc: subprocess.Popen[bytes], timeout: float) -> resource.struct_rusage:
    """Wait for our child (SIGKILL it by pid after ``timeout``); its rusage."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() > deadline:
            proc.kill()  # our unreaped child: the pid cannot have been reused
            deadline = float("inf")
        time.sleep(0.01)


def measure(lab: SshLab, work: Path, kind: str, n: int, job: str) -> dict[str, Any]:
    ids = work / f"ids-{kind.replace('/', '-').replace(' ', '-')}-{n}-{job}"
    ids.unlink(missing_ok=True)
    s0, t0 = sshd_cpu(lab), time.monotonic()
    if kind == "openssh cli":
        argv = [*TETHER, "run", "-F", lab.config_file, "-q", "-w", f"b[01-{n:02d}]",
                "-f", str(n), "--policy", POLICY, "--", *JOBS[job]]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    else:
        argv = [sys.executable, __file__, "--worker", kind.split("/", maxsplit=1)[0], "--config",
                lab.config_file, "--n", str(n), "--job", job, "--ids", str(ids)]  # fmt: skip
        if kind == "openssh/x25519":
            argv += ["-o", X25519]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = b"", b""
    timer = threading.Timer(WORKER_TIMEOUT, proc.kill)  # our child, by pid
    timer.start()
    try:
        if proc.stdout is not None:
            out = proc.stdout.read()
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        timer.cancel()
    usage = reap(proc, 30)
    wall_total = time.monotonic() - t0
    row: dict[str, Any] = {"errors": [], "survivors": 0}
    if kind == "openssh cli":
        row.update(wall=wall_total, cpu=usage.ru_utime + usage.ru_stime)
        row["ok"] = n if proc.returncode == 0 else 0
        if proc.returncode != 0:
            row["errors"].append(f"tether exited {proc.returncode}: {err.decode()[-300:]}")
    elif out.strip():
        row.update(json.loads(out.splitlines()[-1]))
    else:
        row["errors"].append(f"worker exited {proc.returncode}: {err.decode()[-500:]}")
    row["proc_cpu"] = usage.ru_utime + usage.ru_stime
    # Settle: the agents' watchdogs end after their jobs; then count server CPU.
    time.sleep(0.3)
    row["server_cpu"] = sshd_cpu(lab) - s0
    idents = read_ids(ids)
    left = [i for i in idents if alive(i)]
    if left:
        time.sleep(1.0)  # an agent may still be exiting after its RESULT
        left = [i for i in left if alive(i)]
    row["left"] = len(left)
    cleanup(left)
    return row


def start_lab(base: Path, n: int) -> SshLab:
    lab = make_lab(base / "lab")
    for name in ("s1", "s2"):
        lab.start(name)
    for i in range(1, n + 1):
        lab.alias(f"b{i:02d}", f"s{(i - 1) % 2 + 1}")
    return lab


def summarize(rows: list[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in rows if key in r])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", default="1,20,50", help="fan-outs, e.g. 1,20,50")
    parser.add_argument("--cancel-hosts", default="1,20,50", help="fan-outs for cancel rows")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("-o", dest="options", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        raise_fd_limit()
        rec = Recorder(args.ids)
        fn = openssh_worker if args.worker == "openssh" else asyncssh_worker
        fn(args.config, args.n, args.job, rec, args.options)
        rec.finish()
        return
    if not sshd_available() or os.geteuid() != 0:
        raise SystemExit("needs root and OpenSSH (apt-get install openssh-server)")
    version = have_asyncssh()
    if version is None:
        print("asyncssh is not installed: `pip install asyncssh` (for this benchmark only;")
        print("it is not a dependency of tether). Measuring the OpenSSH client alone.")
    raise_fd_limit()
    counts = [int(x) for x in args.hosts.split(",") if x]
    cancel_counts = [int(x) for x in args.cancel_hosts.split(",") if x]
    kinds = ["openssh", "openssh/x25519", "openssh cli"] + (["asyncssh"] if version else [])
    base = Path(tempfile.mkdtemp(prefix="tether-bench-transport-"))
    runtime = base / "runtime"
    runtime.mkdir(mode=0o700)
    os.environ["TETHER_RUNTIME_DIR"] = str(runtime)
    work = base / "work"
    work.mkdir()
    lab = start_lab(base, max(counts + cancel_counts))
    try:
        # Warm the remote zip cache (the first connection ships the engine).
        warm = measure(lab, work, "openssh", 1, "true")
        if warm["errors"]:
            raise SystemExit(f"warm-up failed: {warm['errors']}")
        ssh_v = subprocess.run(["ssh", "-V"], check=False, capture_output=True, text=True)
        print(f"{ssh_v.stderr.strip()}; asyncssh {version or 'not installed'}; "
              f"{os.cpu_count()} cores; median of {args.repeat}")  # fmt: skip
        print()
        print("fan-out of `true` (connect, bootstrap, HELLO, SPEC, RESULT, close)")
        print(f"{'hosts':>5}  {'transport':<14} {'wall':>8} {'run CPU':>8} {'per host':>9} "
              f"{'proc CPU':>9} {'peak RSS':>8} {'server CPU':>10} {'ok':>5} "
              f"{'left':>4}")  # fmt: skip
        results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        plan = [(n, "true") for n in counts] + [(n, "sleep") for n in cancel_counts]
        for n, job in plan:
            for _ in range(args.repeat):
                for kind in kinds:  # interleaved, so drift affects all alike
                    if job == "sleep" and kind == "openssh cli":
                        continue
                    row = measure(lab, work, kind, n, job)
                    results.setdefault((kind, n, job), []).append(row)
                    for e in row["errors"][:3]:
                        print(f"       ! {kind} {n}: {e}")
        for n in counts:
            for kind in kinds:
                rows = results[(kind, n, "true")]
                cpu, hwm = summarize(rows, "cpu"), summarize(rows, "hwm_kb")
                peak = "-" if kind == "openssh cli" else f"{hwm / 1024:.0f}MB"
                print(f"{n:>5}  {kind:<14} {summarize(rows, 'wall'):7.2f}s {cpu:7.2f}s "
                      f"{cpu / n * 1000:7.1f}ms {summarize(rows, 'proc_cpu'):8.2f}s {peak:>8} "
                      f"{summarize(rows, 'server_cpu'):9.2f}s "
                      f"{min(r.get('ok', 0) for r in rows):>5} "
                      f"{max(r['left'] for r in rows):>4}")  # fmt: skip
        print()
        print("cancel-to-empty of `sleep 60` (CANCEL to all -> every RESULT, connections closed);")
        print("memory of the client side while holding N running jobs")
        print(f"{'hosts':>5}  {'transport':<14} {'cancel':>8} {'complete':>8} {'surv.':>5} "
              f"{'RSS':>8} {'PSS':>8} {'threads':>7} {'left':>4}")  # fmt: skip
        for n in cancel_counts:
            for kind in kinds:
                if kind == "openssh cli":
                    continue
                rows = results[(kind, n, "sleep")]
                print(f"{n:>5}  {kind:<14} {summarize(rows, 'cancel') * 1000:6.0f}ms "
                      f"{min(r.get('complete', 0) for r in rows):>8} "
                      f"{max(r['survivors'] for r in rows):>5} "
                      f"{summarize(rows, 'rss_kb') / 1024:6.1f}MB "
                      f"{summarize(rows, 'pss_kb') / 1024:6.1f}MB "
                      f"{summarize(rows, 'threads'):>7.0f} "
                      f"{max(r['left'] for r in rows):>4}")  # fmt: skip
        print()
        verdicts(results, kinds, max(counts), max(cancel_counts))
    finally:
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)


def verdicts(
    results: dict[tuple[str, int, str], list[dict[str, Any]]], kinds: list[str], n: int, nc: int
) -> None:
    for kind in kinds:
        if kind == "openssh cli":
            continue
        rows = results[(kind, nc, "sleep")]
        ok = summarize(rows, "cancel") < 2.0 and all(
            r.get("complete") == nc and r["survivors"] == 0 for r in rows
        )
        print(f"target: {kind}: {nc} hosts cancelled, reports complete, < 2 s: {pass_miss(ok)}")
    if "asyncssh" not in kinds:
        return
    assh = results[("asyncssh", n, "true")]
    for base in ("openssh", "openssh/x25519"):
        for key, what in (("wall", "wall time"), ("cpu", "client run CPU")):
            ratio = summarize(results[(base, n, "true")], key) / summarize(assh, key)
            print(f"target: asyncssh >= 1.5x better than {base} on {what} at {n} hosts "
                  f"({ratio:.2f}x): {pass_miss(ratio >= 1.5)}")  # fmt: skip
    held = summarize(results[("openssh", nc, "sleep")], "pss_kb") / summarize(
        results[("asyncssh", nc, "sleep")], "pss_kb"
    )
    print(f"info: client PSS holding {nc} jobs, OpenSSH / asyncssh: {held:.2f}x")


if __name__ == "__main__":
    main()
