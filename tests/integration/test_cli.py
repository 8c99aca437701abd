"""The ``tether`` command as a subprocess: errors, exit status, signals, reports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import alive, tether_cmd, wait_for, wait_for_exec, wait_for_file
from tether._platform.linux import procfs
from tether.process import ProcessHandle

PY = sys.executable
LIVENESS = 30.0  # a bound for "did not hang", not a timing benchmark


def tether(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tether_cmd(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


def starttime(pid: int) -> int:
    with procfs.ProcDir(pid) as d:
        return d.stat().starttime


def identities(*pids: int) -> list[tuple[int, int]]:
    return [(p, starttime(p)) for p in pids]


def kill_identities(idents: list[tuple[int, int]]) -> None:
    """SIGKILL whatever of these (pid, starttime) identities is still alive."""
    for pid, st in idents:
        h = ProcessHandle.open(pid, st)
        if h is not None:
            h.send_signal(signal.SIGKILL)
            h.close()


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tether: "), lines[0]
    assert done.stdout == ""
    return lines[0]


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-s", "FOO"], "FOO"),
        (["--policy", "TERM,1s,BOGUS"], "BOGUS"),
        (["--timeout", "1x"], "1x"),
        (["-k", "abc"], "abc"),
        (["--policy", ""], "policy"),
    ],
    ids=[
        "unknown-signal",
        "unknown-policy-signal",
        "bad-timeout",
        "bad-kill-after",
        "empty-policy",
    ],
)
def test_run_bad_input_is_one_line_125(tmp_path: Path, args: list[str], needle: str) -> None:
    marker = tmp_path / "ran"
    done = tether("run", *args, "--", "sh", "-c", f"echo x > {marker}")
    line = assert_one_line_error(done, 125)
    assert needle in line
    assert not marker.exists(), "the command must not run when the input is bad"


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["-s", "FOO"], "FOO"), (["--policy", "TERM,1s,BOGUS"], "BOGUS"), (["-k", "abc"], "abc")],
    ids=["unknown-signal", "unknown-policy-signal", "bad-kill-after"],
)
def test_kill_bad_policy_is_one_line_2(args: list[str], needle: str) -> None:
    leader = subprocess.Popen(["sleep", "100"], start_new_session=True)
    try:
        ident = identities(leader.pid)[0]
        line = assert_one_line_error(tether("kill", *args, str(leader.pid)), 2)
        assert needle in line
        assert alive(*ident), "bad input must not signal anything"
    finally:
        leader.kill()
        leader.wait()


def test_missing_command_is_127() -> None:
    line = assert_one_line_error(tether("run", "--", "/nonexistent/tether-no-such-cmd"), 127)
    assert "not found" in line
    line = assert_one_line_error(tether("run", "--", "tether-no-such-cmd-on-path"), 127)
    assert "not found" in line


def test_non_executable_file_is_126(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    line = assert_one_line_error(tether("run", "--", str(script)), 126)
    assert "not executable" in line


def test_directory_as_command_is_126(tmp_path: Path) -> None:
    line = assert_one_line_error(tether("run", "--", str(tmp_path)), 126)
    assert "not executable" in line


def test_kill_refuses_bad_targets() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process (barring reuse, checked below)
    if Path(f"/proc/{gone.pid}").exists():
        pytest.skip("the reaped pid was reused before the test could use it")
    cases = {
        str(gone.pid): "no such process",
        "0": "refusing",
        "1": "refusing",
        str(os.getpid()): "ancestor",
        "abc": "not a pid",
        "12abc": "not a pid",
    }
    for pid, needle in cases.items():
        line = assert_one_line_error(tether("kill", pid), 2)
        assert needle in line, (pid, line)
    assert_one_line_error(tether("ps", "abc"), 2)
    assert_one_line_error(tether("ps", str(gone.pid)), 2)


# -- exit status -------------------------------------------------------------


def test_command_status_passes_through() -> None:
    assert tether("run", "--", "sh", "-c", "exit 3").returncode == 3
    assert tether("run", "--", "true").returncode == 0


def test_killed_by_signal_is_128_plus_n() -> None:
    done = tether("run", "-q", "--", "sh", "-c", "kill -USR1 $$")
    assert done.returncode == 128 + signal.SIGUSR1
    done = tether("run", "-q", "--", "sh", "-c", "kill -KILL $$")
    assert done.returncode == 128 + signal.SIGKILL


def test_timeout_is_124(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    proc = subprocess.Popen(
        tether_cmd(
            "run", "-q", "--timeout", "1s", "--policy", "TERM,2s,KILL", "--",
            "sh", "-c", f"sleep 100 & echo $! > {pidfile}; wait",
        ),
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        sleeper = identities(int(wait_for_file(pidfile)))[0]
        _, err = proc.communicate(timeout=LIVENESS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 124, err
    assert time.monotonic() - start < LIVENESS
    assert not alive(*sleeper)


# -- pass-through --------------------------------------------------------------


def test_stdin_stdout_pass_through() -> None:
    done = subprocess.run(
        tether_cmd("run", "--", "cat"), input=b"abc", capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert done.stdout == b"abc"
    shell = subprocess.run(
        f"printf abc | {' '.join(tether_cmd('run', '--', 'cat'))} | tr a-c A-C",
        shell=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert shell.stdout == b"ABC"


def test_leftover_holding_stdout_does_not_hang(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    pidfile = tmp_path / "sleep"
    proc = subprocess.Popen(
        tether_cmd(
            "run", "-q", "--policy", "TERM,2s,KILL", "--json-file", str(report_file), "--",
            "sh", "-c", f"(sleep 100 & echo $! > {pidfile}); echo done",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=LIVENESS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("tether run hung on a leftover holding its stdout") from None
    assert proc.returncode == 0, err
    assert out == b"done\n"
    sleeper = int(pidfile.read_text())
    report = json.loads(report_file.read_text())
    # Identified by pid: the cmdline is the one seen when found (maybe still the forked sh).
    rec = [m for m in report["members"] if m["pid"] == sleeper]
    assert len(rec) == 1, report["members"]
    assert rec[0]["outcome"] == "killed"
    assert report["complete"] is True


# -- signals sent to tether run ----------------------------------------------

_TREE = """
import os, signal, subprocess, sys, time
d = sys.argv[1]
kids = [
    subprocess.Popen(["sleep", "100"]),
    subprocess.Popen(["setsid", "sleep", "100"]),
    subprocess.Popen(["sh", "-c", "(sleep 100 & echo $! > %s/dfork)" % d]),
]
kids[2].wait()
while not os.path.exists(d + "/dfork"):
    time.sleep(0.01)
with open(d + "/pids.tmp", "w") as f:
    f.write(" ".join(str(k.pid) for k in kids[:2]))
os.rename(d + "/pids.tmp", d + "/pids")
time.sleep(100)
"""


def _start_tree(
    tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], list[tuple[int, int]]]:
    proc = subprocess.Popen(
        tether_cmd("run", "-q", *extra, "--", PY, "-c", _TREE, str(tmp_path)),
        stderr=subprocess.PIPE,
    )
    pids = [int(p) for p in wait_for_file(tmp_path / "pids").split()]
    pids.append(int(wait_for_file(tmp_path / "dfork")))
    return proc, identities(*pids)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_to_tether_run_terminates_the_tree(tmp_path: Path, sig: int) -> None:
    proc, members = _start_tree(tmp_path, "--policy", "TERM,2s,KILL")
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=LIVENESS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The leader (python) dies of the policy's TERM.
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err.decode()
    for ident in members:
        assert not alive(*ident), ident


def test_second_sigint_skips_to_kill(tmp_path: Path) -> None:
    got = tmp_path / "got-term"
    ready = tmp_path / "ready"
    ignorer = (
        "import signal, sys, time\n"
        "def h(*a):\n"
        f"    open({str(got)!r}, 'w').write('TERM')\n"
        "signal.signal(signal.SIGTERM, h)\n"
        f"open({str(ready)!r}, 'w').write('1')\n"
        "while True: time.sleep(1)\n"
    )
    proc = subprocess.Popen(
        tether_cmd("run", "-q", "--policy", "TERM,60s,KILL", "--", PY, "-c", ignorer),
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_file(ready)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        wait_for_file(got)  # in the TERM step's 60 s grace now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=LIVENESS)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < LIVENESS
    assert proc.returncode == 128 + signal.SIGKILL, err


# -- reports, ps, kill ----------------------------------------------------------


def test_json_report_has_stable_keys(tmp_path: Path) -> None:
    report_file = tmp_path / "r.json"
    done = tether(
        "run", "-q", "--json-file", str(report_file), "--timeout", "200ms", "--policy",
        "TERM,1s,KILL", "--", "sh", "-c", "sleep 100 & wait",
    )  # fmt: skip
    assert done.returncode == 124, done.stderr
    report = json.loads(report_file.read_text())
    for key in (
        "schema", "job_id", "reason", "policy", "members", "survivors",
        "trackers", "steps", "caveats", "complete",
    ):  # fmt: skip
        assert key in report, key
    assert report["schema"] == 1
    assert report["reason"] == "timeout"
    assert report["complete"] is True
    assert report["survivors"] == []
    assert report["policy"].startswith("TERM")
    assert len(report["members"]) == 2
    for m in report["members"]:
        assert set(m) >= {"pid", "start_time", "cmdline", "found_by", "outcome", "ended_by"}
        assert m["outcome"] == "killed"
        assert m["found_by"]
    names = {t["name"] for t in report["trackers"]}
    assert names == {"cgroup", "subreaper", "session", "cookie", "walk"}
    assert all(set(t) == {"name", "used", "reason"} for t in report["trackers"])
    assert report["steps"][0]["signal"] == "TERM"


_FOREIGN_TREE = """
import os, signal, subprocess, sys
d = sys.argv[1]
a = subprocess.Popen(["setsid", "sleep", "100"])
b = subprocess.Popen(["sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"])
with open(d + "/pids.tmp", "w") as f:
    f.write(f"{a.pid} {b.pid}")
os.rename(d + "/pids.tmp", d + "/pids")
signal.pause()
"""


def test_ps_and_kill_a_foreign_tree(tmp_path: Path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(_FOREIGN_TREE)
    root = subprocess.Popen([PY, str(script), str(tmp_path)], start_new_session=True)
    members: list[tuple[int, int]] = []
    try:
        setsid_kid, ignorer = (int(p) for p in wait_for_file(tmp_path / "pids").split())
        wait_for_exec(setsid_kid, "sleep")
        members = identities(root.pid, setsid_kid, ignorer)

        ps = tether("ps", str(root.pid))
        assert ps.returncode == 0, ps.stderr
        lines = ps.stdout.splitlines()
        assert "FOUND BY" in lines[0]
        rows = {int(line.split()[0]): line for line in lines[1:] if not line.startswith("#")}
        assert {root.pid, setsid_kid, ignorer} <= set(rows), ps.stdout
        assert "session" in rows[root.pid]
        assert "walk" in rows[setsid_kid]
        assert any(line.startswith("# ") for line in lines)

        as_json = json.loads(tether("ps", "--json", str(root.pid)).stdout)
        found = {m["pid"]: m["found_by"] for m in as_json["members"]}
        assert "walk" in found[setsid_kid]

        done = tether("kill", "--policy", "TERM,300ms,KILL,2s", str(root.pid))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "tree confirmed empty" in done.stdout
        root.wait(timeout=LIVENESS)
        for ident in members:
            assert not alive(*ident), ident
    finally:
        kill_identities(members)
        if root.poll() is None:
            root.kill()
        root.wait()


def test_ps_rows_are_one_line_per_process(tmp_path: Path) -> None:
    root = subprocess.Popen(
        [PY, "-c", f"import signal\nopen({str(tmp_path / 'r')!r}, 'w').write('1')\nsignal.pause()"],
        start_new_session=True,
    )
    try:
        wait_for_file(tmp_path / "r")
        ps = tether("ps", str(root.pid))
        assert ps.returncode == 0, ps.stderr
        rows = [line for line in ps.stdout.splitlines()[1:] if not line.startswith("#")]
        assert len(rows) == 1, ps.stdout
        assert rows[0].split()[0] == str(root.pid)
    finally:
        root.kill()
        root.wait()


def test_wait_leftovers_waits_for_a_leftover_that_exits(tmp_path: Path) -> None:
    flag = tmp_path / "leftover-finished"
    report_file = tmp_path / "r.json"
    done = tether(
        "run", "-q", "--wait-leftovers", "--json-file", str(report_file), "--",
        "sh", "-c", f"(sleep 0.5; echo ok > {flag}) & exit 0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert flag.read_text() == "ok\n", "the leftover was killed instead of waited for"
    report = json.loads(report_file.read_text())
    assert report["complete"] is True
    assert report["steps"] == []
    assert all(m["outcome"] == "exited" for m in report["members"])


def test_kill_a_process_that_leads_nothing_and_has_no_cookie() -> None:
    """The target itself is a member even when only its identity says so."""
    proc = subprocess.Popen(["sleep", "300"])  # our session, our group, no cookie
    with procfs.ProcDir(proc.pid) as d:
        start = d.stat().starttime
    done = subprocess.run(
        tether_cmd("kill", "--json", str(proc.pid)), capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [m["pid"] for m in report["members"]] == [proc.pid]
    assert report["members"][0]["found_by"] == ["walk"]
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert not alive(proc.pid, start)


# -- one --json convention: --json prints the document, --json-file PATH writes it ------


def test_run_json_is_the_only_thing_on_stdout(tmp_path: Path) -> None:
    """The job's own stdout goes to stderr, so stdout parses as one document;
    no file named ``--`` is created (the old FILE-taking --json)."""
    done = subprocess.run(
        tether_cmd("run", "--json", "--", "sh", "-c", "echo job-out; echo job-err >&2; exit 3"),
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout)["schema"] == 1
    assert done.stderr.splitlines()[:2] == ["job-out", "job-err"]
    assert list(tmp_path.iterdir()) == []


def test_json_file_writes_the_report_and_leaves_stdout_to_the_job(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = tether("run", "--json-file", str(out), "--", "echo", "job-out")
    assert (done.returncode, done.stdout, done.stderr) == (0, "job-out\n", "")
    assert json.loads(out.read_text())["schema"] == 1


def test_json_and_json_file_together_is_bad_input(tmp_path: Path) -> None:
    line = assert_one_line_error(
        tether("run", "--json", "--json-file", str(tmp_path / "r.json"), "--", "true"), 125
    )
    assert line == "tether: give either --json or --json-file PATH, not both"
    line = assert_one_line_error(tether("kill", "--json", "--json-file", "x", "4242"), 2)
    assert line == "tether: give either --json or --json-file PATH, not both"


def test_old_json_file_spelling_still_works_with_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    done = tether("run", "--json", str(out), "--", "true")
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        f"tether: --json {out} is deprecated: use --json-file {out}"
        " (--json alone prints the document on stdout)\n"
    )
    assert json.loads(out.read_text())["schema"] == 1
    done = tether("run", "--json", "-", "--", "true")
    assert json.loads(done.stdout)["schema"] == 1
    assert "use --json (--json alone" in done.stderr
    # Never rewritten inside the job's argv.
    done = tether("run", "--", "echo", "--json", "x.json")
    assert (done.returncode, done.stdout, done.stderr) == (0, "--json x.json\n", "")
    assert not (tmp_path / "x.json").exists()


def test_kill_json_takes_no_file(tmp_path: Path) -> None:
    """``tether kill --json PID``: a flag, then the pid (once a FILE named PID)."""
    proc = subprocess.Popen(["sleep", "300"], cwd=tmp_path)
    done = subprocess.run(
        tether_cmd("kill", "--json", str(proc.pid)),
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [m["pid"] for m in json.loads(done.stdout)["members"]] == [proc.pid]
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


# -- tether ps: read-only, the journal, job ids, collapsed trees ----------------------


def test_ps_reads_pid_1_and_its_own_ancestors() -> None:
    """kill refuses pid 1 and tether's ancestors; ps only reads them."""
    child = subprocess.Popen(["sleep", "300"])
    try:
        for target in ("1", str(os.getpid())):
            done = tether("ps", target)
            assert done.returncode == 0, done.stderr
            assert done.stderr == ""
            assert f"# walk: used (descendants of pid {target})" in done.stdout
        mine = json.loads(tether("ps", "--json", str(os.getpid())).stdout)
        assert mine["root"] == os.getpid()
        assert child.pid in {m["pid"] for m in mine["members"]}
    finally:
        child.kill()
        child.wait()


def test_ps_collapses_identical_siblings_unless_all(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = (
        f"for i in $(seq 30); do sleep 300 & done; echo $$ > {ready}.tmp; mv {ready}.tmp {ready}"
        "; wait"
    )
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        wait_for_file(ready, LIVENESS)
        wait_for(lambda: len(json.loads(tether("ps", "--json", str(proc.pid)).stdout)["members"])
                 == 31, LIVENESS, "31 members")  # fmt: skip
        short = tether("ps", str(proc.pid)).stdout.splitlines()
        assert any(line.endswith("  30*[sleep 300]") for line in short), short
        assert short[-1] == (
            "# 31 processes in 2 rows: N*[COMMAND] stands for N sibling processes without "
            "children running COMMAND (--all lists each)"
        )
        every = tether("ps", "--all", str(proc.pid)).stdout.splitlines()
        assert sum(line.endswith(" sleep 300") for line in every) == 30
        assert not any(line.startswith("# 31 processes") for line in every)
    finally:
        tether("kill", "-q", "--policy", "KILL", str(proc.pid))
        proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a job cgroup)")
def test_ps_of_a_job_uses_its_journal_record(tmp_path: Path) -> None:
    """The leader's pid or the job id: the cgroup tether made is a tracker."""
    mark = tmp_path / "child"
    script = f"sleep 300 & echo $! > {mark}.tmp; mv {mark}.tmp {mark}; wait"
    run = subprocess.Popen(tether_cmd("run", "--policy", "TERM,2s,KILL", "--", "sh", "-c", script))
    try:
        wait_for_file(mark, LIVENESS)
        child = int(mark.read_text())
        (job,) = json.loads(tether("ps", "--json").stdout)["jobs"]
        assert job["cgroup"], job
        for target in (str(job["leader_pid"]), job["job_id"], job["job_id"][:8]):
            shown = tether("ps", "--json", target)
            assert shown.returncode == 0, (target, shown.returncode, shown.stderr)
            tree = json.loads(shown.stdout)
            found = {m["pid"]: m["found_by"] for m in tree["members"]}
            assert "cgroup" in found[child], (target, found)
            assert any(t["name"] == "cgroup" and t["used"] for t in tree["trackers"])
        assert_one_line_error(tether("ps", "ffffffffff"), 2)
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=LIVENESS)


# -- messages that do not mislead ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["run", "--timeout", "5x", "--", "true"], 125,
         "tether: --timeout: bad duration '5x': unknown unit 'x' (known: us, ms, s, m or min, "
         "h, d, w; also sec, minutes, hours, days, weeks)"),
        (["run", "--timeout", "1min 30", "--", "true"], 125,
         "tether: --timeout: bad duration '1min 30': a unit is required (e.g. 30s)"),
        (["run", "--uid", "5", "--", "true"], 125,
         "tether: no such option: --uid (the command's own options go after --: "
         "tether run [OPTIONS] -- CMD...)"),
        (["run", "--timout", "5", "--", "true"], 125,
         "tether: no such option: --timout (did you mean --timeout?)"),
        (["kill", "--uid", "3"], 2, "tether: no such option: --uid (see --help)"),
    ],
    ids=["unknown-unit", "unit-required", "no-near-option", "typo", "kill-uid"],
)  # fmt: skip
def test_messages_name_what_is_known(args: list[str], code: int, expected: str) -> None:
    assert assert_one_line_error(tether(*args), code) == expected


def test_piped_run_says_when_the_termination_starts(tmp_path: Path) -> None:
    """A CI log gets a line when the timeout fires, not only the report after
    the grace: read while tether is still in a 300 s grace for a TERM-ignoring
    job, then a second INT skips to KILL."""
    mark = tmp_path / "ready"
    proc = subprocess.Popen(
        tether_cmd("run", "--timeout", "100ms", "--policy", "TERM,300s,KILL", "--",
                   "sh", "-c", f'trap "" TERM; touch {mark}; while :; do sleep 1; done'),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert re.fullmatch(
            r"tether: terminating job [0-9a-f]+: step 1/2, TERM sent to \d+ member\(s\)\n", line
        ), line
        assert proc.poll() is None, "the line came before the grace was over"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=LIVENESS)[1]
    assert proc.returncode == 124
    assert "step 2/2, KILL sent to" in rest


def test_odd_policy_orders_are_warned_about_never_silently() -> None:
    done = subprocess.run(
        tether_cmd("run", "--policy", "KILL,1s,TERM", "--", "true"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "tether: warning: policy KILL,1s,TERM,5s: KILL in step 1 ends every member" in done.stderr
    )
    bare = subprocess.run(
        tether_cmd("run", "--policy", "TERM,10,KILL", "--", "true"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bare.returncode == 125
    assert bare.stderr.count("\n") == 1 and "write 10s for a grace" in bare.stderr


def test_ps_takes_a_job_id_prefix_of_digits_alone_when_no_such_pid_exists() -> None:
    """Job ids are hex: one may begin with eight digits. Such a prefix names
    the job when no process has that pid (above pid_max here), else the pid."""
    from tether.journal import Journal, new_record
    from tether.policy import Policy
    from tether.process import own_starttime

    sleeper = subprocess.Popen(["sleep", "30"])
    me = (os.getpid(), own_starttime())
    journal = Journal.default()
    ids = ["40845814" + "ab" * 8, f"{sleeper.pid}".ljust(24, "c")]
    for job_id in ids:  # no leader yet: ps shows the tree from the supervisor (us)
        journal.write(new_record(
            job_id=job_id, cookie=job_id, argv=("true",), policy=Policy.default(),
            supervisor=me, not_before=me[1], cgroup=None, trackers=("session",),
            restartable=False,
        ))  # fmt: skip
    try:
        for target, root in (("40845814", os.getpid()), (str(sleeper.pid), sleeper.pid)):
            shown = subprocess.run(
                tether_cmd("ps", "--json", target), check=False, capture_output=True,
                text=True, timeout=60,
            )  # fmt: skip
            assert shown.returncode == 0, (target, shown.stderr)
            assert json.loads(shown.stdout)["root"] == root, target
    finally:
        for job_id in ids:
            journal.remove(job_id)
        journal.close()
        sleeper.kill()
        sleeper.wait()
