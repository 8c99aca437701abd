"""Child processes at the file descriptor limit, for tests/linux.

Each scenario runs in a child python (its limits and descriptors are its
own, not the test runner's) that imports tether from this tree and writes
what it saw as JSON: :func:`run_child` with a body and the parts it needs.

- :data:`LOW`: ``with_free(k)`` sets the soft limit so that exactly k more
  descriptors can be opened (open() takes the lowest free number: the k-th
  opened is the first one out of reach), ``restore()`` puts it back;
  ``with_k_free(k, call, *args)`` / ``at_limit(call, *args)`` run one call
  so (the limit another thread's descriptors would leave) and answer
  ``["ok", result]`` or ``["error", errno or text]``; ``open_fds()``.
- :data:`HIGH`: every descriptor number up to 1100 taken, so that what the
  child opens next is numbered past FD_SETSIZE (1024).
- :data:`LEADER` / :func:`kill_listed_sleeps`: a job leader that starts
  sleeps and lists them, and the test's clean-up of them should the child
  fail before its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from helpers import kill_identity, proc_stat

SRC = str(Path(__file__).resolve().parents[1] / "src")

_PRELUDE = """
import json, os, resource, sys
sys.path[:0] = [{src!r}]
OUT = sys.argv[1]
def done(**result):
    with open(OUT, "w") as f:
        json.dump(result, f)
"""

LOW = """
_SOFT, _HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
def with_free(k):
    probe = [os.open(os.devnull, os.O_RDONLY) for _ in range(k + 1)]
    for fd in probe:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (probe[k], _HARD))
def restore():
    resource.setrlimit(resource.RLIMIT_NOFILE, (_SOFT, _HARD))
def open_fds():
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))
def at_limit(call, *args):
    "call(*args) with no descriptor free: ['ok', result] or ['error', errno or text]"
    return with_k_free(0, call, *args)
def with_k_free(k, call, *args):
    "call(*args) with k descriptors free"
    with_free(k)
    try:
        return ["ok", call(*args)]
    except OSError as err:
        return ["error", err.errno]
    except Exception as err:
        return ["error", type(err).__name__ + ": " + str(err)]
    finally:
        restore()
"""

HIGH = """
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
_null = os.open(os.devnull, os.O_RDONLY)
_held = [_null]
while _held[-1] < 1100:
    _held.append(os.dup(_null))
def next_fd():
    fd = os.dup(_null)
    os.close(fd)
    return fd
assert next_fd() > 1100
"""

#: A job's leader: ``LEADER READY N`` starts N sleeps (``sleep 800``,
#: ``sleep 801``...), lists their pids in READY and waits for them.
LEADER = (
    "import os, subprocess, sys\n"
    "kids = [subprocess.Popen(['sleep', f'{800 + i}']) for i in range(int(sys.argv[2]))]\n"
    "with open(sys.argv[1] + '.tmp', 'w') as f:\n"
    "    f.write(' '.join(str(k.pid) for k in kids))\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "[k.wait() for k in kids]\n"
)


#: In a child: ``start_sleeps(ready, leader, n)`` starts the LEADER job with
#: n sleeps (cgroup and keeper as tether.start picks them); the job and the
#: sleeps' start times by pid, once all run.
SLEEPS = """
import subprocess, time
import tether
def start_sleeps(ready, leader, n, trackers="auto"):
    job = tether.start(
        [sys.executable, "-c", leader, ready, str(n)],
        trackers=trackers, policy="KILL", stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(ready) as f:
            kids = [int(p) for p in f.read().split()]
        starts = {}
        for pid in kids:
            with open(f"/proc/{pid}/stat", "rb") as f:
                starts[pid] = int(f.read().rsplit(b")", 1)[1].split()[19])
    except BaseException:
        job.cancel("cleanup")
        raise
    return job, starts
"""


def run_child(tmp_path: Path, body: str, *parts: str, args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``body`` after the prelude and ``parts`` in a child python; its result."""
    out = tmp_path / "result.json"
    code = _PRELUDE.format(src=SRC) + "".join(parts) + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def kill_listed_sleeps(ready: Path) -> None:
    """The child failed: the LEADER's sleeps (listed in ``ready``), by pid and
    the command line the leader gave them."""
    try:
        pids = [int(p) for p in ready.read_text().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        st = proc_stat(pid)
        if st is not None and cmdline.startswith(b"sleep\0" + b"8"):
            kill_identity(pid, st.starttime)


def run_sleeps_child(
    tmp_path: Path, ready: Path, body: str
) -> tuple[dict[str, Any], dict[int, int]]:
    """``body`` in a child with LOW and SLEEPS, its argv[2] the READY file and
    argv[3] the LEADER; its result and the sleeps' start times by pid, which
    the body reports as ``kids``. The listed sleeps are killed if it fails."""
    try:
        result = run_child(tmp_path, body, LOW, SLEEPS, args=(str(ready), LEADER))
    except BaseException:
        kill_listed_sleeps(ready)
        raise
    return result, {int(pid): st for pid, st in result["kids"].items()}
