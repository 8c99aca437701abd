"""Issue 17, item 8: text from outside never reaches a terminal or a log raw."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import kill_identity, read_identity, tether_cmd, wait_for_file
from tether.report import Report
from tether.sanitize import json_dumps, log_field, oneline, visible

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\r\nFORGED LINE\u202e\x9b"


def test_visible_escapes_every_control_character() -> None:
    assert visible("plain text é") == "plain text é"
    out = visible(ESCAPES)
    assert out == "\\x1b]0;pwned\\x07\\x1b[2J\\r\\nFORGED LINE\\u202e\\x9b"
    assert out.isprintable()
    # Idempotent: already visible text is left alone.
    assert visible(out) == out
    assert oneline("a\n\x1bb  c", 10) == "a\\n\\x1bb c"
    assert "\n" not in log_field("x\ny")


def test_json_is_valid_utf8_for_a_non_utf8_argv() -> None:
    argv = os.fsdecode(b"\xff\xfe-not-utf8")
    text = json_dumps({"argv": argv})
    text.encode("utf-8")  # raises on a lone surrogate
    assert json.loads(text)["argv"] == "\\xff\\xfe-not-utf8"


def test_ps_of_a_process_with_escapes_in_argv_and_cookie(tmp_path: Path) -> None:
    # The process names itself with escapes and a forged newline, and carries
    # a cookie made of them: `tether ps` must show them escaped.
    mark = tmp_path / "mark"
    script = tmp_path / "s.py"
    script.write_text(
        "import os,sys,time;st=open(f'/proc/{os.getpid()}/stat').read().rsplit(')',1)[1]"
        ".split()[19];open(sys.argv[2],'w').write(f'{os.getpid()} {st}');time.sleep(300)"
    )
    # Short relative names, so the escapes fall inside the shown command line.
    (tmp_path / "py").symlink_to(sys.executable)
    proc = subprocess.Popen(
        ["./py", "s.py", ESCAPES, "mark"],
        cwd=tmp_path,
        env={**os.environ, "TETHER_JOB_ID": ESCAPES},
    )
    try:
        wait_for_file(mark)
        pid, starttime = read_identity(mark)
        done = subprocess.run(tether_cmd("ps", str(pid)), capture_output=True, check=False)
        out = done.stdout.decode()
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out, out
        assert "\nFORGED" not in out, out
        assert "\\x1b]0;pwned" in out, out
    finally:
        kill_identity(pid, starttime)
        proc.wait()


def test_a_remote_report_renders_without_raw_escapes() -> None:
    report = Report(
        job_id=ESCAPES,
        reason=ESCAPES,
        policy="TERM",
        started_at=0.0,
        duration=0.0,
        complete=True,
        members=(),
        survivors=(),
        trackers=(),
        caveats=(ESCAPES,),
    )
    from tether.display import Paint, report_table

    for text in (report.render_text(), report_table(report, Paint(True))):
        assert "\x07" not in text and "\x9b" not in text and "\u202e" not in text
        assert "\nFORGED" not in text


def test_a_hosts_non_finite_numbers_are_written_as_null() -> None:
    """`tether run --host --json`: a host's HELLO or report may carry NaN or
    an infinity; the file stays JSON a strict parser reads."""
    hostile = {"remote": {"load": math.nan, "x": [math.inf, -math.inf, 1.5]}, "s": "\udcff"}
    with pytest.raises(ValueError):
        json_dumps(hostile)  # the default refuses them

    def strict(constant: str) -> object:
        raise AssertionError(f"bare {constant} in the JSON")

    text = json_dumps(hostile, non_finite_as_null=True)
    text.encode("utf-8")
    assert json.loads(text, parse_constant=strict) == {
        "remote": {"load": None, "x": [None, None, 1.5]},
        "s": "\\xff",
    }


def test_write_hosts_json_survives_a_hosts_nan(tmp_path: Path) -> None:
    from tether.cli._remote import write_hosts_json
    from tether.remote.client import HostResult
    from tether.remote.hostlist import Target

    result = HostResult(Target("evil"), remote={"python": math.nan}, report={"t": math.inf})
    out = tmp_path / "hosts.json"
    write_hosts_json(str(out), [result])

    def strict(constant: str) -> object:
        raise AssertionError(f"bare {constant} in the JSON")

    host = json.loads(out.read_text(), parse_constant=strict)["hosts"][0]
    assert host["remote"] == {"python": None} and host["report"] == {"t": None}
