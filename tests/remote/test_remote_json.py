"""Remote ``--json`` outputs validate against docs/schemas (real sshd, see conftest.py)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from sshd import SshLab

from helpers import tether_cmd

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "docs" / "schemas"


def schema_errors(name: str, document: object) -> list[str]:
    registry: Registry[Any] = Registry().with_resources(
        (p.name, Resource.from_contents(json.loads(p.read_text())))
        for p in SCHEMAS.glob("*.schema.json")
    )
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    validator = Draft202012Validator(schema, registry=registry)
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]  # fmt: skip


def test_run_on_a_good_and_an_unreachable_host(lab: SshLab, tmp_path: Path) -> None:
    out = tmp_path / "hosts.json"
    done = subprocess.run(
        tether_cmd("run", "-F", lab.config_file, "-w", "h01,unreach", "--policy", "TERM,1s,KILL",
                   "-q", "--json", str(out), "--", "sh", "-c", "sleep 30 & exit 3"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 125, done.stderr  # the worst host: unreachable
    document = json.loads(out.read_text())
    assert schema_errors("run", document) == []
    assert schema_errors("remote", document) == []
    good, bad = document["hosts"]
    assert (good["host"], good["exit_status"], good["error"]) == ("h01", 3, None)
    assert good["report"]["complete"] and good["remote"]
    assert bad["host"] == "unreach" and bad["error"] and bad["report"] is None
    # Strict enough to fail: a host entry without its report, or with a bad cancel mode.
    assert schema_errors("remote", {**document, "hosts": [{**good, "cancelled": "maybe"}]})
    trimmed = {k: v for k, v in good.items() if k != "report"}
    assert schema_errors("remote", {**document, "hosts": [trimmed]})


def test_cancel_of_a_job_that_already_ended(lab: SshLab) -> None:
    job_id = uuid.uuid4().hex[:16]
    done = subprocess.run(
        tether_cmd("cancel", "--host", "h02", "-F", lab.config_file, "--json", "-", job_id),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert schema_errors("cancel", document) == []
    (host,) = document["hosts"]
    assert host["host"] == "h02" and any("already ended" in n for n in host["notes"])
    two = {**document, "hosts": [host, host]}
    assert schema_errors("cancel", two), "cancel.schema.json allows two hosts"


def test_a_remote_run_without_json_imports_no_json(lab: SshLab) -> None:
    """The client writes its offer and frames as compact JSON without the
    json package and reads the host's plain answers with json's C scanner
    (~2 ms of a one-host run's start); it is imported for --json only."""
    import sys

    probe = (
        "import contextlib, sys\n"
        "from tether.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        f"    main(['run', '-F', {lab.config_file!r}, '-q', '-w', 'h01', '--', 'true'])\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "tether.remote.client" in loaded  # it did run remotely
    assert "json" not in loaded
