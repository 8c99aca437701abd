"""Issue 17, items 1, 2 and 4: a hostile local user cannot steer what tether kills or waits for.

The attacker is the suite's unprivileged user; the victim is a root job. Each
test fails on a tether that trusts a cookie across uids or a stale session id.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from helpers import (
    alive,
    as_user,
    ensure_unprivileged_user,
    is_root,
    kill_identity,
    read_identity,
    tether_cmd,
    wait_for_file,
)
from tether._records import replace
from tether.identity import Identity
from tether.journal import Journal, new_record
from tether.policy import Policy
from tether.process import own_starttime, read_process
from tether.recovery import recover

pytestmark = pytest.mark.skipif(not is_root(), reason="a second, unprivileged user needs root")

COOKIE = "feedfacefeedfacefeedface"


@pytest.fixture(scope="module")
def attacker() -> pwd.struct_passwd:
    return ensure_unprivileged_user()


@pytest.fixture
def shared() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tether-sec-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


_SLEEPER = """\
import os, sys, time
st = open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19]
open(sys.argv[1] + ".tmp", "w").write(f"{os.getpid()} {st}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


def _sleeper(shared: Path, name: str) -> list[str]:
    """argv of a process that writes its own "PID STARTTIME" to shared/name, then sleeps."""
    script = shared / "sleeper.py"
    if not script.exists():
        script.write_text(_SLEEPER)
        script.chmod(0o644)
    return ["python3", str(script), str(shared / name)]


def _mark(shared: Path, name: str) -> tuple[int, int]:
    wait_for_file(shared / name)
    return read_identity(shared / name)


def _attacker(attacker: pwd.struct_passwd, shared: Path, name: str) -> subprocess.Popen[bytes]:
    """An attacker's process carrying the victim job's cookie."""
    return subprocess.Popen(
        as_user(attacker, ["env", f"TETHER_JOB_ID={COOKIE}", *_sleeper(shared, name)])
    )


@pytest.fixture
def known_cookie(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next job's cookie is one the attacker knows (as it could read it)."""
    import tether.job

    monkeypatch.setattr(tether.job, "new_cookie", lambda: COOKIE)


def test_root_kill_of_a_users_process_spares_the_root_job_its_cookie_names(
    attacker: pwd.struct_passwd, shared: Path, known_cookie: None
) -> None:
    # Item 1: the attacker's process is older than the root job and carries
    # its cookie; root kills (and first lists) the attacker's "runaway" process.
    target = _attacker(attacker, shared, "target")
    ident = _mark(shared, "target")
    try:
        with tether.start(_sleeper(shared, "victim"), watchdog=False) as job:
            victim = _mark(shared, "victim")
            # The cookie names a job in root's own journal: evidence, but only
            # for the target's uid.
            done = subprocess.run(
                tether_cmd("ps", "--json", str(ident[0])), capture_output=True, check=False
            )
            listed = {m["pid"] for m in json.loads(done.stdout)["members"]}
            assert victim[0] not in listed, done.stdout
            subprocess.run(tether_cmd("kill", "-q", str(ident[0])), check=False)
            assert alive(*victim), "root's job was killed through a user's forged cookie"
            job.cancel()
    finally:
        kill_identity(*ident)
        target.wait()


def test_a_cookie_naming_no_job_of_the_caller_is_not_followed(
    attacker: pwd.struct_passwd, shared: Path, known_cookie: None
) -> None:
    # Item 1: the same cookie, but `tether kill` runs with another journal: the
    # cookie names nothing of the caller's and no tracker corroborates it.
    target = _attacker(attacker, shared, "target")
    ident = _mark(shared, "target")
    other = _attacker(attacker, shared, "other")
    same_uid = _mark(shared, "other")
    try:
        with tether.start(_sleeper(shared, "victim"), watchdog=False) as job:
            victim = _mark(shared, "victim")
            env = {**os.environ, "TETHER_RUNTIME_DIR": tempfile.mkdtemp(prefix="tether-j-")}
            done = subprocess.run(
                tether_cmd("kill", "--json", "-", str(ident[0])),
                capture_output=True,
                env=env,
                check=False,
            )
            os.rmdir(env["TETHER_RUNTIME_DIR"])
            report = json.loads(done.stdout)
            cookie = next(t for t in report["trackers"] if t["name"] == "cookie")
            assert not cookie["used"], cookie
            assert alive(*victim)
            assert alive(*same_uid), "a process was killed on an uncorroborated cookie"
            job.cancel()
    finally:
        for p, i in ((target, ident), (other, same_uid)):
            kill_identity(*i)
            p.wait()


def test_reap_spares_a_strangers_session_that_reused_a_dead_leaders_pid(
    attacker: pwd.struct_passwd, shared: Path
) -> None:
    # Item 2: the stranger's daemon calls setsid() and its session leader
    # exits, leaving session id X with no holder — exactly what a dead job
    # leader's reused pid looks like. The job's record names leader X.
    sleeper = " ".join(_sleeper(shared, "daemon"))
    script = (
        f"setsid sh -c '{sleeper} & echo $$ > {shared}/sid.tmp; mv {shared}/sid.tmp {shared}/sid'"
    )
    subprocess.run(as_user(attacker, ["sh", "-c", script]), check=True)
    daemon = _mark(shared, "daemon")
    sid = int(wait_for_file(shared / "sid"))
    try:
        info = read_process(daemon[0])
        assert info is not None and info.sid == sid and read_process(sid) is None
        journal = Journal.default()
        record = new_record(
            job_id=COOKIE,
            cookie=COOKIE,
            argv=("sh",),
            policy=Policy.parse("TERM,1s,KILL"),
            supervisor=Identity(os.getpid(), own_starttime()),
            not_before=1,
            cgroup=None,
            trackers=("session",),
            restartable=False,
        )
        record = replace(record, leader=Identity(sid, 1), sid=sid, members=(Identity(sid, 1),))
        journal.write(record)
        report = recover(record, journal, reason="test")
        assert alive(*daemon), f"a stranger's session was taken for the job's: {report.to_dict()}"
        assert report.complete
    finally:
        kill_identity(*daemon)


def test_wait_leftovers_does_not_wait_for_a_process_only_a_cookie_ties(
    shared: Path, known_cookie: None
) -> None:
    # Item 4: a process carries the job's cookie (as anyone's could); the
    # leader exits; waiting for leftovers must end, and the cookie-only
    # process is then terminated as a leftover, not waited for.
    go = shared / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.05; done"
    with tether.start(["sh", "-c", script], watchdog=False, leftovers="wait") as job:
        stray = subprocess.Popen(["env", f"TETHER_JOB_ID={COOKIE}", *_sleeper(shared, "stray")])
        ident = _mark(shared, "stray")
        assert ident[0] in job.found_by()
        go.touch()
        assert job.wait(30) == 0
        assert job.wait_tree(10), "waited for a process only a cookie ties to the job"
        report = job.cancel()
    stray.wait()
    assert any(m.pid == ident[0] for m in report.members)
