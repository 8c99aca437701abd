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

A second table (root only: ssh-agent and gpg-agent are non-dumpable, so only
root reads the environment that tells whether they are gone) runs real
programs -- tmux, ssh-agent, gpg-agent, dbus-daemon, make -j2, pytest-xdist,
a multi-threaded Python program, a `trap cleanup TERM` script -- under the
same methods (no cookie sweep) and prints, per program and method, the
polite-signal rate (the processes whose own handler ran, each checked by a
mark that only the handler leaves) and cancel-to-empty (from the cancel until
no live process carries the job's cookie), then whether `tether run` met the
goal: rate 1.00 on every program, cancel-to-empty no slower than killpg where
both emptied.

    python3 bench/compare.py [--grace 2] [--settle 5] [--only killpg,tether]
                             [--tables escapes,polite]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from _common import PYTHON, Tracked, cgroup2_mount, pass_miss, reap, starttime

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


# -- polite signals on real programs -------------------------------------------------

# Each program's TERM (or, for a tmux pane, HUP) handler leaves a mark that
# only the handler writes: the shell traps, make's "Deleting file" and the
# daemons' own socket clean-up (ssh-agent, gpg-agent and dbus-daemon unlink
# their sockets in their TERM handlers; a SIGKILLed one leaves the socket).
# "$1" is the run's directory; every script cds there first.

THREADED = r"""
import os, signal, sys, threading, time
d = sys.argv[1]

def on_term(signum, frame):
    open(os.path.join(d, f"handled-{os.getpid()}"), "w").close()
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)
r, w = os.pipe()
threading.Thread(target=os.read, args=(r, 1), daemon=True).start()  # blocked in I/O
if len(sys.argv) == 2 and os.fork() == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv, "child"])
open(os.path.join(d, f"ready-{os.getpid()}"), "w").close()
while True:
    time.sleep(3600)  # only the main thread runs Python signal handlers
"""

XDIST_TEST = r"""
import os, signal, time

def _wait(name):
    d = os.environ["POLITE_MARKS"]
    def on_term(signum, frame):
        open(os.path.join(d, f"handled-{name}"), "w").close()
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    open(os.path.join(d, f"ready-{name}"), "w").close()
    time.sleep(3600)

def test_a():
    _wait("a")

def test_b():
    _wait("b")
"""

MAKEFILE = """\
all: a b
a b:
\t@touch $@; trap 'echo > handled-$@; exit 1' TERM; echo > ready-$@; sleep 3600 & wait
"""

# The pane's handler: the tmux server's own TERM handler closes every pane
# (HUP from the pty); a TERM sent to the pane directly is handled alike.
TMUX_PANE = "trap 'echo > pane-handled; exit 0' HUP TERM; echo > pane-ready; sleep 3600 & wait"


def _gone(name: str) -> Callable[[str], bool]:
    return lambda d: not os.path.exists(os.path.join(d, name))


def _present(name: str) -> Callable[[str], bool]:
    return lambda d: os.path.exists(os.path.join(d, name))


def _count(prefix: str, n: int) -> Callable[[str], bool]:
    return lambda d: sum(e.startswith(prefix) for e in os.listdir(d)) >= n


def _tmux_server_handled(d: str) -> bool:
    # tmux -v logs "server_signal: Terminated" from the server's handler.
    for entry in os.listdir(d):
        if entry.startswith("tmux-server-") and entry.endswith(".log"):
            with open(os.path.join(d, entry), "rb") as f:
                if b"server_signal: Terminated" in f.read(1 << 20):
                    return True
    return False


@dataclass(frozen=True)
class Program:
    """A real program as a job: ``script`` (sh, "$1" = the run's directory).

    ``ready``: every check true means set up; ``handlers``: one check per
    process with a handler, true when that handler ran.
    """

    name: str
    row: str
    script: str
    ready: tuple[Callable[[str], bool], ...]
    handlers: tuple[Callable[[str], bool], ...]
    needs: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()


PROGRAMS = [
    Program(
        "tmux",
        "tmux server + a pane trapping HUP/TERM",
        'cd "$1" && tmux -v -S tmux.sock new-session -d "$BENCH_PANE" && exec sleep 3600',
        (_present("pane-ready"),),
        (_tmux_server_handled, _present("pane-handled")),
        ("tmux",),
    ),
    Program(
        "ssh-agent",
        "ssh-agent (daemon; unlinks its socket on TERM)",
        'cd "$1" && ssh-agent -a "$1/agent.sock" >/dev/null && exec sleep 3600',
        (_present("agent.sock"),),
        (_gone("agent.sock"),),
        ("ssh-agent",),
    ),
    Program(
        "gpg-agent",
        "gpg-agent --daemon (own GNUPGHOME; unlinks its sockets on TERM)",
        'cd "$1" && mkdir -m 700 gnupg && gpg-agent --homedir "$1/gnupg" --daemon'
        " >/dev/null 2>&1 && exec sleep 3600",
        (_present("gnupg/S.gpg-agent"),),
        (_gone("gnupg/S.gpg-agent"),),
        ("gpg-agent",),
    ),
    Program(
        "dbus",
        "dbus-daemon --fork (unlinks its socket on TERM)",
        'cd "$1" && dbus-daemon --session --fork --address="unix:path=$1/bus" >/dev/null'
        " && exec sleep 3600",
        (_present("bus"),),
        (_gone("bus"),),
        ("dbus-daemon",),
    ),
    Program(
        "make",
        "make -j2, two recipes trapping TERM (make deletes their targets)",
        'cd "$1" && exec make -s -j2 >/dev/null 2>&1',
        (_count("ready-", 2),),
        (lambda d: _gone("a")(d) and _gone("b")(d), _present("handled-a"), _present("handled-b")),
        ("make",),
        (("Makefile", MAKEFILE),),
    ),
    Program(
        "xdist",
        "pytest -n 2, tests trapping TERM",
        f'cd "$1" && POLITE_MARKS="$1" exec {PYTHON} -m pytest -q -n 2 -p no:cacheprovider'
        ' -p no:tether --rootdir "$1/suite" "$1/suite" >/dev/null 2>&1',
        (_count("ready-", 2),),
        (_present("handled-a"), _present("handled-b")),
        files=(("suite/test_sleepers.py", XDIST_TEST),),
    ),
    Program(
        "threaded",
        "Python, main thread sleeping, another blocked in I/O (x2)",
        f'cd "$1" && exec {PYTHON} threaded.py "$1"',
        (_count("ready-", 2),),
        (_count("handled-", 1), _count("handled-", 2)),
        files=(("threaded.py", THREADED),),
    ),
    Program(
        "trap",
        "`trap cleanup TERM`, cleanup runs a child for 1 s",
        "cd \"$1\" && trap 'sleep 1; echo > cleaned; exit 0' TERM; echo > ready; sleep 3600 & wait",
        (_present("ready"),),
        (_present("cleaned"),),
    ),
]


def program_missing(program: Program) -> str | None:
    for tool in program.needs:
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if program.name == "xdist" and importlib.util.find_spec("xdist") is None:
        return "pytest-xdist is not installed"
    return None


class ProgramRun(Run):
    """A real program started by one method; empty = no live process carries the cookie.

    Daemons (ssh-agent, gpg-agent) make themselves non-dumpable: only root
    reads their environment, so the table needs root.
    """

    def __init__(self, program: Program) -> None:
        super().__init__(program.name)
        self.program = program
        self.argv = ["sh", "-c", program.script, "sh", self.dir]
        self.env["BENCH_PANE"] = TMUX_PANE
        self.env.pop("TMUX", None)
        for name, text in program.files:
            path = os.path.join(self.dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        self.cancelled_at = 0.0
        self.empty_at: float | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def wait_ready(self, supervisor: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(check(self.dir) for check in self.program.ready):
            if supervisor.poll() is not None:
                raise RuntimeError(f"{self.scenario}: job exited early ({supervisor.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.scenario}: not ready after {timeout}s")
            time.sleep(0.005)
        for pid, start in _cookie_holders(self.cookie).items():
            if starttime(pid) == start:
                TRACKED.add([pid])
        # Every method cancels right after this returns: the clock starts here.
        self.cancelled_at = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            if not _cookie_holders(self.cookie):
                self.empty_at = time.monotonic()
                return
            time.sleep(0.002)

    def settle(self, seconds: float) -> list[str]:
        """Wait (bounded) for the job to empty; the names of what is left."""
        if self._watcher is not None:
            self._watcher.join(seconds)
            self._stop.set()
            self._watcher.join()
        left = _cookie_holders(self.cookie)
        return sorted({_comm(pid) for pid in left})

    def polite(self) -> tuple[int, int]:
        return sum(check(self.dir) for check in self.program.handlers), len(self.program.handlers)

    def kill_rest(self) -> None:
        for _ in range(5):
            found = _cookie_holders(self.cookie)
            if not found:
                return
            _signal_identities(found, signal.SIGKILL)
            time.sleep(0.05)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            raw = f.read(64)
    except OSError:
        return "?"
    return "".join(
        c if c.isprintable() and c not in "|*" else "?"
        for c in raw.decode(errors="replace").strip()
    )


@dataclass(frozen=True)
class PoliteResult:
    handled: int
    expected: int
    seconds: float | None  # cancel to empty; None: not empty within the settle period
    left: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.handled / self.expected

    def cell(self) -> str:
        if self.seconds is not None:
            return f"{self.rate:.2f}, {self.seconds * 1000:.0f} ms"
        return f"{self.rate:.2f}, **left " + ", ".join(self.left) + "**"


POLITE_METHODS = ("killpg", "psutil", "timeout", "tini", "tether", "tether-nocg")


def run_program(program: Program, m: Method, grace: float, settle_s: float) -> PoliteResult | str:
    run = ProgramRun(program)
    p = None
    try:
        p = m.run(run, grace)
        left = run.settle(settle_s)
        handled, expected = run.polite()
        seconds = None if left or run.empty_at is None else run.empty_at - run.cancelled_at
        return PoliteResult(handled, expected, seconds, tuple(left))
    except Exception as err:
        return f"error: {err}"
    finally:
        run._stop.set()
        run.kill_rest()
        TRACKED.kill_leftovers()
        if p is not None and p.poll() is None:
            p.kill()  # our unreaped child: the pid is still ours
        reap(p)
        run.remove()


def goal(results: dict[str, PoliteResult | str]) -> str:
    """tether run: polite 1.00; cancel-to-empty no slower than killpg where both emptied."""
    t = results.get("tether")
    if not isinstance(t, PoliteResult):
        return "MISS (no result)"
    misses = []
    if t.handled != t.expected:
        misses.append(f"polite {t.rate:.2f}")
    k = results.get("killpg")
    if t.seconds is None:
        misses.append("not empty")
    elif isinstance(k, PoliteResult) and k.seconds is not None and t.seconds > k.seconds:
        misses.append(f"{t.seconds * 1000:.0f} ms > killpg {k.seconds * 1000:.0f} ms")
    return "PASS" if not misses else "MISS (" + "; ".join(misses) + ")"


def polite_table(chosen: list[Method], grace: float, settle_s: float) -> bool:
    """Print the polite-signal table; True when tether met the goal on every program."""
    active = [m for m in chosen if m.missing is None and m.key in POLITE_METHODS]
    programs = [p for p in PROGRAMS if program_missing(p) is None]
    results: dict[tuple[str, str], PoliteResult | str] = {}
    for program in programs:
        for m in active:
            r = run_program(program, m, grace, settle_s)
            results[(program.name, m.key)] = r
            print(f"  {program.name:<13} {m.key:<12} {r}", file=sys.stderr)
    print()
    print("| program | " + " | ".join(m.column for m in active) + " | goal |")
    print("|---|" + "---|" * (len(active) + 1))
    passed = True
    for program in programs:
        row = {m.key: results[(program.name, m.key)] for m in active}
        cells = [r if isinstance(r, str) else r.cell() for r in row.values()]
        verdict = goal(row)
        passed = passed and verdict == "PASS"
        print(f"| {program.row} | " + " | ".join(cells) + f" | {verdict} |")
    print(
        "\nCells: polite-signal rate (handlers that ran / processes with a handler), then"
        " cancel-to-empty (no live process left with the job's cookie)."
    )
    print(
        "Goal (tether run: polite 1.00 on every program, cancel-to-empty no slower than"
        f" killpg where both emptied): {pass_miss(passed)}"
    )
    for program in PROGRAMS:
        missing = program_missing(program)
        if missing is not None:
            print(f"\n{program.row}: skipped, {missing}.")
    return passed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--grace", type=float, default=2.0, help="seconds between TERM and KILL")
    ap.add_argument(
        "--settle", type=float, default=5.0, help="seconds allowed for the last exits and reaping"
    )
    ap.add_argument("--only", help="comma-separated method keys (killpg,psutil,timeout,...)")
    ap.add_argument(
        "--tables", default="escapes,polite", help="which tables: escapes, polite (default both)"
    )
    args = ap.parse_args()
    tables = set(args.tables.split(","))
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
    if "escapes" in tables:
        escapes_table(chosen, active, args.grace, args.settle)
    if "polite" in tables:
        if os.geteuid() != 0:
            # ssh-agent and gpg-agent are non-dumpable: only root reads the
            # environment that tells whether they are gone.
            print("\npolite-signal table: skipped, needs root.")
        else:
            try:
                polite_table(chosen, args.grace, args.settle)
            finally:
                TRACKED.kill_leftovers()
    return 0


def escapes_table(
    chosen: list[Method], active: list[Method], grace: float, settle_s: float
) -> None:
    results: dict[tuple[str, str], list[str] | str] = {}
    try:
        for scenario in SCENARIOS:
            for m in active:
                run = Run(scenario.name)
                p = None
                if scenario.init:
                    prctl.set_child_subreaper(True)
                try:
                    p = m.run(run, grace)
                    results[(scenario.name, m.key)] = settle(run, settle_s)
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


if __name__ == "__main__":
    sys.exit(main())
