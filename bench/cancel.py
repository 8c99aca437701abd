"""Cancel-to-empty time for trees of 1, 100 and 1000 processes.

Compares, in the same run and on the same tree shape (a Python launcher that
forks N-1 sleeping children and reports ready through a file):

  tether, cgroup        tether.start(trackers="auto") ... job.cancel()
  tether, no cgroup     tether.start(trackers="session,cookie,walk") ... job.cancel()
  killpg + wait         os.killpg(pgid, SIGKILL), then scan /proc until no live
                        (non-zombie) process has that pgid
  psutil recipe         Process(pid).children(recursive=True), kill each,
                        psutil.wait_procs
  raw cgroup.kill       own cgroup under the cgroup2 mount, write cgroup.kill,
                        wait (POLLPRI) for "populated 0" in cgroup.events

The clock runs from the cancel call until the tree is empty: every process
of it has exited (the method's own test: the cancel call returned, no live
member of the group, cgroup "populated 0"; a zombie counts as exited, as it
does for pidfds and "populated"), and, in the cgroup rows, has been reaped.
With a cgroup, tether's tree runs under its job keeper, a subreaper that
reaps the orphans as they exit, on the other CPU during the teardown (they
are usually all reaped when the cancel call returns); raw cgroup.kill's tree
runs under a plain subreaper of the bench's (REAPER: os.wait() in a loop).
Both clocks stop once every process is reaped. Before stop 23 the raw tree's
orphans went to pid 1, which reaps lazily on some machines (a Firecracker
init every ~2 s; this machine's init not within 0.5 s), so the raw row left
its 999 zombies' teardown unpaid while tether's paid it. Reaped is proven by
each process's pidfd (opened when the tree was ready): pidfd_send_signal(fd,
0) gives ESRCH once the pid is released, and succeeds on a zombie. The time
to "exited" alone is printed as well. The rows without a cgroup have no
subreaper (tether's trackers are "session,cookie,walk", killpg's and
psutil's trees are plain children): their orphans go to pid 1 in every row,
and their clock stops at "exited", as before (waiting for kill(-pgid, 0) to
fail would time pid 1, not the kill). After each trial every process of the
tree is checked by identity: "left" counts processes still alive when the
call returned; they are then SIGKILLed through their pidfd. Nothing is
killed by name.

With ``--src LABEL=DIR`` (repeatable; DIR a tether source tree, e.g. a
worktree's src/ with its extensions built in place) the tether rows are
run again, in the same rounds, by a worker process that imports tether from
DIR: an A/B of two versions under the same load, named "... [LABEL]".

    python3 bench/cancel.py [--repeat 5] [--sizes 1,100,1000] [--src LABEL=DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
from _common import (
    CGROUP_SHIM,
    Tracked,
    Tree,
    cgroup2_mount,
    compile_trees,
    median,
    pass_miss,
    raise_fd_limit,
    reap,
)

import tether

TRACKED = Tracked()
RAW_CGROUPS: list[str] = []

# A plain subreaper for the raw cgroup.kill tree, as tether's job keeper is
# for tether's: it starts argv in a new session and reaps every child,
# orphans included, until it has none left.
REAPER = r"""
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    os._exit(125)
os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, setsid=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        os._exit(0)
"""


def start_reaped(argv: list[str]) -> subprocess.Popen[bytes]:
    """``argv`` in a session of its own under the REAPER subreaper."""
    return subprocess.Popen(
        [sys.executable, "-c", REAPER, *argv], start_new_session=True, stdin=subprocess.DEVNULL
    )


def wait_reaped(deadline: float = 30.0) -> None:
    """Until every tracked process is reaped (its pid released): a zombie
    still takes signal 0 through its pidfd, a reaped process gives ESRCH."""
    left = list(TRACKED.fds)
    end = time.perf_counter() + deadline
    while left:
        still = []
        for fd in left:
            try:
                signal.pidfd_send_signal(fd, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            still.append(fd)
        left = still
        if left:
            if time.perf_counter() > end:
                raise RuntimeError(f"{len(left)} process(es) not reaped after {deadline}s")
            time.sleep(0.0002)


class Result:
    def __init__(self) -> None:
        self.times: list[float] = []  # to every process exited and reaped
        self.exited: list[float] = []  # to every process exited (zombies counted as gone)
        self.left = 0  # processes alive when the cancel call returned
        self.incomplete = 0  # cancel said the tree was not empty
        self.found: list[int] = []  # members the tracker reported (tether only)
        # CPU of the cancelling thread (tether only): what tether itself
        # spends, which the shared machine's load sways far less than wall.
        self.cpu: list[float] = []


def _check(res: Result, t0: float, *, reaped: bool = False) -> None:
    """The tree has exited (the method's own test, just passed): count the
    live; with ``reaped``, stop the clock once every process is also reaped."""
    res.exited.append(time.perf_counter() - t0)
    res.left += len(TRACKED.alive())
    if reaped:
        wait_reaped()
        res.times.append(time.perf_counter() - t0)
    else:
        res.times.append(res.exited[-1])


def trial_tether(n: int, res: Result, trackers: str, policy: str) -> None:
    tree = Tree(n, TRACKED)
    job = tether.start(tree.argv, trackers=trackers, policy=policy, stdin=subprocess.DEVNULL)
    try:
        tree.wait_ready(job.pid)
        c0, t0 = time.thread_time(), time.perf_counter()
        report = job.cancel("bench")
        res.cpu.append(time.thread_time() - c0)
        # With a cgroup ("auto"), the job keeper is the tree's subreaper.
        _check(res, t0, reaped=trackers == "auto")
        res.incomplete += not report.complete
        res.found.append(len(report.members))
    finally:
        if job.report is None:
            job.cancel("bench cleanup")
        TRACKED.kill_leftovers()
        tree.remove_files()


class Worker:
    """A process that runs :func:`trial_tether` with the tether of another
    source tree (PYTHONPATH), one trial per request: its clock and CPU are
    read there, around the same call, as in this process."""

    def __init__(self, src: str) -> None:
        env = dict(os.environ, PYTHONPATH=src)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def trial(self, n: int, res: Result, trackers: str, policy: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([n, trackers, policy]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for PYTHONPATH {self.proc.args} died")
        got = json.loads(line)
        for key in ("times", "exited", "found", "cpu"):
            getattr(res, key).extend(got[key])
        res.left += got["left"]
        res.incomplete += got["incomplete"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=30)


def worker() -> int:
    """The :class:`Worker` side: a trial per line of stdin, its Result as a
    JSON line. The trees get stderr as their stdout: the results' pipe is
    this process's alone."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    raise_fd_limit()
    try:
        for line in sys.stdin:
            n, trackers, policy = json.loads(line)
            res = Result()
            trial_tether(n, res, trackers, policy)
            out.write(json.dumps(vars(res)) + "\n")
            out.flush()
    finally:
        TRACKED.kill_leftovers()
    return 0


def _live_in_pgid(pgid: int) -> bool:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(b")") + 2 :].split()
        if int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
            return True
    return False


def trial_killpg(n: int, res: Result) -> None:
    tree = Tree(n, TRACKED)
    p = subprocess.Popen(tree.argv, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        tree.wait_ready(p.pid)
        t0 = time.perf_counter()
        os.killpg(p.pid, signal.SIGKILL)
        while True:
            p.poll()
            if not _live_in_pgid(p.pid):
                break
            time.sleep(0.001)
        _check(res, t0)
    finally:
        TRACKED.kill_leftovers()
        reap(p)
        tree.remove_files()


def trial_psutil(n: int, res: Result) -> None:
    tree = Tree(n, TRACKED)
    p = subprocess.Popen(tree.argv, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        tree.wait_ready(p.pid)
        t0 = time.perf_counter()
        parent = psutil.Process(p.pid)
        procs = [parent, *parent.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        _gone, alive = psutil.wait_procs(procs, timeout=30)
        _check(res, t0)
        res.incomplete += bool(alive)
        res.found.append(len(procs))
    finally:
        TRACKED.kill_leftovers()
        reap(p)
        tree.remove_files()


def _events(fd: int) -> dict[str, int]:
    data = os.pread(fd, 4096, 0)
    return {k.decode(): int(v) for k, v in (line.split() for line in data.splitlines())}


def _rmdir(path: str) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def trial_raw_cgroup(n: int, res: Result, mount: str) -> None:
    tree = Tree(n, TRACKED)
    path = os.path.join(mount, f"tether-bench-raw-{os.getpid()}-{len(res.times)}-{n}")
    os.mkdir(path)
    RAW_CGROUPS.append(path)
    events = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    p = None
    try:
        p = start_reaped(
            ["/bin/sh", "-c", CGROUP_SHIM, os.path.join(path, "cgroup.procs"), *tree.argv]
        )
        tree.wait_ready(None)
        poller = select.poll()
        poller.register(events, select.POLLPRI)
        t0 = time.perf_counter()
        fd = os.open(os.path.join(path, "cgroup.kill"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)
        while _events(events).get("populated") != 0:
            poller.poll(10_000)
        _check(res, t0, reaped=True)
    finally:
        os.close(events)
        TRACKED.kill_leftovers()
        reap(p)
        _rmdir(path)
        RAW_CGROUPS.remove(path)
        tree.remove_files()


def main() -> int:
    if sys.argv[1:] == ["--worker"]:
        return worker()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="trials per cell (median is shown)")
    ap.add_argument("--sizes", default="1,100,1000", help="tree sizes (processes, leader included)")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only the methods whose name contains this (repeatable), e.g. "
        "--only 'cgroup (auto), KILL' --only raw",
    )
    ap.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the tether rows with the tether of source tree DIR (a worker "
        "process with PYTHONPATH=DIR), in the same rounds, as rows named [LABEL]",
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    raise_fd_limit()
    src_trees = compile_trees(args.src)
    mount = cgroup2_mount()
    can_cgroup = mount is not None and os.access(mount, os.W_OK)

    methods: list[tuple[str, Callable[[int, Result], None]]] = []
    if can_cgroup:
        methods += [
            ("tether cgroup (auto), KILL", lambda n, r: trial_tether(n, r, "auto", "KILL")),
            (
                "tether cgroup (auto), TERM,5s,KILL",
                lambda n, r: trial_tether(n, r, "auto", "TERM,5s,KILL"),
            ),
        ]
    nocg = "session,cookie,walk"
    methods += [
        ("tether no cgroup, KILL", lambda n, r: trial_tether(n, r, nocg, "KILL")),
        ("tether no cgroup, TERM,5s,KILL", lambda n, r: trial_tether(n, r, nocg, "TERM,5s,KILL")),
    ]
    workers: list[Worker] = []
    tether_rows = [name for name, _ in methods]
    for label, src in src_trees:
        w = Worker(src)
        workers.append(w)
        for name in tether_rows:
            trackers = "auto" if "cgroup (auto)" in name else nocg
            policy = name.rsplit(", ", 1)[1]
            methods.append(
                (
                    f"{name} [{label}]",
                    lambda n, r, w=w, t=trackers, p=policy: w.trial(n, r, t, p),
                )
            )
    methods += [
        ("killpg(SIGKILL) + wait", trial_killpg),
        ("psutil children/kill/wait_procs", trial_psutil),
    ]
    if can_cgroup:
        assert mount is not None
        methods.append(
            ("raw cgroup.kill + populated 0", lambda n, r: trial_raw_cgroup(n, r, mount))
        )

    if args.only:
        methods = [(m, fn) for m, fn in methods if any(w in m for w in args.only)]
    results: dict[tuple[str, int], Result] = {(m, n): Result() for m, _ in methods for n in sizes}
    print(
        f"cancel-to-empty, median of {args.repeat} (ms); python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cpus, kernel {os.uname().release}, cgroup2 at {mount}"
    )
    for label, src in src_trees:
        print(f"[{label}]: the tether of {src}, in a worker process")
    if not can_cgroup:
        print("cgroup2 not writable: cgroup rows skipped")
    try:
        for n in sizes:
            t0 = time.monotonic()
            for _ in range(args.repeat):
                for name, fn in methods:  # interleaved, so drift hits every method alike
                    fn(n, results[(name, n)])
            print(f"  n={n}: done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    finally:
        for w in workers:
            w.close()
        leaked = TRACKED.kill_leftovers()
        for path in list(RAW_CGROUPS):
            with contextlib.suppress(OSError):
                _rmdir(path)
        if leaked:
            print(f"cleanup: {leaked} leftover process(es) SIGKILLed", file=sys.stderr)

    width = max(len(m) for m, _ in methods)
    head = f"{'method':<{width}}" + "".join(f"  {f'n={n} (min-max)':>22}" for n in sizes)
    print(head + "   left  found")
    print("-" * (len(head) + 14))
    for name, _ in methods:
        cells = []
        left = found_bad = 0
        for n in sizes:
            r = results[(name, n)]
            left += r.left + r.incomplete
            found_bad += sum(1 for f in r.found if f != n)
            cells.append(
                f"  {median(r.times) * 1000:8.1f} ({min(r.times) * 1000:5.0f}-"
                f"{max(r.times) * 1000:5.0f})"
            )
        found = (
            "-"
            if not results[(name, sizes[0])].found
            else ("ok" if not found_bad else f"{found_bad} bad")
        )
        print(f"{name:<{width}}" + "".join(f"{c:>24}" for c in cells) + f"  {left:5d}  {found:>5}")
    print(
        "left: processes alive when the call returned (+ calls that reported survivors); "
        "found: every trial found all N members"
    )
    print("\nto every process exited, zombies counted as gone (before stop 23), median ms")
    for name, _ in methods:
        cells = [f"  {median(results[(name, n)].exited) * 1000:22.1f}" for n in sizes]
        print(f"{name:<{width}}" + "".join(cells))
    with_cpu = [m for m, _ in methods if results[(m, sizes[0])].cpu]
    if with_cpu:
        print("\nCPU of the cancelling thread, median ms (tether's own work; load sways it less)")
        for name in with_cpu:
            cells = [f"  {median(results[(name, n)].cpu) * 1000:22.1f}" for n in sizes]
            print(f"{name:<{width}}" + "".join(cells))

    print("\ntargets (informational)")
    ran = {m for m, _ in methods}

    def ms(name: str, n: int) -> float:
        return median(results[(name, n)].times)

    def paired(name: str, ref: str, n: int) -> str:
        # Trial i of each method ran in the same round: the median of the
        # per-round ratios is less swayed by load that comes and goes than
        # the ratio of the medians.
        a, b = results[(name, n)].times, results[(ref, n)].times
        a0, b0 = results[(name, n)].exited, results[(ref, n)].exited
        return (
            f"per-round ratio median {median([x / y for x, y in zip(a, b, strict=True)]):.2f}x; "
            f"both to exited only: {median(a0) / median(b0):.2f}x, per-round "
            f"{median([x / y for x, y in zip(a0, b0, strict=True)]):.2f}x"
        )

    rawcg, kpg, ps_name = (
        "raw cgroup.kill + populated 0",
        "killpg(SIGKILL) + wait",
        "psutil children/kill/wait_procs",
    )
    big = max(sizes)
    for suffix in ["", *(f" [{label}]" for label, _ in src_trees)]:
        cg, nocg_row = f"tether cgroup (auto), KILL{suffix}", f"tether no cgroup, KILL{suffix}"
        if suffix and ({cg, nocg_row} & ran):
            print(f" tether{suffix}:")
        if {cg, rawcg} <= ran:
            for n in sizes:
                t = ms(cg, n)
                raw = ms(rawcg, n)
                print(
                    f"  with cgroup, n={n:<5} tether {t * 1000:8.1f} ms vs raw cgroup.kill "
                    f"{raw * 1000:7.1f} ms = {t / raw:5.2f}x  (target <= 1.3x)  "
                    f"{pass_miss(t <= 1.3 * raw)}"
                )
                print(f"      {paired(cg, rawcg, n)}")
        if {nocg_row, ps_name} <= ran:
            t, ps = ms(nocg_row, big), ms(ps_name, big)
            print(
                f"  no cgroup, n={big:<5} tether {t * 1000:8.1f} ms vs psutil recipe "
                f"{ps * 1000:7.1f} ms = {ps / t:5.2f}x faster  (target >= 3x)  "
                f"{pass_miss(ps >= 3 * t)}"
            )
        if {nocg_row, kpg} <= ran:
            t, kp = ms(nocg_row, big), ms(kpg, big)
            print(
                f"  no cgroup, n={big:<5} tether {t * 1000:8.1f} ms vs killpg + wait "
                f"{kp * 1000:7.1f} ms = {t / kp:5.2f}x  (target <= 2x)  {pass_miss(t <= 2 * kp)}"
            )
            print(f"      {paired(nocg_row, kpg, big)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
