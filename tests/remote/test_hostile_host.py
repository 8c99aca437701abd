"""Issue 17, item 7: a hostile remote host cannot hang, flood or steer the client.

A host that connects and then misbehaves is a real sshd of the lab whose
ForceCommand runs the test's script instead of tether's bootstrap: the client
meets it through OpenSSH, as it would a compromised host. The tests that need
to count connections or stage later ones (out-of-band cancels) use a fake
``ssh`` program (SshOptions.program) that plays back the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sshd import SshLab

from helpers import SRC, wait_for
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


@pytest.fixture(scope="module")
def hostile(lab: SshLab) -> SshLab:
    """The lab's ``evil`` host: an sshd that runs ``hostile.sh`` for every session."""
    if "hostile" not in lab.servers:
        lab.start("hostile", extra=f"ForceCommand /bin/sh {lab.base / 'hostile.sh'}")
        lab.alias("evil", "hostile")
    return lab


def _real_host(lab: SshLab, body: str) -> SshOptions:
    """The ``evil`` host (a real sshd) runs ``body`` (sh) as the client's session."""
    (lab.base / "hostile.sh").write_text(body + "\n")
    return SshOptions(config_file=lab.config_file)


def _playback(lab: SshLab, tmp_path: Path, data: bytes) -> SshOptions:
    """A host that answers the handshake and then sends ``data``."""
    hello = protocol.json_frame(protocol.HELLO, {"protocol": protocol.PROTOCOL})
    started = protocol.json_frame(protocol.STARTED, {"job_id": "j"})
    script = b'TETHER-PY 3.11.0\n{"mode": "installed"}\n' + hello + started + data
    (tmp_path / "playback").write_bytes(script)
    # Sends everything, then waits for the client to hang up.
    return _real_host(lab, f"cat {tmp_path}/playback; exec cat >/dev/null")


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
    hostile: SshLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "HANDSHAKE_TIMEOUT", 2.0)
    # Connected, stdout open, never a byte (cat echoes only what we send).
    result = _run(_real_host(hostile, "exec cat"))
    assert result.exit_status == 125 and "no answer within" in (result.error or "")


def test_a_cancel_while_ssh_starts_closes_the_connection(
    hostile: SshLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled between starting ssh and recording the connection: the
    connection is closed then, not after the host's handshake deadline
    (120 s for a host that stalls)."""
    runs: list[HostRun] = []

    class CancelledWhileStarting(client.Connection):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            runs[0].cancel("cancelled while ssh started")

    monkeypatch.setattr(client, "Connection", CancelledWhileStarting)
    ssh = _real_host(hostile, "exec cat")  # connected, never a byte
    out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        runs.append(
            HostRun(Target("evil"), JobSpec(argv=("true",)), ssh, OutputSink(False, out, out))
        )
        runs[0].start()
        assert runs[0].done.wait(60), "the cancel waited for the handshake deadline"
    finally:
        out.close()
    assert "cancelled before it started" in (runs[0].result.error or "")


def test_an_endless_banner_line_is_refused_not_buffered(hostile: SshLab) -> None:
    flood = "exec python3 -c 'import os\nwhile True: os.write(1, b\"A\" * 65536)'"
    result = _run(_real_host(hostile, flood))
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
    hostile: SshLab, tmp_path: Path, result: dict[str, object], why: str
) -> None:
    payload = json.dumps(result, allow_nan=True).encode()
    got = _run(_playback(hostile, tmp_path, protocol.frame(protocol.RESULT, payload)))
    assert got.exit_status == 125 and why in (got.error or ""), got
    json.dumps(got.to_dict(), allow_nan=False)  # --json stays valid


def test_a_remote_error_cannot_choose_the_exit_status(hostile: SshLab, tmp_path: Path) -> None:
    frame = protocol.json_frame(protocol.ERROR, {"message": "\x1b[2Jowned\n", "exit_code": 0})
    got = _run(_playback(hostile, tmp_path, frame))
    assert got.exit_status == 125
    assert got.error == "\\x1b[2Jowned\\n"


# -- deadlines, cancels before the job id, memory across hosts -------------------


def _pids_alive(pid_dir: Path) -> list[int]:
    """The fake ssh processes (pids they wrote) still running (zombies are gone)."""
    alive = []
    for f in pid_dir.glob("*.pid"):
        pid = int(f.read_text())
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _staged_ssh(
    tmp_path: Path, first: bytes | None, later: str = "exec cat 3>&1 >/dev/null"
) -> SshOptions:
    """A fake ssh whose first connection plays ``first`` (then swallows stdin; None:
    stalls at once), and whose later connections (out-of-band cancels) run ``later``.
    Each records its pid in tmp_path/pids; the first keeps what it read in tmp_path/stdin.
    (fd 3 keeps stdout open: ``exec cat >FILE`` alone would close it, an EOF.)"""
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    if first is not None:
        (tmp_path / "playback").write_bytes(first)
    play = f"cat {tmp_path}/playback; " if first is not None else ""
    return _fake_ssh(
        tmp_path,
        f"echo $$ > {pids}/$$.pid\n"
        f"if mkdir {tmp_path}/first 2>/dev/null; then {play}exec cat 3>&1 >{tmp_path}/stdin; fi\n"
        f"{later}",
    )


_HELLO = b'TETHER-PY 3.11.0\n{"mode": "installed"}\n' + protocol.json_frame(
    protocol.HELLO, {"protocol": protocol.PROTOCOL}
)
_STARTED = protocol.json_frame(protocol.STARTED, {"job_id": "j"})


def test_a_host_that_never_sends_its_job_id_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "HANDSHAKE_TIMEOUT", 0.5)
    # A whole handshake, then nothing: before, the client waited for ever.
    result = _run(_staged_ssh(tmp_path, _HELLO))
    assert result.exit_status == 125 and "no answer within" in (result.error or ""), result
    wait_for(lambda: not _pids_alive(tmp_path / "pids"), what="the fake ssh to be killed")


def test_timeout_is_enforced_locally_when_the_host_never_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STARTED, then silence on every connection: cancelled, then given up on."""
    from tether.policy import Policy
    from tether.remote.fanout import fan_out

    monkeypatch.setattr(client, "LOCAL_TIMEOUT_MARGIN", 0.2)
    monkeypatch.setattr(client, "_KILL_SCRIPT_ALLOWANCE", 0.0)
    ssh = _staged_ssh(tmp_path, _HELLO + _STARTED)  # out-of-band cancels stall too
    spec = JobSpec(
        argv=("sleep", "1000"), timeout=0.2, policy=Policy.parse("TERM,100ms,KILL,100ms")
    )
    out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        [result] = fan_out(
            [Target("evil")], spec, ssh, OutputSink(False, out, out), fanout=1,
            cancel_timeout=0.2,
        )  # fmt: skip
    finally:
        out.close()
    assert result.exit_status == 125
    assert "gave up on the host" in (result.error or ""), result
    assert result.job_id == "j"
    # Its connections (the first and the out-of-band one) are killed, not left behind.
    assert len(list((tmp_path / "pids").glob("*.pid"))) == 2
    wait_for(lambda: not _pids_alive(tmp_path / "pids"), what="the fake ssh to be killed")


def _tether_run_remote(
    tmp_path: Path, *args: str, cancel_timeout: str = "0.3"
) -> subprocess.Popen[str]:
    """``tether run --host evil`` with tmp_path/bin/ssh (the fake) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "ssh").rename(bin_dir / "ssh")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-m", "tether.cli", "run", "--host", "evil", "--cancel-timeout",
         cancel_timeout, *args, "--", "true"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("phase", ["bootstrap", "offer and SPEC sent", "before STARTED"])
def test_int_and_term_are_honoured_before_the_job_id_is_known(
    tmp_path: Path, sig: signal.Signals, phase: str
) -> None:
    playback = {"bootstrap": None, "offer and SPEC sent": b"TETHER-PY 3.11.0\n"}
    _staged_ssh(tmp_path, playback.get(phase, _HELLO))
    # Before the agent's HELLO nothing runs there, even with the SPEC sent
    # behind the offer: the cancel closes the connection at once. Waiting
    # for the job id instead would sit out this --cancel-timeout (a hang
    # for the guard below).
    early = phase != "before STARTED"
    proc = _tether_run_remote(tmp_path, cancel_timeout="600" if early else "0.3")
    try:
        wait_for(lambda: list((tmp_path / "pids").glob("*.pid")), what="the fake ssh")
        if phase == "offer and SPEC sent":
            stdin = tmp_path / "stdin"
            wait_for(lambda: stdin.exists() and b'"op":"run"' in stdin.read_bytes(),
                     what="the offer and its SPEC")  # fmt: skip
        if phase == "before STARTED":
            # The job was sent, its id not yet known.
            stdin = tmp_path / "stdin"
            wait_for(lambda: stdin.exists() and b'"op":"run"' in stdin.read_bytes(),
                     what="the run request")  # fmt: skip
        proc.send_signal(sig)
        # A hang guard, not a timing assertion (HANDSHAKE_TIMEOUT is 120 s).
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.splitlines()
    assert len(lines) == 1 and "cancelled before it started" in lines[0], err
    assert proc.returncode == 125
    wait_for(lambda: not _pids_alive(tmp_path / "pids"), what="the fake ssh to be killed")


def test_lines_without_newline_are_bounded_across_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(client, "MAX_PARTIAL_LINE", 1000)
    monkeypatch.setattr(client, "MAX_PARTIAL_TOTAL", 10_000)
    out = io.BytesIO()
    sink = OutputSink(True, out, out)
    sent = 0
    for _round in range(20):
        for host in range(50):
            sink.write(f"h{host}", protocol.STDOUT, b"x" * 300)
            sent += 300
            held = sum(len(v) for v in sink._partial.values())
            assert held <= 10_000
            assert max(len(v) for v in sink._partial.values()) <= 1000
    for host in range(50):
        sink.finish(f"h{host}")
    # Nothing lost: every byte was written, in pieces of at most the caps.
    lines = out.getvalue().splitlines()
    assert sum(len(line.split(b": ", 1)[1]) for line in lines) == sent
    assert max(len(line) for line in lines) <= 1000 + len("h00: ") + 300


def test_buffered_frames_are_capped_for_all_hosts_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts each hold most of a huge frame: together they pass MAX_BUFFERED."""
    monkeypatch.setattr(client, "MAX_BUFFERED", 3 << 20)
    # A 60 MiB STDOUT frame announced, 2 MiB of it sent, then silence.
    partial = protocol.frame(protocol.STDOUT, b"y" * (60 << 20))[: (2 << 20) + 5]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "playback").write_bytes(_HELLO + _STARTED + partial)
    # One fake ssh for both: the host follows "--"; later connections fail at once.
    ssh = _fake_ssh(
        tmp_path,
        'while [ "$1" != -- ]; do shift; done; d=' + str(tmp_path) + '/"$2"\n'
        'if mkdir "$d/first" 2>/dev/null; then cat "$d/playback"; exec cat 3>&1 >/dev/null; fi\n'
        "exit 1",
    )
    out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        runs = [HostRun(Target(h), JobSpec(argv=("true",)), ssh, OutputSink(True, out, out))
                for h in ("a", "b")]  # fmt: skip
        for run in runs:
            run.start()
        wait_for(lambda: any(r.done.is_set() for r in runs), timeout=60, what="a host to fail")
        # Whichever crossed the cap failed (both may, racing under load); a
        # host still running is within the cap, waiting for the rest of its frame.
        for run in runs:
            if run.done.is_set():
                assert "from all hosts together passed 3 MiB" in (run.result.error or "")
            else:
                run.give_up("test over")
                assert run.result.error == "test over" and run.result.exit_status == 125
        for run in runs:
            run.thread.join(60)
            assert not run.thread.is_alive()
    finally:
        out.close()
    assert client._BUFFERED.used == 0  # given back as the connections closed


_DEEP = b"[" * 200_000  # nested past any interpreter's stack


@pytest.mark.parametrize("payload", [_DEEP, b'{"taken": ' + b"9" * 5000 + b"}", b"\xff\xfe", b"[]"])
def test_a_hosts_unreadable_json_is_a_protocol_error(payload: bytes) -> None:
    """Nesting deeper than the stack, an integer of more digits than int()
    takes, bad UTF-8, a non-object: each a ProtocolError, nothing else."""
    with pytest.raises(protocol.ProtocolError):
        protocol.load_json(payload)


def _cancel_playback(tmp_path: Path, result_frame: bytes) -> SshOptions:
    hello = protocol.json_frame(protocol.HELLO, {"protocol": protocol.PROTOCOL})
    script = b'TETHER-PY 3.11.0\n{"mode": "installed"}\n' + hello + result_frame
    (tmp_path / "playback").write_bytes(script)
    return _fake_ssh(tmp_path, f"cat {tmp_path}/playback; exec cat >/dev/null")


@pytest.mark.parametrize(
    "result_frame",
    [
        protocol.frame(protocol.RESULT, _DEEP),
        protocol.json_frame(protocol.RESULT, {"found": True, "notes": 5}),
        protocol.frame(protocol.HELLO, b"x" * (protocol.MAX_CONTROL_FRAME + 1)),
        protocol.HELLO + (protocol.MAX_FRAME + 1).to_bytes(4, "big"),
    ],
    ids=["deep", "notes-not-a-list", "big-control-frame", "frame-past-the-limit"],
)
def test_an_out_of_band_cancel_survives_a_hostile_answer(
    tmp_path: Path, result_frame: bytes
) -> None:
    """`tether cancel --host` and the out-of-band cancel of a run: whatever
    the host answers, a result with an error (or the host's found job), never
    an exception."""
    ssh = _cancel_playback(tmp_path, result_frame)
    result = client.cancel_job(Target("evil"), "j", ssh)
    if result.error is None:  # notes of the wrong type: ignored, the rest taken
        assert result.notes == [] and result.exit_status == 1, result  # no report
    else:
        assert result.exit_status == 125 and result.error.startswith("bad "), result


def test_a_hosts_notes_reach_the_terminal_escaped(tmp_path: Path) -> None:
    notes = ["\x1b]0;pwned\x07\x1b[2J", "x" * 5000]
    ssh = _cancel_playback(
        tmp_path, protocol.json_frame(protocol.RESULT, {"found": True, "notes": notes})
    )
    result = client.cancel_job(Target("evil"), "j", ssh)
    assert result.notes[0] == "\\x1b]0;pwned\\x07\\x1b[2J"
    assert len(result.notes[1]) == 1000
    assert all(n.isprintable() for n in result.notes)


def test_a_failed_out_of_band_cancel_ends_the_first_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever goes wrong in the out-of-band cancel's thread, its result is
    set and the first connection killed: the run ends instead of waiting on
    a connection nobody will close (a hang after ^C)."""

    class FirstConnection:
        killed = False

        def kill(self) -> None:
            self.killed = True

    def broken(*_args: object, **_kwargs: object) -> client.HostResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(client, "cancel_job", broken)
    out = open(os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        run = HostRun(
            Target("evil"), JobSpec(argv=("true",)), SshOptions(), OutputSink(False, out, out)
        )
        first = FirstConnection()
        run.conn = first  # type: ignore[assignment]
        run._run_oob("j", "no ack")
    finally:
        out.close()
    assert first.killed
    assert run._oob_result is not None and "RuntimeError: boom" in (run._oob_result.error or "")


def test_a_deeply_nested_hello_still_makes_a_json_document(tmp_path: Path) -> None:
    """A HELLO nested 500 deep passes the frame cap and the JSON reader; it
    is kept only a few levels deep, so writing --json cannot overflow the stack."""
    from tether.cli._remote import write_hosts_json

    deep = b'{"tether":"1","nest":' + b'{"a":' * 500 + b"1" + b"}" * 500 + b"}"
    script = b'TETHER-PY 3.11.0\n{"mode": "installed"}\n' + protocol.frame(protocol.HELLO, deep)
    script += protocol.json_frame(protocol.RESULT, {"found": False})
    (tmp_path / "playback").write_bytes(script)
    ssh = _fake_ssh(tmp_path, f"cat {tmp_path}/playback; exec cat >/dev/null")
    result = client.cancel_job(Target("evil"), "j", ssh)
    assert result.error is None and result.remote["tether"] == "1", result
    out = tmp_path / "hosts.json"
    write_hosts_json(str(out), [result])
    written = json.loads(out.read_text())["hosts"][0]["remote"]
    assert written["tether"] == "1" and written["nest"] == {"a": {"a": None}}
