"""What each way of cancelling a job leaves behind: the table in docs/comparison.md.

Every scenario is a small Python job whose processes escape in one way each
(a double-forked daemon, a setsid child, a child that moved to its own process
group, a child that ignores TERM, an `env -i` double fork, a child re-parented
to init, a zombie). Each process writes its own identity -- pid and start
time, field 22 of /proc/PID/stat -- to a mark file; the job's leader reports
ready when every mark is written. The job is then started and cancelled by
each method, as that method is used for cancelling:

  killpg          Popen(start_new_session=True); os.killpg(pgid, TERM), wait
                  up to the grace for the leader, os.killpg(pgid, KILL) while
                  the group still has a live member
  psutil recipe   Process(leader).children(recursive=True); terminate each;
                  wait_procs(grace); kill the rest
  timeout         timeout -k GRACE 1h JOB; SIGTERM to timeout (coreutils)
  tini            tini -s -g -- JOB; SIGTERM to tini (subreaper, signals
                  forwarded to the child's process group)
  env cookie      JOB with a unique variable in its environment; sweep
                  /proc/*/environ for it: TERM every match, wait up to the
                  grace, KILL what is left, sweep again until nothing matches
  tether run      tether run --policy TERM,GRACE,KILL -- JOB; SIGTERM to tether
                  (and, as an extra column, the same without a cgroup)

A cell is "yes" when every identity the scenario marked is gone from /proc
(a zombie is not gone) within a settle period after the method returned, so a
lazily reaping init (some VMs reap orphans every ~2 s) is not held against a
method. Otherwise it names what was left. Survivors are SIGKILLed at the end
through pidfds opened while /proc proved their start time; nothing is killed
by name.

    python3 bench/compare.py [--grace 2] [--settle 5] [--only killpg,tether]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from _common import PYTHON, Tracked, cgroup2_mount, reap, starttime

from tether._platform.linux import prctl

TRACKED = Tracked()

# The variable the cookie sweep looks for (not TETHER_JOB_ID: tether's own
# runs carry that one too).
COOKIE_VAR = "BENCH_COMPARE_COOKIE"

# Every process marks itself; the leader waits for all marks, then writes
# "ready". Nothing sleeps to wait for readiness.
JOB = r"""
import os, signal, sys, time

scenario, d = sys.argv[1], sys.argv[2]

def mark(name):
    with open("/proc/self/stat", "rb") as f:
        data = f.read()
    start = data[data.rindex(b")") + 2:].split()[19].decode()
    with open(os.path.join(d, name + ".tmp"), "w") as f:
        f.write(f"{os.getpid()} {start}")
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name + ".pid"))

def forever():
    while True:
        time.sleep(3600)

def named(name, before=None):
    def run():
        if before is not None:
            before()
        mark(name)
        forever()
    return run

def child(fn):
    if os.fork() == 0:
        try:
            fn()
        finally:
            os._exit(0)

def double_fork(fn, setsid):
    # The intermediate exits at once: the grandchild is re-parented.
    pid = os.fork()
    if pid == 0:
        if setsid:
            os.setsid()
        if os.fork() == 0:
            try:
                fn()
            finally:
                os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)

def exit_at_once():
    mark("zombie")
    os._exit(0)

def env_i():
    mark_and_sleep = (
        "import os, sys, time\n"
        "d = sys.argv[1]\n"
        "data = open('/proc/self/stat', 'rb').read()\n"
        "start = data[data.rindex(b')') + 2:].split()[19].decode()\n"
        "open(os.path.join(d, 'clean-env.tmp'), 'w').write(f'{os.getpid()} {start}')\n"
        "os.rename(os.path.join(d, 'clean-env.tmp'), os.path.join(d, 'clean-env.pid'))\n"
        "while True: time.sleep(3600)\n"
    )
    os.execv("/usr/bin/env", ["env", "-i", sys.executable, "-c", mark_and_sleep, d])

scenarios = {
    "tree": (lambda: child(named("child", lambda: child(named("grandchild")))),
             ["child", "grandchild"]),
    "daemon": (lambda: double_fork(named("daemon"), True), ["daemon"]),
    "setsid": (lambda: child(named("setsid", os.setsid)), ["setsid"]),
    "pgid": (lambda: child(named("own-group", lambda: os.setpgid(0, 0))), ["own-group"]),
    "ignores-term": (
        lambda: child(named("ignores-term",
                            lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))),
        ["ignores-term"]),
    "env-i": (lambda: double_fork(env_i, True), ["clean-env"]),
    "orphan": (lambda: double_fork(named("orphan"), False), ["orphan"]),
    "zombie": (lambda: child(named("parent", lambda: child(exit_at_once))),
               ["parent", "zombie"]),
}
start, names = scenarios[scenario]
start()
mark("leader")
deadline = time.monotonic() + 60
for name in names:
    while not os.path.exists(os.path.join(d, name + ".pid")):
        if time.monotonic() > deadline:
            sys.exit("scenario not ready")
        time.sleep(0.005)
with open(os.path.join(d, "ready"), "w") as f:
    f.write("ready")
forever()
"""


@dataclass(frozen=True)
class Scenario:
    """A row. ``init``: the bench acts as the job's init (PID 1 in a container).

    It becomes a child subreaper and, like a naive PID 1 (a shell script, a
    launcher), reaps only its own direct children: what is re-parented to it
    stays a zombie unless the method reaps it first.
    """

    name: str
    row: str
    init: bool = False


SCENARIOS = [
    Scenario("tree", "child and grandchild (baseline)"),
    Scenario("daemon", "double-forked daemon (setsid, re-parented to init)"),
    Scenario("setsid", "child that called setsid()"),
    Scenario("pgid", "child that moved to its own process group"),
    Scenario("ignores-term", "child that ignores TERM"),
    Scenario("env-i", "`env -i` double fork (new session, no environment)"),
    Scenario("orphan", "child re-parented to init (same group)"),
    Scenario(
        "zombie", "zombie left behind, under an init that reaps only its own children", init=True
    ),
]


class Run:
    """One scenario started by one method: its directory and the identities it marked."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.dir = tempfile.mkdtemp(prefix="tether-compare-")
        self.argv = [PYTHON, "-c", JOB, scenario, self.dir]
        self.cookie = uuid.uuid4().hex
        env = dict(os.environ)
        env[COOKIE_VAR] = self.cookie
        # Test suites running on this machine treat processes carrying
        # TETHER_JOB_ID but no TETHER_TEST_ID as their own leaks (and kill
        # them); a test id of our own tells them these are not theirs.
        env["TETHER_TEST_ID"] = f"bench-compare-{self.cookie}"
        self.env = env
        self.marks: dict[str, tuple[int, int]] = {}

    def wait_ready(self, supervisor: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        ready = os.path.join(self.dir, "ready")
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if supervisor.poll() is not None:
                raise RuntimeError(f"{self.scenario}: job exited early ({supervisor.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.scenario}: not ready after {timeout}s")
            time.sleep(0.005)
        for entry in os.listdir(self.dir):
            if entry.endswith(".pid"):
                with open(os.path.join(self.dir, entry)) as f:
                    pid, start = (int(x) for x in f.read().split())
                self.marks[entry.removesuffix(".pid")] = (pid, start)
                if starttime(pid) == start:
                    TRACKED.add([pid])

    def left(self) -> list[str]:
        """Marked processes still in /proc (alive, or zombies), e.g. ``daemon``."""
        out = []
        for name, (pid, start) in sorted(self.marks.items()):
            if starttime(pid) == start:
                out.append(f"{name} (zombie)" if _state(pid) == "Z" else name)
        return out

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def _stat_fields(pid: str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def _group_has_live_member(pgid: int) -> bool:
    for name in os.listdir("/proc"):
        if name.isdigit():
            rest = _stat_fields(name)
            if rest is not None and int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
                return True
    return False


def _wait(p: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


# -- the methods -------------------------------------------------------------------


def method_killpg(run: Run, grace: float) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(run.argv, env=run.env, start_new_session=True, stdin=subprocess.DEVNULL)
    run.wait_ready(p)
    os.killpg(p.pid, signal.SIGTERM)
    _wait(p, grace)
    # The pgid is the leader's pid: once the leader is reaped and the group
    # is empty it could name a stranger's group, so check before the KILL.
    if _group_has_live_member(p.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    return p


def method_psutil(run: Run, grace: float) -> subprocess.Popen[bytes]:
    import psutil

    p = subprocess.Popen(run.argv, env=run.env, start_new_session=True, stdin=subprocess.DEVNULL)
    run.wait_ready(p)
    parent = psutil.Process(p.pid)
    procs = [parent, *parent.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return p


def method_timeout(run: Run, grace: float) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        ["timeout", "-k", f"{grace}s", "1h", *run.argv],
        env=run.env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    run.wait_ready(p)
    p.send_signal(signal.SIGTERM)  # our unreaped child: the pid is still ours
    _wait(p, grace + 10)
    return p


def method_tini(run: Run, grace: float) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        ["tini", "-s", "-g", "--", *run.argv],
        env=run.env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    run.wait_ready(p)
    p.send_signal(signal.SIGTERM)
    _wait(p, grace + 10)
    return p


def _cookie_holders(cookie: str) -> dict[int, int]:
    """pid -> start time of every live process whose environment carries the cookie."""
    entry = f"{COOKIE_VAR}={cookie}".encode()
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        rest = _stat_fields(name)
        if rest is None or rest[0] in (b"Z", b"X"):
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if entry in env:
            out[int(name)] = int(rest[19])
    return out


def _signal_identities(found: dict[int, int], sig: signal.Signals) -> None:
    for pid, start in found.items():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if starttime(pid) == start:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, sig)
        finally:
            os.close(fd)


def method_cookie(run: Run, grace: float) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(run.argv, env=run.env, start_new_session=True, stdin=subprocess.DEVNULL)
    run.wait_ready(p)
    for _ in range(10):
        found = _cookie_holders(run.cookie)
        if not found:
            break
        _signal_identities(found, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            p.poll()  # reap the leader, our child
            if not _cookie_holders(run.cookie):
                break
            time.sleep(0.02)
        _signal_identities(_cookie_holders(run.cookie), signal.SIGKILL)
    _wait(p, grace)  # the caller reaps its own child, the leader
    return p


def method_tether(run: Run, grace: float, trackers: str = "auto") -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [
            PYTHON, "-m", "tether.cli", "run", "-q", "--trackers", trackers,
            "--policy", f"TERM,{grace}s,KILL", "--", *run.argv,
        ],
        env=run.env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    run.wait_ready(p)
    p.send_signal(signal.SIGTERM)
    _wait(p, grace + 30)
    return p


@dataclass(frozen=True)
class Method:
    key: str
    column: str
    run: Callable[[Run, float], subprocess.Popen[bytes]]
    missing: str | None = None  # why the column is skipped


def methods() -> list[Method]:
    out = [
        Method("killpg", "killpg", method_killpg),
        Method("psutil", "psutil recipe", method_psutil),
        Method("timeout", "`timeout`", method_timeout),
        Method("tini", "tini -s -g", method_tini),
        Method("cookie", "env-cookie sweep", method_cookie),
        Method("tether", "tether run", method_tether),
        Method(
            "tether-nocg",
            "tether run, no cgroup",
            lambda r, g: method_tether(r, g, "subreaper,session,cookie,walk"),
        ),
    ]
    for i, m in enumerate(out):
        missing = None
        if m.key == "psutil":
            try:
                import psutil  # noqa: F401
            except ImportError:
                missing = "psutil is not installed (pip install psutil)"
        elif m.key in ("timeout", "tini") and shutil.which(m.key) is None:
            missing = f"`{m.key}` is not installed" + (
                " (Debian/Ubuntu: apt-get install tini)" if m.key == "tini" else ""
            )
        out[i] = Method(m.key, m.column, m.run, missing)
    return out


def settle(run: Run, seconds: float) -> list[str]:
    """Wait (bounded) for every marked process to leave /proc; what is left."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    while run.left() and time.monotonic() < deadline:
        poller.poll(50)
    return run.left()


def _reap_adopted() -> None:
    """Reap the zombies re-parented to us while we were a subreaper.

    Every Popen of the cell has been waited for, so any child left is adopted.
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--grace", type=float, default=2.0, help="seconds between TERM and KILL")
    ap.add_argument(
        "--settle", type=float, default=5.0, help="seconds allowed for the last exits and reaping"
    )
    ap.add_argument("--only", help="comma-separated method keys (killpg,psutil,timeout,...)")
    args = ap.parse_args()
    chosen = methods()
    if args.only:
        keys = args.only.split(",")
        chosen = [m for m in chosen if m.key in keys]
    active = [m for m in chosen if m.missing is None]
    mount = cgroup2_mount()
    cgroup = "writable" if mount and os.access(mount, os.W_OK) else "not writable"
    print(
        f"<!-- bench/compare.py: python {sys.version.split()[0]}, kernel {os.uname().release}, "
        f"uid {os.geteuid()}, cgroup2 {cgroup}, "
        f"grace {args.grace:g}s, settle {args.settle:g}s -->"
    )  # fmt: skip
    results: dict[tuple[str, str], list[str] | str] = {}
    try:
        for scenario in SCENARIOS:
            for m in active:
                run = Run(scenario.name)
                p = None
                if scenario.init:
                    prctl.set_child_subreaper(True)
                try:
                    p = m.run(run, args.grace)
                    results[(scenario.name, m.key)] = settle(run, args.settle)
                except Exception as err:
                    results[(scenario.name, m.key)] = f"error: {err}"
                finally:
                    TRACKED.kill_leftovers()
                    if p is not None and p.poll() is None:
                        p.kill()  # our unreaped child: the pid is still ours
                    reap(p)
                    if scenario.init:
                        prctl.set_child_subreaper(False)
                        _reap_adopted()
                    run.remove()
                print(f"  {scenario.name:<13} {m.key:<12} {results[(scenario.name, m.key)]}",
                      file=sys.stderr)  # fmt: skip
    finally:
        leaked = TRACKED.kill_leftovers()
        if leaked:
            print(f"cleanup: {leaked} survivor(s) SIGKILLed by identity", file=sys.stderr)

    print()
    print("| scenario | " + " | ".join(m.column for m in active) + " |")
    print("|---|" + "---|" * len(active))
    for scenario in SCENARIOS:
        cells = []
        for m in active:
            r = results[(scenario.name, m.key)]
            if isinstance(r, str):
                cells.append(r)
            else:
                cells.append("yes" if not r else "**left " + ", ".join(r) + "**")
        print(f"| {scenario.row} | " + " | ".join(cells) + " |")
    caught = {m.key: sum(results[(s.name, m.key)] == [] for s in SCENARIOS) for m in active}
    print(
        "| **all gone** | " + " | ".join(f"{caught[m.key]}/{len(SCENARIOS)}" for m in active) + " |"
    )
    for m in chosen:
        if m.missing is not None:
            print(f"\n{m.column}: skipped, {m.missing}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
