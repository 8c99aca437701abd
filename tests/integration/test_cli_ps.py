"""`tether ps PID` lists every process of PID's tree it may read, including what
tether would never signal (the root when it is an ancestor of tether, tether
itself, zombies, kernel threads), and says on stderr what it could not read."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import as_user, ensure_unprivileged_user, is_root, tether_cmd, user_python, wait_for


def tether(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tether_cmd(*args), capture_output=True, text=True, timeout=60, check=False
    )


def members(done: subprocess.CompletedProcess[str]) -> dict[int, dict[str, object]]:
    assert done.returncode == 0, done.stderr
    return {m["pid"]: m for m in json.loads(done.stdout)["members"]}


def test_ps_of_its_own_caller_lists_the_caller_and_itself() -> None:
    # sh runs tether ps on itself: sh is an ancestor of tether (never a
    # member of anything tether kills), but ps only reads.
    script = 'exec 3>&1; "$@" ps --json $$; echo "sh $$" >&3'
    done = subprocess.run(
        ["sh", "-c", script, "sh", *tether_cmd()], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document, sh_line = done.stdout.rsplit("\n", 2)[0:2]
    sh_pid = int(sh_line.split()[1])
    listed = {m["pid"]: m for m in json.loads(document)["members"]}
    assert sh_pid in listed, listed
    # tether itself, the child of sh, running ps.
    assert any(m["ppid"] == sh_pid and "ps --json" in str(m["cmdline"]) for m in listed.values())


ZOMBIE_MAKER = """
import os, sys, time
child = os.fork()
if child == 0:
    os._exit(0)
with open(sys.argv[1], "w") as f:
    f.write(str(child))
time.sleep(300)
"""


@pytest.fixture
def parent_of_a_zombie(tmp_path: Path) -> Iterator[tuple[int, int]]:
    ready = tmp_path / "zombie"
    proc = subprocess.Popen([sys.executable, "-c", ZOMBIE_MAKER, str(ready)])
    try:
        wait_for(lambda: ready.exists() and ready.read_text() != "", 30, "the zombie")
        yield proc.pid, int(ready.read_text())
    finally:
        proc.kill()  # our own child: the zombie goes with it (re-parented, reaped)
        proc.wait()


def test_ps_shows_a_zombie_in_the_tree(parent_of_a_zombie: tuple[int, int]) -> None:
    parent, zombie = parent_of_a_zombie
    listed = members(tether("ps", "--json", str(parent)))
    assert listed[zombie]["state"] == "Z"
    assert listed[zombie]["ppid"] == parent
    plain = tether("ps", str(parent)).stdout
    assert f"{zombie:>7} {parent:>7} Z" in plain


def test_ps_of_kthreadd_lists_kernel_threads() -> None:
    try:
        comm = Path("/proc/2/comm").read_text().strip()
    except OSError:
        comm = ""
    if comm != "kthreadd":
        pytest.skip("pid 2 is not kthreadd here (a PID namespace)")
    listed = members(tether("ps", "--json", "2"))
    assert listed[2]["cmdline"] == "[kthreadd]"
    assert len(listed) > 1  # its kernel threads
    assert all(m["ppid"] in listed for pid, m in listed.items() if pid != 2)


@pytest.mark.skipif(not is_root(), reason="switching to an unprivileged user needs root")
def test_ps_as_a_user_lists_root_processes_and_says_what_it_could_not_read(
    parent_of_a_zombie: tuple[int, int],
) -> None:
    user: pwd.struct_passwd = ensure_unprivileged_user()
    py = user_python(user)
    if py is None:
        pytest.skip(f"no Python interpreter uid {user.pw_uid} can run with tether importable")
    parent, zombie = parent_of_a_zombie
    done = subprocess.run(
        as_user(user, [*py, "-m", "tether.cli", "ps", "--json", str(parent)]),
        capture_output=True, text=True, timeout=60, check=False, cwd="/",
    )  # fmt: skip
    listed = members(done)
    assert set(listed) == {parent, zombie}
    assert "python" in str(listed[parent]["cmdline"])
    assert done.stderr.splitlines() == [
        "tether: could not read the environment of 2 process(es) of other users (needs root): "
        "the cookie tracker cannot see them"
    ]
    assert os.geteuid() == 0  # the processes are root's


@pytest.fixture
def sleeping_session() -> Iterator[int]:
    """A session leader (bash) with three sleeping children, all our own."""
    proc = subprocess.Popen(
        ["bash", "-c", "sleep 300 & sleep 301 & (exec -a 'renamed argv' sleep 302) & wait"],
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(_children(proc.pid)) == 3, 30, "three sleeping children")
        yield proc.pid
    finally:
        os.killpg(proc.pid, 9)  # the session this fixture started, by its own pgid
        proc.wait()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_read_only_scan_finds_what_the_adopting_scan_finds_without_handles(
    sleeping_session: int,
) -> None:
    from tether.membership import Membership, ReadOnlyMembership

    adopting, _ = Membership.for_tree(sleeping_session)
    try:
        members = [m for m in adopting.scan() if m.alive]
    finally:
        adopting.close()
    fds_before = set(os.listdir("/proc/self/fd"))
    view = ReadOnlyMembership(Membership.for_tree(sleeping_session)[0])
    seen, table = view.observe()
    # Nothing held open: no pidfd or dirfd per process (what made it cheaper).
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    view.close()
    # Same processes, same order (oldest first), same trackers, same command lines.
    assert [(s.info.pid, set(s.found_by), s.cmdline) for s in seen] == [
        (m.pid, m.found_by, m.cmdline) for m in members
    ]
    assert len(seen) == 4 and "renamed argv 302" in {s.cmdline for s in seen}
    assert all(s.info.pid in table for s in seen)
    # Nothing to signal with: no handles, no terminating methods.
    assert not any(hasattr(view, name) for name in ("scan", "send", "kill_all", "freeze"))


def test_read_only_row_is_tied_to_its_start_time(sleeping_session: int) -> None:
    from tether._platform.linux import read_shown
    from tether.process import read_process

    info = read_process(sleeping_session)
    assert info is not None
    shown = read_shown(sleeping_session, info.starttime)
    assert shown is not None and shown[0] == "bash"
    # Another start time is another process that held (or will hold) the pid:
    # its command line must not be shown for this one.
    assert read_shown(sleeping_session, info.starttime + 1) is None
