"""Issue 17, item 7: a hostile remote host cannot hang, flood or steer the client.

The host is a fake ``ssh`` (SshOptions.program) that plays back exactly what a
hostile agent would send: the client cannot tell it from a real connection.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from tether.remote import client, protocol
from tether.remote.client import HostRun, OutputSink, SshOptions
from tether.remote.hostlist import Target
from tether.report import Report
from tether.spec import JobSpec


def _fake_ssh(tmp_path: Path, body: str) -> SshOptions:
    program = tmp_path / "ssh"
    program.write_text("#!/bin/sh\n" + body + "\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return SshOptions(program=str(program))


def _playback(tmp_path: Path, data: bytes) -> SshOptions:
    """A host that answers the handshake and then sends ``data``."""
    hello = protocol.json_frame(protocol.HELLO, {"protocol": protocol.PROTOCOL})
    started = protocol.json_frame(protocol.STARTED, {"job_id": "j"})
    script = b'TETHER-PY 3.11.0\n{"mode": "installed"}\n' + hello + started + data
    (tmp_path / "playback").write_bytes(script)
    # Sends everything, then waits for the client to hang up.
    return _fake_ssh(tmp_path, f"cat {tmp_path}/playback; exec cat >/dev/null")


def _run(ssh: SshOptions) -> client.HostResult:
    out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        run = HostRun(Target("evil"), JobSpec(argv=("true",)), ssh, OutputSink(False, out, out))
        run.start()
        assert run.done.wait(60), "the client hung on a hostile host"
        return run.result
    finally:
        out.close()


def _report(**changes: object) -> dict[str, object]:
    good = Report(
        job_id="j",
        reason="r",
        policy="TERM",
        started_at=0.0,
        duration=0.0,
        complete=True,
        members=(),
        survivors=(),
        trackers=(),
    ).to_dict()
    return {**good, **changes}


def test_a_host_that_connects_and_stalls_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "HANDSHAKE_TIMEOUT", 0.5)
    # Connected, stdout open, never a byte (cat echoes only what we send).
    result = _run(_fake_ssh(tmp_path, "exec cat"))
    assert result.exit_status == 125 and "no answer within" in (result.error or "")


def test_an_endless_banner_line_is_refused_not_buffered(tmp_path: Path) -> None:
    flood = "exec python3 -c 'import os\nwhile True: os.write(1, b\"A\" * 65536)'"
    result = _run(_fake_ssh(tmp_path, flood))
    assert result.exit_status == 125 and "longer than" in (result.error or ""), result


@pytest.mark.parametrize(
    ("result", "why"),
    [
        ({"returncode": 300, "report": _report()}, "bad exit status"),
        ({"returncode": True, "report": _report()}, "bad exit status"),
        ({"returncode": 0, "report": _report(duration=math.nan)}, "malformed report"),
        ({"returncode": 0, "report": _report(members="x")}, "malformed report"),
        ({"returncode": 0, "report": ["not", "a", "report"]}, "malformed report"),
        ({"returncode": 0, "timed_out": "yes"}, "timed_out"),
    ],
)
def test_a_bad_result_is_that_hosts_error(
    tmp_path: Path, result: dict[str, object], why: str
) -> None:
    payload = json.dumps(result, allow_nan=True).encode()
    got = _run(_playback(tmp_path, protocol.frame(protocol.RESULT, payload)))
    assert got.exit_status == 125 and why in (got.error or ""), got
    json.dumps(got.to_dict(), allow_nan=False)  # --json stays valid


def test_a_remote_error_cannot_choose_the_exit_status(tmp_path: Path) -> None:
    frame = protocol.json_frame(protocol.ERROR, {"message": "\x1b[2Jowned\n", "exit_code": 0})
    got = _run(_playback(tmp_path, frame))
    assert got.exit_status == 125
    assert got.error == "\\x1b[2Jowned\\n"
