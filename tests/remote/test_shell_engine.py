"""The POSIX-shell agent: remote jobs on hosts without a python3 >= 3.11.

The lab's hosts do have python3, so most cases force the shell agent with
``--remote-engine sh``; the ``nopy`` host (PATH without python3) reaches it
the way a real python-less host does, through ``auto``. The cases both
engines share (cancel, local SIGKILL, dropped and hung connections, argv)
are in test_remote.py, run under each engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from sshd import SshLab
from test_remote import (
    POLICY,
    REMOTE_PYTHON,
    finish,
    read_identity,
    tether_run,
    wait_trees,
)

from helpers import alive, tether_cmd
from tether.policy import Policy
from tether.remote.shell import ShellEngineError, decode_result, encode_cancel, encode_run, escape
from tether.spec import JobSpec

SH = ("--remote-engine", "sh")


def shell_job_dirs() -> list[Path]:
    journal = Path(os.environ["TETHER_RUNTIME_DIR"])
    return [p for p in journal.iterdir() if p.name.startswith("sh-")] if journal.exists() else []


def test_report_names_how_each_member_was_found(
    lab: SshLab, tree: tuple[Path, Path], tmp_path: Path
) -> None:
    script, marks = tree
    report = tmp_path / "report.json"
    proc = tether_run(
        lab, "--host", "h08", *SH, "--policy", POLICY, "--json", str(report),
        "--", REMOTE_PYTHON, str(script), str(marks),
    )  # fmt: skip
    wait_trees(marks, 1)
    proc.send_signal(signal.SIGINT)
    rc, _out, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err  # the leader's own end: the policy's TERM
    host = json.loads(report.read_text())["hosts"][0]
    assert host["remote"]["engine"] == "sh"
    found = {m["pid"]: m for m in host["report"]["members"]}
    pids = {read_identity(p)[0]: p.stem for p in marks.glob("*/*.pid")}
    assert set(pids) <= set(found)
    assert all(found[p]["outcome"] == "killed" for p in pids)
    # The daemon and the setsid child left the session: the cookie (or the
    # walk, while their parent lived) found them.
    for pid, name in pids.items():
        if name in ("daemon", "setsid"):
            assert found[pid]["found_by"][0] in ("cookie", "walk"), found[pid]
        else:
            assert found[pid]["found_by"] == ["session"], found[pid]
    assert host["report"]["complete"] is True
    assert [t["name"] for t in host["report"]["trackers"] if not t["used"]] == [
        "cgroup",
        "subreaper",
    ]


def test_tether_cancel_finds_a_shell_job_by_id(lab: SshLab, tree: tuple[Path, Path]) -> None:
    script, marks = tree
    proc = tether_run(
        lab, "--host", "h12", *SH, "--policy", POLICY, "--", REMOTE_PYTHON, str(script), str(marks)
    )
    identities = wait_trees(marks, 1)
    (job_dir,) = shell_job_dirs()
    job_id = job_dir.name.removeprefix("sh-")
    # Without --remote-engine: the Python engine answers first, names the
    # job as the shell agent's, and the client asks the shell agent.
    cancel = subprocess.run(
        tether_cmd("cancel", "--host", "h12", "-F", lab.config_file, "--json", "-", job_id),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert cancel.returncode == 0, cancel.stderr
    result = json.loads(cancel.stdout)["hosts"][0]
    assert result["report"]["complete"] and result["report"]["policy"] == "TERM,1s,KILL,5s"
    assert {i[0] for i in identities} <= {m["pid"] for m in result["report"]["members"]}
    rc, _out, err = finish(proc)
    assert rc == 125, err
    assert [i for i in identities if alive(*i)] == []
    assert shell_job_dirs() == []


def test_timeout_and_exit_status(lab: SshLab) -> None:
    rc, out, err = finish(
        tether_run(
            lab, "--host", "h13", *SH, "--timeout", "1s", "--", "sh", "-c", "echo a; sleep 30"
        )
    )
    assert rc == 124, err
    assert out == "a\n"
    rc, out, err = finish(
        tether_run(lab, "--host", "h13", *SH, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    )
    assert (rc, out, err) == (7, "out\n", "err\n")
    rc, _out, err = finish(tether_run(lab, "--host", "h13", *SH, "--", "no-such-command-tether"))
    assert rc == 127, err


def test_host_without_python_falls_back_to_the_shell_agent(lab: SshLab) -> None:
    rc, out, err = finish(
        tether_run(lab, "--host", "nopy", "-v", "--", "/bin/sh", "-c", "echo ran there")
    )
    assert rc == 0, err
    assert out == "ran there\n"
    assert "caveat: remote engine: the POSIX-shell agent" in err


def test_shell_agent_refuses_what_it_cannot_do(lab: SshLab) -> None:
    rc, _out, err = finish(
        tether_run(lab, "--host", "h13", *SH, "--kill-script", "true", "--", "true")
    )
    assert rc == 125
    assert err.strip().splitlines() == [
        "tether: h13: kill scripts need the Python engine on the remote host "
        "(the host runs the shell agent)"
    ]


# -- the encoding, without a host ----------------------------------------------


def test_escape_is_only_octal_escapes() -> None:
    data = bytes(range(1, 256))
    escaped = escape(data)
    assert set(escaped) <= set(b"\\01234567")
    assert len(escaped) == 4 * len(data)
    decoded = subprocess.run(
        ["/bin/sh", "-c", 'printf "$1"', "sh", escaped.decode()], capture_output=True, check=True
    ).stdout
    assert decoded == data


def test_spec_lines_carry_no_raw_user_bytes() -> None:
    nasty = "$(id)\n`id`; rm -rf ~ 'x' \"y\" %s \\"
    spec = encode_run(
        JobSpec(argv=("echo", nasty), policy=Policy.parse("INT,2s,TERM,10s,KILL"), timeout=1.5)
    )
    lines = spec.decode().splitlines()
    assert lines[0] == "run" and lines[-1] == "end"
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "arg":
            assert set(value) <= set("\\01234567")
    assert "step INT:2000" in lines and "step KILL:5000" in lines and "timeout 1500" in lines
    assert encode_cancel(nasty).startswith(b"cancel \\")


def test_decode_result_of_a_run() -> None:
    payload = (
        "found 1\nstatus 143\ntimed_out 0\nreasonhex " + b"because".hex() + "\n"
        "job abc\nsteps TERM:1000 KILL:5000\nbtime 1000 100\nstarted 5000\nduration 300\n"
        "step TERM 10 1000 2 1 200\nstep KILL 210 5000 1 0 90\n"
        "member 10 200 session TERM 100 0 " + b"sleep\x0030\x00".hex() + "\n"
        "member 11 250 cookie TERM,KILL 300 0 \n"
        "member 12 260 walk - 50 0 \n"
    ).encode()
    result = decode_result(payload, "TERM,1s,KILL,5s")
    assert result["returncode"] == -15 and result["timed_out"] is False
    report = result["report"]
    assert report["reason"] == "because" and report["complete"] is True
    members = {m["pid"]: m for m in report["members"]}
    assert members[10]["cmdline"] == "sleep 30" and members[10]["start_time"] == 1002.0
    assert members[11]["outcome"] == "killed" and members[11]["ended_by"] == "KILL"
    assert members[12]["outcome"] == "exited" and members[12]["ended_by"] is None
    assert [s["signal"] for s in report["steps"]] == ["TERM", "KILL"]


def test_decode_result_of_an_unknown_job() -> None:
    assert decode_result(b"found 0", None) == {"found": False}


@pytest.mark.parametrize("status, expected", [("0", 0), ("3", 3), ("137", -9), ("-", None)])
def test_decode_status(status: str, expected: int | None) -> None:
    result = decode_result(f"found 1\nstatus {status}\njob x\n".encode(), "KILL")
    assert result["returncode"] == expected


def test_engine_from_the_configuration_file_and_the_flag_wins(
    lab: SshLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tether.toml"
    config.write_text('[remote]\nengine = "sh"\nfanout = 1\n')
    monkeypatch.setenv("TETHER_CONFIG", str(config))
    rc, _out, err = finish(tether_run(lab, "--host", "h15", "-v", "--", "true"))
    assert rc == 0 and "POSIX-shell agent" in err, err
    rc, _out, err = finish(
        tether_run(lab, "--host", "h15", "-v", "--remote-engine", "python", "--", "true")
    )
    assert rc == 0 and "POSIX-shell agent" not in err, err


@pytest.mark.parametrize(
    "asked",
    [
        {"tag_gid": 4711},
        {"env": {"A": "1"}},
        {"cwd": "/"},
        {"leftovers": "wait"},
        {"foreground": True},
        {"fail_on_leftovers": True},
    ],
)
def test_shell_encoding_refuses_what_the_agent_cannot_do(asked: dict[str, object]) -> None:
    with pytest.raises(ShellEngineError, match="needs the Python engine"):
        encode_run(JobSpec(argv=("true",), **asked))  # type: ignore[arg-type]
