"""The journal's file handling: atomic writes, strict reads, refusals that never crash."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether._records import replace
from tether.errors import JournalError
from tether.identity import Identity
from tether.journal import (
    RUNTIME_DIR_VAR,
    JobRecord,
    Journal,
    JournalProblem,
    journal_dir,
    new_record,
)
from tether.policy import Policy
from tether.watchdog import watch


def record(job_id: str = "0123456789abcdef01234567", **changes: object) -> JobRecord:
    base = new_record(
        job_id=job_id,
        cookie=job_id,
        argv=("sh", "-c", "echo 'quoted' $(x)\n"),
        policy=Policy.parse("INT,2s,TERM,10s,KILL", tree_delay=1.5),
        supervisor=Identity(100, 2000),
        not_before=2000,
        cgroup=None,
        trackers=("session", "cookie", "walk"),
        restartable=True,
    )
    return JobRecord(**{**base.__dict__, **changes})


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(str(tmp_path / "journal"))


def test_round_trip_and_modes(journal: Journal) -> None:
    r = record(leader=(101, 2001), members=((101, 2001), (102, 2003)), sid=101)
    journal.write(r)
    written = replace(r, revision=1)
    assert journal.read(r.job_id) == written
    assert list(journal.entries()) == [written]
    assert stat.S_IMODE(os.stat(journal.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(journal.path(r.job_id)).st_mode) == 0o600
    assert sorted(os.listdir(journal.directory)) == [f"{r.job_id}.json"], "temp file left"
    read = journal.read(r.job_id)
    assert isinstance(read, JobRecord)
    assert read.policy == Policy.parse("INT,2s,TERM,10s,KILL", tree_delay=1.5)
    assert read.policy_text == "INT,2s,TERM,10s,KILL,5s"
    assert read.leader == Identity(101, 2001) and type(read.leader) is Identity
    assert read.supervisor.pid == 100 and read.supervisor.starttime == 2000
    assert all(type(m) is Identity for m in read.members)
    journal.remove(r.job_id)
    journal.remove(r.job_id)  # idempotent
    assert journal.read(r.job_id) is None
    assert list(journal.entries()) == []


def test_rewrites_alternate_slots_and_leave_one_record(journal: Journal) -> None:
    """No rewrite renames over the record (ext4's auto_da_alloc would flush
    it): each goes to the free slot, then the old one is unlinked."""
    r = record()
    slots = [f"{r.job_id}.json", f"{r.job_id}.1.json"]
    for n in range(1, 6):
        journal.write(replace(r, state=f"state{n}"))
        assert sorted(os.listdir(journal.directory)) == [slots[(n - 1) % 2]]
        assert Path(journal.directory, slots[(n - 1) % 2]).stat().st_ino
        read = journal.read(r.job_id)
        assert isinstance(read, JobRecord)
        assert (read.state, read.revision) == (f"state{n}", n)
        assert list(journal.entries()) == [read]
    # Another process (recovery, reap) knows no slot: both are removed.
    Journal(journal.directory).remove(r.job_id)
    assert os.listdir(journal.directory) == []


def test_crash_between_rename_and_unlink_reads_the_higher_revision(journal: Journal) -> None:
    r = record()
    journal.write(replace(r, state="old"))
    old = Path(journal.directory, f"{r.job_id}.json").read_bytes()
    journal.write(replace(r, state="new"))
    # Both slots, as a crash after the rename and before the unlink leaves them.
    Path(journal.directory, f"{r.job_id}.json").write_bytes(old)
    for reader in (journal, Journal(journal.directory)):
        read = reader.read(r.job_id)
        assert isinstance(read, JobRecord) and (read.state, read.revision) == ("new", 2)
        (entry,) = reader.entries()
        assert entry == read
    # A torn slot beside a whole one: the whole one is the record, no problem.
    Path(journal.directory, f"{r.job_id}.json").write_bytes(old[:20])
    read = journal.read(r.job_id)
    assert isinstance(read, JobRecord) and read.state == "new"
    Journal(journal.directory).remove(r.job_id)
    assert os.listdir(journal.directory) == []


def test_missing_journal_reads_as_empty(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "never-made"))
    assert list(j.entries()) == []
    assert j.read("x") is None
    assert not (tmp_path / "never-made").exists()


def test_members_accumulate(journal: Journal) -> None:
    r = record().with_members({(5, 50)}).with_members({Identity(6, 60), (5, 50)})
    assert r.members == ((5, 50), (6, 60))
    assert all(type(m) is Identity for m in r.members)


# A record exactly as tether wrote it before records kept a typed Policy and
# Identity (identities as [pid, start] lists, the policy as Policy.to_dict()).
EARLIER_RECORD = (
    b'{"job_id":"0123456789abcdef01234567","cookie":"0123456789abcdef01234567",'
    b'"argv":["sh","-c","x"],"policy":{"steps":"INT,2s,TERM,10s,KILL,5s",'
    b'"leader_signal":null,"tree_delay":1.5,"kill_script":null},"owner_uid":1000,'
    b'"started_at":1700000000.5,"boot_id":"b","supervisor":[100,2000],"not_before":2000,'
    b'"cgroup":null,"sid":101,"leader":[101,2001],"watchdog":[103,2002],'
    b'"members":[[101,2001],[102,2003]],"trackers":["session","cookie","walk"],'
    b'"restartable":true,"tag_gid":47113,"state":"running","schema":1}'
)


def test_records_written_earlier_read_and_rewrite_unchanged() -> None:
    r = JobRecord.from_json(EARLIER_RECORD)
    assert r.policy == Policy.parse("INT,2s,TERM,10s,KILL", tree_delay=1.5)
    assert r.supervisor == Identity(100, 2000)
    assert r.watchdog == Identity(103, 2002)
    assert r.members == (Identity(101, 2001), Identity(102, 2003))
    assert r.to_json() == EARLIER_RECORD


def test_plain_pairs_are_kept_as_identities() -> None:
    policy = Policy.parse("TERM,3s,KILL", leader_signal=signal.SIGINT)
    r = new_record(
        job_id="j",
        cookie="c",
        argv=("true",),
        policy=policy,
        supervisor=(1, 2),
        not_before=2,
        cgroup=None,
        trackers=(),
        restartable=False,
    )
    assert r.policy == policy
    assert type(r.supervisor) is Identity
    r = replace(r, leader=(3, 4), watchdog=(5, 6), members=((7, 8),))
    assert (type(r.leader), type(r.watchdog), type(r.members[0])) == (Identity,) * 3
    assert JobRecord.from_json(r.to_json()) == r


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("supervisor"), "missing 'supervisor'"),
        (lambda d: d.update(supervisor=[1]), "is not a [pid, start time] pair"),
        (lambda d: d.update(members=[[1, True]]), "is not a [pid, start time] pair"),
        (lambda d: d.update(owner_uid=True), "bad 'owner_uid'"),
        (lambda d: d.update(argv=["a", 1]), "bad 'argv'"),
        (lambda d: d.update(schema=99), "unknown schema 99"),
        (lambda d: d.update(policy={"steps": "TERM,banana"}), "bad 'policy'"),
        (lambda d: d.update(restartable="yes"), "bad 'restartable'"),
    ],
)
def test_malformed_records_are_problems(journal: Journal, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    r = record()
    data = json.loads(r.to_json())
    mutate(data)
    journal.write(r)
    Path(journal.path(r.job_id)).write_text(json.dumps(data))
    (entry,) = journal.entries()
    assert isinstance(entry, JournalProblem)
    assert message in entry.message
    assert entry.path == journal.path(r.job_id)


def test_truncated_empty_and_misnamed(journal: Journal) -> None:
    r = record()
    journal.write(r)
    raw = Path(journal.path(r.job_id)).read_bytes()
    Path(journal.path(r.job_id)).write_bytes(raw[:20])
    Path(journal.directory, "empty.json").write_bytes(b"")
    Path(journal.directory, "other.json").write_bytes(raw)
    Path(journal.directory, "notes.txt").write_text("ignored")
    messages = sorted(str(e) for e in journal.entries())
    assert len(messages) == 3
    assert any("empty.json: empty: skipped" in m for m in messages)
    assert any("other.json: names job" in m for m in messages)
    assert any(f"{r.job_id}.json: corrupt or truncated" in m for m in messages)


def test_symlink_and_fifo_records_are_refused(journal: Journal, tmp_path: Path) -> None:
    r = record()
    journal.write(record(job_id="a" * 24))
    target = tmp_path / "target.json"
    target.write_bytes(r.to_json())
    os.symlink(target, journal.path(r.job_id))
    os.mkfifo(Path(journal.directory, "fifo.json"))
    problems = {
        Path(e.path).name: e.message for e in journal.entries() if isinstance(e, JournalProblem)
    }
    assert problems[f"{r.job_id}.json"] == "is a symlink, not a record: skipped"
    assert problems["fifo.json"] == "is not a regular file: skipped"
    # Writing through the planted symlink replaces it, never writes its target.
    journal.write(r)
    assert not os.path.islink(journal.path(r.job_id))
    assert target.read_bytes() == r.to_json()


def test_directory_open_to_others_is_refused(journal: Journal) -> None:
    journal.write(record())
    journal.close()
    os.chmod(journal.directory, 0o777)
    with pytest.raises(JournalError, match="not writable by others"):
        list(journal.entries())


def test_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(JournalError, match="is a symlink or not a directory"):
        list(Journal(str(tmp_path / "link")).entries())


def test_default_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert journal_dir({RUNTIME_DIR_VAR: "/x/y"}) == "/x/y"
    if os.geteuid() == 0:
        assert journal_dir({}) == "/run/tether"
    else:
        assert journal_dir({"XDG_RUNTIME_DIR": "/run/user/5"}) == "/run/user/5/tether"
        assert journal_dir({}) == f"/tmp/tether-{os.geteuid()}"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_reader(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    j = Journal(str(tmp_path_factory.mktemp("j") / "journal"))
    j.write(record())
    Path(j.path(record().job_id)).write_bytes(raw)
    (entry,) = j.entries()
    assert isinstance(entry, (JobRecord, JournalProblem))


def test_watch_tells_done_from_gone() -> None:
    r, w = os.pipe()
    os.write(w, b"do")
    os.write(w, b"ne\n")
    assert watch(-1, r) is False
    os.close(r)
    os.close(w)
    r, w = os.pipe()
    os.close(w)
    assert watch(-1, r) is True  # EOF without "done": the supervisor is gone
    os.close(r)


def test_a_record_rewritten_meanwhile_never_goes_missing_for_a_reader(journal: Journal) -> None:
    """A rewrite renames into the free slot, then unlinks the other: one slot
    always exists, but a reader opening them in turn (or a listing, then the
    opens) can fall between; it must look again rather than report the live
    job gone (prune would take its processes for strays)."""
    r = record()
    journal.write(r)
    writer = os.fork()
    if writer == 0:  # the child rewrites until killed
        try:
            n = 0
            while True:
                n += 1
                journal.write(replace(r, state=f"s{n}"))
        finally:
            os._exit(0)
    try:
        reader = Journal(journal.directory)
        missing = 0
        for _ in range(3000):
            if reader.read(r.job_id) is None:
                missing += 1
            if not [e for e in reader.entries() if isinstance(e, JobRecord)]:
                missing += 1
        assert missing == 0
    finally:
        os.kill(writer, signal.SIGKILL)
        os.waitpid(writer, 0)
