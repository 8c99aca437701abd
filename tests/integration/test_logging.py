"""tether's event log from real runs: JSON lines, syslog and journald datagrams.

syslog and journald are real AF_UNIX datagram sockets the test binds, named
through TETHER_SYSLOG_SOCKET / TETHER_JOURNALD_SOCKET.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import tether_cmd

LEAVES_A_CHILD = "sleep 100 & echo $! > {pidfile}; exit 3"


def env_with(**extra: str) -> dict[str, str]:
    """Our environment (it carries TETHER_TEST_ID) without logging settings, plus ``extra``."""
    drop = ("TETHER_LOG_LEVEL", "TETHER_LOG_FORMAT", "TETHER_LOG_TARGET", "JOURNAL_STREAM")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def tether(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tether_cmd(*args),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env if env is not None else env_with(),
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stderr.splitlines()]
    for r in records:
        assert {"ts", "level", "logger", "msg"} <= set(r), r
        assert r["ts"].endswith("Z")
    return records


@pytest.fixture
def dgram(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        yield path, sock


def received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 20))
        except BlockingIOError:
            return out


def journal_fields(datagram: bytes) -> dict[str, str]:
    """Parse journald's native protocol: KEY=VALUE lines, or KEY\\n<u64 len><data>\\n."""
    out = {}
    rest = datagram
    while rest:
        line, sep, after = rest.partition(b"\n")
        assert sep, rest
        if b"=" in line:
            key, _, value = line.partition(b"=")
            rest = after
        else:
            key = line
            (size,) = struct.unpack("<Q", after[:8])
            value = after[8 : 8 + size]
            assert after[8 + size : 9 + size] == b"\n"
            rest = after[9 + size :]
        out[key.decode()] = value.decode()
    return out


# -- JSON lines ----------------------------------------------------------------


def test_json_lines_carry_the_events_of_a_real_run(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    report = tmp_path / "report.json"
    done = tether(
        "--log-level", "debug", "--log-format", "json", "--log-target", "stderr",
        "run", "-q", "--json-file", str(report), "--",
        "sh", "-c", LEAVES_A_CHILD.format(pidfile=pidfile),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    records = json_lines(done.stderr)
    job_id = json.loads(report.read_text())["job_id"]
    child = int(pidfile.read_text())
    assert {r["job_id"] for r in records} == {job_id}

    (started,) = [r for r in records if r["msg"].startswith(f"job {job_id} started")]
    assert started["logger"] == "tether.job" and started["level"] == "info"
    assert "session" in started["trackers"] and isinstance(started["not_used"], list)
    (leader,) = [r for r in records if "returncode" in r]
    assert leader["returncode"] == 3 and leader["pid"] != child
    steps = [r for r in records if r["logger"] == "tether.terminate" and "members" in r]
    assert steps and steps[0]["signal"] == "TERM" and steps[0]["members"] >= 1
    signalled = [r for r in records if r["level"] == "debug"]
    assert {"pid": child, "signal": "TERM", "delivery": "delivered"}.items() <= next(
        r for r in signalled if r["pid"] == child
    ).items()
    (finished,) = [r for r in records if "left" in r]
    assert finished["left"] == 0
    # The order of events is the order they happened.
    assert records.index(started) < records.index(leader) < records.index(steps[0])


def test_environment_sets_logging_and_flags_win(tmp_path: Path) -> None:
    cmd = ("sh", "-c", LEAVES_A_CHILD.format(pidfile=tmp_path / "child"))
    by_env = tether(
        "run", "-q", "--", *cmd, env=env_with(TETHER_LOG_LEVEL="info", TETHER_LOG_FORMAT="json")
    )
    assert by_env.returncode == 3, by_env.stderr
    levels = {r["level"] for r in json_lines(by_env.stderr)}
    assert levels == {"info"}  # no debug records at info

    flag_wins = tether(
        "--log-level", "error", "run", "-q", "--", *cmd,
        env=env_with(TETHER_LOG_LEVEL="debug", TETHER_LOG_FORMAT="json"),
    )  # fmt: skip
    assert flag_wins.returncode == 3
    assert flag_wins.stderr == ""


def test_text_format_is_one_line_per_event_with_fields(tmp_path: Path) -> None:
    done = tether("--log-level", "info", "--log-target", "stderr", "run", "--", "true")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines, "nothing logged"
    started = next(ln for ln in lines if " started: " in ln)
    assert " tether[" in started and " info tether.job: job " in started
    assert " job_id=" in started and " trackers=" in started


def test_nothing_is_logged_and_logging_not_imported_by_default() -> None:
    # `tether run -- true` must not pay for importing logging.
    probe = (
        "import sys\n"
        "from tether.cli import main\n"
        "try:\n"
        "    main(['run', '--', 'true'])\n"
        "finally:\n"
        "    print('logging' in sys.modules, file=sys.stdout)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
        check=False, env=env_with(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert done.stderr == ""


# -- syslog and journald ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_syslog_target_sends_rfc3164_datagrams(
    dgram: tuple[str, socket.socket], tmp_path: Path, fmt: str
) -> None:
    path, sock = dgram
    done = tether(
        "--log-target", "syslog", "--log-level", "info", "--log-format", fmt,
        "run", "-q", "--", "sh", "-c", LEAVES_A_CHILD.format(pidfile=tmp_path / "child"),
        env=env_with(TETHER_SYSLOG_SOCKET=path),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stderr == ""  # all of it went to the socket
    messages = [m.decode() for m in received(sock)]
    assert messages
    user_info = f"<{1 * 8 + 6}>"  # facility user, severity info
    for m in messages:
        assert m.startswith(f"{user_info}tether["), m
        assert m.endswith("\x00")
    bodies = [m.split("]: ", 1)[1].rstrip("\x00") for m in messages]
    if fmt == "json":
        records = [json.loads(b) for b in bodies]
        assert any(r["logger"] == "tether.job" and "trackers" in r for r in records)
    else:
        assert any(b.startswith("job ") and " started: " in b and "job_id=" in b for b in bodies)


def test_journald_target_sends_native_fields(
    dgram: tuple[str, socket.socket], tmp_path: Path
) -> None:
    path, sock = dgram
    pidfile = tmp_path / "child"
    done = tether(
        "--log-target", "journald", "--log-level", "debug",
        "run", "-q", "--", "sh", "-c", LEAVES_A_CHILD.format(pidfile=pidfile),
        env=env_with(TETHER_JOURNALD_SOCKET=path),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert done.stderr == ""
    entries = [journal_fields(d) for d in received(sock)]
    assert entries
    for e in entries:
        assert e["SYSLOG_IDENTIFIER"] == "tether"
        assert e["LOGGER"].startswith("tether.")
        assert e["PRIORITY"] in ("6", "7")
        assert e["MESSAGE"] and e["TETHER_JOB_ID"]
    child = pidfile.read_text().strip()
    signalled = [e for e in entries if e.get("TETHER_PID") == child and "TETHER_SIGNAL" in e]
    assert signalled and signalled[0]["PRIORITY"] == "7"
    assert signalled[0]["TETHER_SIGNAL"] == "TERM"
    assert signalled[0]["CODE_FILE"].endswith("terminate.py")


def test_auto_target_is_journald_only_when_stderr_is_the_journal_stream(
    dgram: tuple[str, socket.socket], tmp_path: Path
) -> None:
    path, sock = dgram
    errfile = tmp_path / "stderr"
    with errfile.open("w") as err:
        st = os.fstat(err.fileno())
        env = env_with(
            TETHER_JOURNALD_SOCKET=path,
            TETHER_LOG_LEVEL="info",
            JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
        )
        done = subprocess.run(
            tether_cmd("run", "--", "true"), stderr=err, env=env, timeout=60, check=False
        )
    assert done.returncode == 0
    assert errfile.read_text() == ""
    assert any(journal_fields(d).get("LOGGER") == "tether.job" for d in received(sock))

    # Another stream (a pipe): JOURNAL_STREAM is someone else's, so stderr.
    piped = tether("run", "--", "true", env=env)
    assert piped.returncode == 0
    assert " info tether.job: " in piped.stderr
    assert received(sock) == []


def test_unreachable_log_socket_is_said_once(tmp_path: Path) -> None:
    done = tether(
        "--log-target", "syslog", "--log-level", "info", "run", "--", "true",
        env=env_with(TETHER_SYSLOG_SOCKET=str(tmp_path / "missing.sock")),
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"tether: logging failed: syslog socket {tmp_path / 'missing.sock'}: "
        "No such file or directory"
    ]


# -- bad values ----------------------------------------------------------------------


def assert_one_line(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("tether: ")
    for needle in needles:
        assert needle in line, line
    assert done.stdout == ""


def test_bad_log_level_before_run_is_125_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = tether("--log-level", "loud", "run", "--", "touch", str(marker))
    assert_one_line(done, 125, "--log-level", "loud")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "env", "needles"),
    [
        (["--log-level", "loud", "ps"], {}, ["--log-level", "loud"]),
        (["--log-format=xml", "config"], {}, ["--log-format", "xml"]),
        (["ps"], {"TETHER_LOG_TARGET": "nowhere"}, ["TETHER_LOG_TARGET", "nowhere"]),
        (["reap"], {"TETHER_LOG_LEVEL": "loud"}, ["TETHER_LOG_LEVEL", "loud"]),
    ],
    ids=["flag-ps", "flag-config", "env-ps", "env-reap"],
)
def test_bad_log_settings_for_other_commands_are_2(
    args: list[str], env: dict[str, str], needles: list[str]
) -> None:
    assert_one_line(tether(*args, env=env_with(**env)), 2, *needles)


def test_bad_log_variable_in_run_is_125(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = tether("run", "--", "touch", str(marker), env=env_with(TETHER_LOG_FORMAT="xml"))
    assert_one_line(done, 125, "TETHER_LOG_FORMAT")
    assert not marker.exists()


def test_bad_log_variable_never_fails_an_epilog() -> None:
    # No job in the environment: the epilog has nothing to do and exits 0;
    # a bad TETHER_LOG_LEVEL must not make it fail (that drains the node).
    env = {k: v for k, v in env_with(TETHER_LOG_LEVEL="loud").items()
           if not k.startswith(("SLURM_", "PBS_"))}  # fmt: skip
    done = tether("epilog", "--no-syslog", env=env)
    assert done.returncode == 0, done.stderr
    assert "TETHER_LOG_LEVEL: 'loud'" in done.stderr
    assert "Traceback" not in done.stderr
