"""Cancel-to-empty for remote jobs over SSH (loopback sshd), and client CPU per host.

Each "host" is an ssh_config alias of a real sshd on 127.0.0.1 (started here,
with its own host key and config; see tests/remote/sshd.py). Each remote job
is a tree: a leader, a child, a child in its own session (setsid) and a
double-forked daemon; every process writes its identity (pid, start time) to a
mark file, so "empty" is checked here by identity, not by name.

Methods, for 1 and N hosts:

- ``tether -w``: one ``tether run -w b[01-N]``; SIGTERM to it; done when it has
  exited, i.e. every host's agent proved its tree empty and reported back.
- ``tether seq``: N ``tether run --host bXX``; SIGTERM each in turn, waiting
  for its report before the next (cancelling host after host over ssh).
- ``pkill -P``: Clarive's recipe. N plain ``ssh bXX 'echo $PPID; exec tree'``;
  cancel = a second connection per host (in parallel) running
  ``pkill -TERM -P <remote sshd pid>``. It reaches only the sshd's direct
  children: the survivors column counts what it leaves (cleaned up afterwards
  by identity).

"empty" is the time until every marked process is gone (polled here every
5 ms, measurement only); "done" is when the method's own command returned.
Target: 50 hosts cancelled and proven empty in under 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "remote"))

from sshd import SshLab, make_lab, sshd_available

from tether.process import ProcessHandle

TREE = r"""
import os, sys, time
top = sys.argv[1]
d = os.path.join(top, str(os.getpid()))
os.mkdir(d)
def mark(name):
    with open("/proc/self/stat", "rb") as f:
        data = f.read()
    start = data[data.rindex(b")") + 2:].split()[19].decode()
    with open(os.path.join(d, name + ".tmp"), "w") as f:
        f.write("%d %s" % (os.getpid(), start))
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name + ".pid"))
def forever():
    while True:
        time.sleep(60)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        mark("daemon"); forever()
    os._exit(0)
if os.fork() == 0:
    os.setsid(); mark("setsid"); forever()
if os.fork() == 0:
    mark("child"); forever()
mark("leader")
forever()
"""
MARKS = ("leader", "daemon", "setsid", "child")
POLICY = "TERM,5s,KILL"
TETHER = [sys.executable, "-m", "tether.cli"]


def identities(marks: Path) -> list[tuple[int, int]]:
    out = []
    for p in marks.glob("*/*.pid"):
        pid, start = p.read_text().split()
        out.append((int(pid), int(start)))
    return out


def alive(ident: tuple[int, int]) -> bool:
    h = ProcessHandle.open(*ident)
    if h is None:
        return False
    try:
        return not h.has_exited()
    finally:
        h.close()


def wait_trees(marks: Path, n: int, timeout: float = 120) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    while True:
        done = [d for d in marks.iterdir() if all((d / f"{m}.pid").exists() for m in MARKS)]
        if len(done) >= n:
            return identities(marks)
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(done)}/{n} trees came up")
        time.sleep(0.02)


def wait_empty(idents: list[tuple[int, int]], t0: float, limit: float) -> tuple[float, int]:
    """Seconds until every identity is gone (or the limit), and how many survived."""
    while True:
        left = [i for i in idents if alive(i)]
        now = time.monotonic()
        if not left or now - t0 > limit:
            return now - t0, len(left)
        time.sleep(0.005)


def cleanup(idents: list[tuple[int, int]]) -> None:
    for ident in idents:
        h = ProcessHandle.open(*ident)
        if h is not None:
            h.send_signal(signal.SIGKILL)
            h.close()


def fresh_marks(work: Path, name: str) -> Path:
    d = work / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    return d


def tether_fanout(lab: SshLab, work: Path, script: Path, n: int) -> tuple[float, float, int]:
    marks = fresh_marks(work, "fanout")
    proc = subprocess.Popen(
        [*TETHER, "run", "-F", lab.config_file, "-q", "-w", f"b[01-{n:02d}]",
         "-f", str(max(n, 32)), "--policy", POLICY, "--", "python3", str(script), str(marks)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    idents = wait_trees(marks, n)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    done = time.monotonic() - t0
    empty, left = wait_empty(idents, t0, 10)
    cleanup(idents)
    return done, empty, left


def tether_sequential(lab: SshLab, work: Path, script: Path, n: int) -> tuple[float, float, int]:
    marks = fresh_marks(work, "seq")
    procs = [
        subprocess.Popen(
            [
                *TETHER,
                "run",
                "-F",
                lab.config_file,
                "-q",
                "--host",
                f"b{i:02d}",
                "--policy",
                POLICY,
                "--",
                "python3",
                str(script),
                str(marks),
            ],
            stdout=subprocess.DEVNULL,
        )
        for i in range(1, n + 1)
    ]
    idents = wait_trees(marks, n)
    t0 = time.monotonic()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    done = time.monotonic() - t0
    empty, left = wait_empty(idents, t0, 10)
    cleanup(idents)
    return done, empty, left


def pkill_parent(lab: SshLab, work: Path, script: Path, n: int) -> tuple[float, float, int]:
    marks = fresh_marks(work, "pkill")
    procs = [
        subprocess.Popen(
            [
                "ssh",
                "-F",
                lab.config_file,
                f"b{i:02d}",
                f"echo $PPID; exec python3 {script} {marks}",
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for i in range(1, n + 1)
    ]
    sshd_pids = []
    for proc in procs:
        assert proc.stdout is not None
        sshd_pids.append(int(proc.stdout.readline()))
    idents = wait_trees(marks, n)
    t0 = time.monotonic()
    killers = [
        subprocess.Popen(
            ["ssh", "-F", lab.config_file, f"b{i + 1:02d}", f"pkill -TERM -P {pid}"],
            stdin=subprocess.DEVNULL,
        )
        for i, pid in enumerate(sshd_pids)
    ]
    for k in killers:
        k.wait()
    done = time.monotonic() - t0
    empty, left = wait_empty(idents, t0, 2.0)
    cleanup(idents)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    return done, empty, left


def client_cpu(lab: SshLab, n: int) -> tuple[float, float]:
    """CPU seconds (tether + its ssh clients) per host for `-w` running `true`; wall."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(
        [
            *TETHER,
            "run",
            "-F",
            lab.config_file,
            "-q",
            "-w",
            f"b[01-{n:02d}]",
            "-f",
            str(max(n, 32)),
            "--",
            "true",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / n, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", default="1,50", help="host counts, e.g. 1,50")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not sshd_available() or os.geteuid() != 0:
        raise SystemExit("needs root and OpenSSH (apt-get install openssh-server)")
    counts = [int(x) for x in args.hosts.split(",")]
    base = Path(tempfile.mkdtemp(prefix="tether-bench-ssh-"))
    runtime = base / "runtime"
    runtime.mkdir(mode=0o700)
    os.environ["TETHER_RUNTIME_DIR"] = str(runtime)
    lab = make_lab(base / "lab")
    try:
        lab.start("s1")
        lab.start("s2")
        for i in range(1, max(counts) + 1):
            lab.alias(f"b{i:02d}", f"s{(i - 1) % 2 + 1}")
        script = base / "tree.py"
        script.write_text(TREE)
        work = base / "work"
        work.mkdir()
        # Warm the remote zip cache once (the first connection ships the engine).
        subprocess.run([*TETHER, "run", "-F", lab.config_file, "-q", "--host", "b01", "--", "true"],
                       check=True)  # fmt: skip
        print(f"{'hosts':>5}  {'method':<11} {'done':>9} {'empty':>9} {'survivors':>9}")
        for n in counts:
            for name, fn in (
                ("tether -w", tether_fanout),
                ("tether seq", tether_sequential),
                ("pkill -P", pkill_parent),
            ):
                rows = [fn(lab, work, script, n) for _ in range(args.repeat)]
                done = sorted(r[0] for r in rows)[len(rows) // 2]
                empty = sorted(r[1] for r in rows)[len(rows) // 2]
                left = max(r[2] for r in rows)
                empty_text = f"{empty * 1000:7.0f}ms" if left == 0 else "   never"
                print(f"{n:>5}  {name:<11} {done * 1000:7.0f}ms {empty_text:>9} {left:>9}")
                if name == "tether -w" and n == max(counts):
                    verdict = "PASS" if empty < 2.0 and left == 0 else "MISS"
                    print(f"       target: {n} hosts empty < 2 s: {verdict}")
        for n in counts:
            per_host, wall = client_cpu(lab, n)
            print(f"client CPU, {n} host(s) running `true`: {per_host * 1000:.0f} ms/host "
                  f"(wall {wall:.2f}s)")  # fmt: skip
    finally:
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
