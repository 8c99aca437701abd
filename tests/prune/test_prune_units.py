"""Pure parts of the pruner: parsers, the epilog's inputs, rules on a synthetic table."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from helpers import wait_for_exec
from tether.cli.prune import job_context
from tether.errors import UsageError
from tether.prune.classify import Plan, PruneOptions, Stray, _legitimate, _Orphans
from tether.prune.log import DecisionLog, fields
from tether.prune.scan import Proc, Table, parse_stat, parse_status, uid_min
from tether.prune.sources import Job, SourceError, parse_qstat, parse_session_lines


def test_parse_stat_handles_hostile_comm() -> None:
    line = (
        b"4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 90 0 0 0 150 50 0 0 20 0 1 0 "
        b"1000 5000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
    )
    p = parse_stat(line, now=20.0)
    assert (p.pid, p.comm, p.state, p.ppid, p.pgid, p.sid) == (4242, "a) b (c)", "S", 1, 4242, 4242)
    assert p.starttime == 1000 and p.cputime == 200 / os.sysconf("SC_CLK_TCK")
    assert not p.kernel_thread


def test_parse_status_reads_all_uids_and_groups() -> None:
    data = b"Name:\tx\nUid:\t1001\t0\t0\t0\nGid:\t1001\t1001\t1001\t1001\nGroups:\t27 64123 \n"
    assert parse_status(data) == ((1001, 0, 0, 0), (27, 64123))
    assert parse_status(b"Uid:\t1\t2\t3\t4\nGroups:\n") == ((1, 2, 3, 4), ())
    with pytest.raises(ValueError):
        parse_status(b"")


def test_uid_min_from_login_defs(tmp_path: Path) -> None:
    defs = tmp_path / "login.defs"
    defs.write_text("# comment\nUID_MIN\t\t\t 2000\nUID_MAX 60000\n")
    assert uid_min(str(defs)) == 2000
    defs.write_text("#UID_MIN 500\n")
    assert uid_min(str(defs)) == 1000
    defs.write_text("UID_MIN banana\n")
    assert uid_min(str(defs)) == 1000
    assert uid_min(str(tmp_path / "missing")) == 1000


def test_session_lines() -> None:
    jobs = parse_session_lines("s", "# header\n\n1234\n5678 42.server root  # a comment\n")
    assert [(j.job_id, j.uid, j.sids) for j in jobs] == [
        ("session-1234", None, frozenset({1234})),
        ("42.server", 0, frozenset({5678})),
    ]
    for bad in ("abc\n", "1\n", "12 job no-such-user-xyz\n"):
        with pytest.raises(SourceError):
            parse_session_lines("s", bad)


QSTAT = """\
Job Id: 101.srv
    Job_Name = a
    Job_Owner = root@login
    job_state = R
    exec_host = node7/0-3+node8/0
    session_id = 4242
    euser = root

Job Id: 102.srv
    job_state = R
    exec_host = node9/0
    session_id = 5555

Job Id: 103.srv
    job_state = Q
    exec_host = node7/1
    session_id = 6666
"""


def test_qstat_running_jobs_of_this_host() -> None:
    jobs = parse_qstat(QSTAT, "node7")
    assert [(j.job_id, j.uid, j.sids) for j in jobs] == [("101.srv", 0, frozenset({4242}))]
    assert [j.job_id for j in parse_qstat(QSTAT, "node9")] == ["102.srv"]


def test_slurm_epilog_environment() -> None:
    ctx = job_context((), {"SLURM_JOB_ID": "76", "SLURM_JOB_UID": "0", "SLURM_JOB_USER": "root"})
    assert (ctx.kind, ctx.job_id, ctx.uid) == ("slurm", "76", 0)
    assert b"SLURM_JOB_ID=76" in ctx.env
    assert job_context((), {"SLURM_JOB_ID": "7", "SLURM_JOB_USER": "root"}).uid == 0
    for env in (
        {},
        {"SLURM_JOB_ID": "x", "SLURM_JOB_UID": "0"},
        {"SLURM_JOB_ID": "7"},
        {"SLURM_JOB_ID": "7", "SLURM_JOB_USER": "no-such-user-xyz"},
        {"SLURM_JOB_ID": "7", "SLURM_JOB_UID": "5", "SLURM_JOB_USER": "root"},
        # int() refuses these two (more than 4300 digits; a superscript digit)
        {"SLURM_JOB_ID": "7", "SLURM_JOB_UID": "9" * 5000},
        {"SLURM_JOB_ID": "7", "SLURM_JOB_UID": "\u00b9"},
    ):
        with pytest.raises(UsageError):
            job_context((), env)


def test_torque_epilogue_arguments() -> None:
    ctx = job_context(["9.srv", "root", "root", "name", "321", "x"], {})
    assert (ctx.kind, ctx.job_id, ctx.uid, ctx.sids) == ("torque", "9.srv", 0, frozenset({321}))
    assert ctx.env == (b"PBS_JOBID=9.srv",)
    assert job_context(["9.srv", "root"], {}).sids == frozenset()
    for argv in (
        ["9.srv"],
        ["9.srv", "no-such-user-xyz"],
        ["9.srv", "root", "g", "n", "x"],
        ["9.srv", "root", "g", "n", "9" * 5000],
        ["9.srv", "root", "g", "n", "\u00b9"],
    ):
        with pytest.raises(UsageError):
            job_context(argv, {})


def table(*rows: tuple[int, int, int, tuple[int, int, int, int], str]) -> Table:
    """A synthetic table: (pid, ppid, sid, uids, comm)."""
    procs = {
        pid: Proc(pid, ppid, sid, sid, pid, "S", comm, False, 0.0, 100.0, uids, ())
        for pid, ppid, sid, uids, comm in rows
    }
    return Table(procs, {}, 1000.0)


U, R = (1001, 1001, 1001, 1001), (0, 0, 0, 0)


def test_orphans_and_subreapers() -> None:
    t = table(
        (10, 1, 10, R, "sshd"),  # a daemon holding a session
        (11, 10, 11, U, "bash"),
        (12, 11, 11, U, "sleep"),
        (20, 1, 20, U, "daemon"),  # re-parented to init
        (21, 20, 20, U, "worker"),
        (30, 1, 30, U, "systemd"),  # a user manager: a subreaper
        (31, 30, 31, U, "gpg-agent"),
    )
    orphan = _Orphans(t, 1000)
    assert not orphan(t.procs[12]) and not orphan(t.procs[11])
    assert orphan(t.procs[21]) and orphan(t.procs[20]) and orphan(t.procs[31])


def test_legitimacy_flows_to_descendants_and_sessions() -> None:
    t = table(
        (10, 1, 10, U, "job"),
        (11, 10, 10, U, "step"),
        (12, 1, 10, U, "escaped-in-session"),
        (13, 12, 13, U, "its-child"),
        (20, 1, 20, U, "stray"),
        (30, 1, 30, U, "root-of-job-b"),
    )
    legit = _legitimate(
        t,
        [Job("sessions", "a", sids=frozenset({10})), Job("tether", "b", roots=((30, 30),))],
    )
    assert set(legit) == {10, 11, 12, 13, 30}
    assert legit[13] == "sessions job a" and legit[30] == "tether job b"
    # A root whose start time does not match is a stranger holding the pid.
    assert 30 not in _legitimate(t, [Job("tether", "b", roots=((30, 29),))])


def test_log_fields_are_quoted() -> None:
    assert fields(a=1, b="x y", c='q"', d="") == 'a=1 b="x y" c="q\\"" d=""'


def _dry_run_plan() -> Plan:
    """A plan naming this test process as a stray (a dry run signals nothing)."""
    from tether.process import read_process

    me = read_process(os.getpid(), ("uids",))
    assert me is not None and me.uids is not None
    stray = Stray(me.pid, me.starttime, me.ppid, me.sid, me.uids, me.comm, 1.0, 0.0, "test", False)
    return Plan((stray,), {}, (), (), (), {-1: "unreadable for the test"}, PruneOptions(), 1, 0.0)


def test_decision_fields_are_built_only_when_logged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tether.policy import Policy
    from tether.prune import outcome

    built: list[str] = []

    def counting(**items: object) -> str:
        built.append(str(items.get("event")))
        return fields(**items)

    monkeypatch.setattr(outcome, "fields", counting)
    off = DecisionLog(enabled=False)
    assert not off.enabled
    done = outcome.execute(_dry_run_plan(), kill=False, policy=Policy.default(), log=off)
    assert [v.stray.pid for v in done.strays] == [os.getpid()]
    assert "stray" not in built and "unreadable" not in built
    # Logging on: every stray and unreadable entry is still written.
    built.clear()
    on = DecisionLog(file_path=str(tmp_path / "prune.log"))
    assert on.enabled
    try:
        outcome.execute(_dry_run_plan(), kill=False, policy=Policy.default(), log=on)
    finally:
        on.close()
    assert built.count("stray") == 1 and built.count("unreadable") == 1
    text = (tmp_path / "prune.log").read_text()
    assert f"event=stray action=would-kill pid={os.getpid()} " in text


def test_read_shown_names_only_the_process_with_that_start_time() -> None:
    # The listing reads a stray's command line by path: the start time read
    # after it is what ties it to the stray (a reused pid shows nothing).
    from tether.process import read_process
    from tether.prune.scan import read_shown

    me = read_process(os.getpid(), ("cmdline", "cgroup"))
    assert me is not None
    assert read_shown(me.pid, me.starttime) == (me.describe(), me.cgroup)
    assert read_shown(me.pid, me.starttime + 1) is None
    assert read_shown(2**22 + 1, 0) is None  # above pid_max: never a process


def test_facilities_are_the_syslog_handlers_and_no_syslog_loads_no_logging() -> None:
    # The table is written out so that a dry run with --no-syslog need not
    # import logging: it must stay what logging.handlers calls the facilities.
    import logging.handlers
    import subprocess
    import sys

    from tether.prune.log import FACILITIES

    names = dict(logging.handlers.SysLogHandler.facility_names)
    del names["security"]  # an alias of auth
    assert names == FACILITIES
    code = (
        "import sys\nfrom tether.prune import DecisionLog\n"
        "log = DecisionLog(enabled=False)\nlog.info('x'); log.error('y'); log.close()\n"
        "assert not log.enabled and log.failure is None\n"
        "print(sorted(m for m in ('logging', 'socket', 'tether.log_handlers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]" and done.stderr == "", done


def test_a_uid_is_ascii_digits_of_uid_size() -> None:
    import subprocess

    from helpers import tether_cmd
    from tether.prune.sources import uid_of

    assert uid_of("0") == 0 and uid_of("4294967295") == 4294967295
    assert uid_of("¹") is None and uid_of("9" * 5000) is None
    for user in ("¹", "9" * 5000):
        done = subprocess.run(
            tether_cmd("prune", "--batch", "none", "--user", user),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("tether: --user: unknown user"), done.stderr


def test_a_strays_command_line_is_read_bounded() -> None:
    """Another user's argv may be megabytes: the listing reads what it shows
    (4096 characters) and a chunk, not the whole of it."""
    import subprocess

    from tether.process import read_process
    from tether.prune.scan import read_shown

    child = subprocess.Popen(["sleep", "60", *(["x" * 100_000] * 20)])
    try:
        # Read once it has exec'd (before, its command line is not sleep's).
        wait_for_exec(child.pid, "sleep")
        info = read_process(child.pid)
        assert info is not None
        shown = read_shown(child.pid, info.starttime)
        assert shown is not None and shown[0] is not None
        assert shown[0].startswith("sleep 60 xxx")
        assert len(shown[0]) < 100_000
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("root", ["/nonexistent-slurm-root", ""])
def test_a_named_slurm_cgroup_root_that_is_no_directory_is_an_error(root: str) -> None:
    """A --slurm-cgroup-root that does not exist would find no job, and every
    job's process would look stray: said, and nothing is killed."""
    from helpers import tether_cmd
    from tether.prune.sources import SlurmCgroups, SourceError

    with pytest.raises(SourceError, match="no such directory"):
        SlurmCgroups([root]).job_dirs()
    done = subprocess.run(
        tether_cmd("prune", "--kill", "--batch", "none", "--slurm-cgroup-root", root,
                   "--user", "64998", "--min-age", "0", "--no-syslog"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "no such directory" in done.stderr and "nothing was killed" in done.stderr


@pytest.mark.parametrize("kill", [False, True])
def test_the_collector_is_off_for_the_scan_and_back_on_for_a_kill(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kill: bool
) -> None:
    """A dry run needs no cyclic collector (its records hold no cycles): off,
    as tether.cli.main leaves it; a kill runs the termination engine with it
    on again (past a freeze of what start-up made)."""
    import gc

    from tether.cli.prune import parse_fast, prune
    from tether.prune import classify, outcome

    seen: dict[str, bool] = {}

    class Done:
        complete = True
        log_problem = None

        def to_json(self) -> str:
            seen["show"] = gc.isenabled()
            return "{}"

    def fake_plan(*args: object, **kwargs: object) -> Plan:
        seen["plan"] = gc.isenabled()
        return _dry_run_plan()

    def fake_execute(*args: object, **kwargs: object) -> Done:
        seen["execute"] = gc.isenabled()
        return Done()

    monkeypatch.setattr(classify, "plan", fake_plan)
    monkeypatch.setattr(outcome, "execute", fake_execute)
    params = parse_fast(["--json", "--no-syslog", "--batch", "none", "--min-uid", "1000"])
    assert params is not None
    params["kill"] = kill
    gc.disable()  # as tether.cli.main does
    try:
        with pytest.raises(SystemExit) as done:
            prune(**params)
        assert done.value.code == 0
        assert seen == {"plan": False, "execute": kill, "show": kill}
        assert gc.isenabled() is kill
        assert (gc.get_freeze_count() > 0) is kill
    finally:
        gc.unfreeze()
        gc.enable()
    assert capsys.readouterr().out == "{}\n"


_PIECES = st.lists(
    st.sampled_from([b"\0", b"\r", b"\n", b"0::", b"/a b", b"\xff", b"\xc3\xa9", b"1:x:"])
)


@given(_PIECES.map(b"".join))
@example(b"\0a\0")  # an empty first argument
@example(b"a\0\0b\0")  # an empty argument inside
@example(b"1:cpu:/\n0::/x\ry\n")  # "\r" ends a line for splitlines()
@example(b"")
def test_procfs_shortcuts_give_the_plain_parse(data: bytes) -> None:
    # procfs's shortcuts for the pruner's thousands of reads (no split of a
    # command line without empty arguments, no splitlines() of a cgroup file
    # without "\r") give what the plain parse gives, whatever /proc holds.
    from tether._platform.linux.procfs import joined_cmdline, parse_cgroup_v2

    args = [a for a in data.rstrip(b"\0").decode("utf-8", "surrogateescape").split("\0") if a]
    assert joined_cmdline(data) == (" ".join(args) if data and args else None)
    v2 = [line[3:] for line in data.splitlines() if line.startswith(b"0::")]
    assert parse_cgroup_v2(data) == (v2[0].decode("utf-8", "surrogateescape") if v2 else None)


def test_supervisor_alive_is_recoverys_job_state() -> None:
    """The pruner asks whether a record's supervisor lives without the
    recovery engine, by the record's own rule: the same answer as recovery's
    job state for a live one, a zombie, a reused pid (another start time) and
    a record of another boot."""
    from tether.identity import Identity
    from tether.journal import JobRecord, boot_id
    from tether.policy import Policy
    from tether.process import read_process
    from tether.recovery import job_state

    zombie = subprocess.Popen(["true"])
    try:
        # Exited and not reaped (the wait below): a zombie.
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)
        dead = read_process(zombie.pid)
        me = read_process(os.getpid())
        assert me is not None and dead is not None and dead.state == "Z"
        cases = [
            (Identity(me.pid, me.starttime), boot_id(), True),
            (Identity(me.pid, me.starttime), "", True),  # an old record: no boot id
            (Identity(me.pid, me.starttime + 1), boot_id(), False),
            (Identity(me.pid, me.starttime), "another-boot", False),
            (Identity(zombie.pid, dead.starttime), boot_id(), False),
            (Identity(2**22 + 1, 0), boot_id(), False),
        ]
        for supervisor, boot, alive in cases:
            record = JobRecord(
                job_id="0" * 24, cookie="c", argv=("true",), policy=Policy.default(),
                owner_uid=0, started_at=0.0, boot_id=boot, supervisor=supervisor,
                not_before=0,
            )  # fmt: skip
            assert record.supervisor_alive() == job_state(record).supervisor_alive == alive
    finally:
        zombie.wait()


def test_the_package_names_load_on_first_use() -> None:
    """tether.prune's names are imported when asked for (the CLI starts its
    scan from tether.prune.scan before the rest is loaded), and each is the
    defining module's own object."""
    import importlib
    import sys

    code = (
        "import sys\n"
        "import tether.prune.scan\n"
        "print(sorted(m for m in sys.modules if m.startswith('tether.prune')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "['tether.prune', 'tether.prune.scan']\n"
    import tether.prune as package

    for name in package.__all__:
        value = getattr(package, name)
        assert value is getattr(importlib.import_module(value.__module__), name)
        assert name in dir(package)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        package.nothing  # noqa: B018
    with pytest.raises(ImportError):
        exec("from tether.prune import nothing", {})


def test_the_command_starts_its_scan_and_plans_with_its_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """tether prune starts the /proc scan first (it overlaps the imports and
    the configuration), and plan() takes that scan's table."""
    from tether.cli.prune import parse_fast, prune
    from tether.prune import classify, outcome, scan

    seen: dict[str, object] = {}
    table = Table({}, {}, 0.0)

    def started() -> object:
        seen["started"] = True
        return lambda: table

    def fake_plan(*args: object, scanner: Any = None, **kwargs: object) -> Plan:
        seen["table"] = scanner() if scanner is not None else None
        return _dry_run_plan()

    class Done:
        complete = True
        log_problem = None

        def to_json(self) -> str:
            return "{}"

    monkeypatch.setattr(scan, "scan_started", started)
    monkeypatch.setattr(classify, "plan", fake_plan)
    monkeypatch.setattr(outcome, "execute", lambda *a, **k: Done())
    params = parse_fast(["--json", "--no-syslog", "--batch", "none", "--min-uid", "1000"])
    assert params is not None
    with pytest.raises(SystemExit) as done:
        prune(**params)
    assert done.value.code == 0
    assert seen["started"] is True and seen["table"] is table
    assert capsys.readouterr().out == "{}\n"


def test_scan_seconds_count_from_a_scan_begun_earlier() -> None:
    """``tether prune`` starts its /proc scan beside its start-up; the plan's
    seconds (``scan_seconds`` in --json) count from that start, not from the
    plan's call, which may come after most of the scan."""
    import time

    from tether.prune.classify import PruneOptions, plan
    from tether.prune.scan import Table

    def empty() -> Table:
        return Table({}, {}, 0.0)

    hour_ago = time.perf_counter() - 3600
    assert plan(PruneOptions(min_uid=1000), [], scanner=empty, scan_began=hour_ago).seconds >= 3600
    assert plan(PruneOptions(min_uid=1000), [], scanner=empty).seconds < 3600
