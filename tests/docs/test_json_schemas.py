"""Every ``--json`` output validates against its schema in docs/schemas/.

The commands run for real, on process trees these tests start; the schemas
are strict (required keys, types, no unknown keys), so a key added, renamed
or retyped in the code fails here until the schema and docs/json.md follow.
"""

from __future__ import annotations

import copy
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource

from helpers import (
    alive,
    is_root,
    kill_identity,
    proc_stat,
    tether_cmd,
    wait_for,
    wait_for_exec,
    wait_for_file,
)
from tether.journal import RUNTIME_DIR_VAR, JobRecord, Journal

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"
SCHEMAS = DOCS / "schemas"
ID_BASE = "https://tether.invalid/schemas/"
POLICY = "TERM,1s,KILL"
SETTLE = 20.0  # bound on readiness waits, not a timing assertion
#: Every command that prints JSON, and its schema file's stem.
COMMANDS = ("run", "kill", "ps", "reap", "config", "prune", "epilog", "cancel")
#: A shell job with a background child; the child's pid is written to $1.
TREE = 'sleep 300 & echo $! > "$1.tmp"; mv "$1.tmp" "$1"; wait'


def _registry() -> Registry[Any]:
    # The schemas refer to each other by file name ("report.schema.json"),
    # resolved against their $id: they live next to each other under one base.
    resources = []
    for p in SCHEMAS.glob("*.schema.json"):
        contents = json.loads(p.read_text())
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Registry().with_resources(resources)  # type: ignore[no-any-return]


REGISTRY = _registry()


def errors(name: str, document: object) -> list[str]:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    validator = Draft202012Validator(schema, registry=REGISTRY)
    return sorted(_describe(e) for e in validator.iter_errors(document))


def _describe(error: ValidationError) -> str:
    if error.context:  # a oneOf: what each branch found wrong says more than "no match"
        return " | ".join(_describe(e) for e in error.context)
    return f"/{'/'.join(map(str, error.absolute_path))}: {error.message}"


def validate(name: str, document: object) -> None:
    problems = errors(name, document)
    assert not problems, f"{name}.schema.json:\n" + "\n".join(problems[:10])


def run_json(*args: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> Any:
    done = subprocess.run(
        tether_cmd(*args), capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert done.returncode in ok, f"tether {' '.join(args)}: {done.returncode} {done.stderr}"
    return json.loads(done.stdout)


# -- the schema files themselves -----------------------------------------------------


def test_schemas_are_draft_2020_12_and_documented() -> None:
    files = sorted(SCHEMAS.glob("*.schema.json"))
    assert {f"{c}.schema.json" for c in COMMANDS} <= {p.name for p in files}
    page = (DOCS / "json.md").read_text()
    for path in files:
        schema = json.loads(path.read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"{ID_BASE}{path.name}"
        Draft202012Validator.check_schema(schema)
        assert f"schemas/{path.name}" in page, f"docs/json.md does not link {path.name}"


def test_tether_schema_prints_the_installed_schemas() -> None:
    listed = subprocess.run(tether_cmd("schema"), capture_output=True, text=True, check=True)
    names = listed.stdout.split()
    assert names == sorted(p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.json"))
    for name in names:
        shown = subprocess.run(
            tether_cmd("schema", name), capture_output=True, text=True, check=True
        )
        assert shown.stdout == (SCHEMAS / f"{name}.schema.json").read_text()
    unknown = subprocess.run(
        tether_cmd("schema", "nope"), capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 2
    assert unknown.stderr == f"tether: no schema named 'nope'; known: {', '.join(names)}\n"


# -- run and kill: the termination report ---------------------------------------------


def test_run_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        tether_cmd("run", "--policy", POLICY, "--json-file", str(out), "-q", "--",
                   "sh", "-c", "sleep 300 & exit 3"),
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    report = json.loads(out.read_text())
    validate("run", report)
    validate("report", report)
    assert report["complete"] is True
    # The leftover sleep was killed; the leader, seen as it exited, is listed
    # as having exited by itself.
    # (the sleep perhaps caught before its exec, as "sh").
    outcomes = sorted(m["outcome"] for m in report["members"])
    assert outcomes in (["killed"], ["exited", "killed"])
    assert report["steps"] and report["trackers"]

    # Strict enough to fail: a missing key, an unknown key, a wrong type.
    for broken in (
        {k: v for k, v in report.items() if k != "complete"},
        {**report, "surprise": 1},
        {**report, "members": [{**report["members"][0], "pid": "1"}]},
        {**report, "schema": 2},
    ):
        assert errors("run", broken) and errors("report", broken)


def _tree(tmp_path: Path) -> tuple[subprocess.Popen[bytes], tuple[int, int]]:
    """``sh`` with a ``sleep`` child, in a session of its own; the child's identity."""
    mark = tmp_path / "child"
    proc = subprocess.Popen(["sh", "-c", TREE, "sh", str(mark)], start_new_session=True)
    child = int(wait_for_file(mark))
    st = proc_stat(child)
    assert st is not None
    return proc, (child, st.starttime)


def test_kill_report(tmp_path: Path) -> None:
    proc, child = _tree(tmp_path)
    try:
        report = run_json("kill", "--policy", POLICY, "--json", str(proc.pid))
    finally:
        kill_identity(*child)
        proc.wait(timeout=SETTLE)
    validate("kill", report)
    assert report["complete"] is True
    assert {proc.pid, child[0]} <= {m["pid"] for m in report["members"]}
    assert not alive(*child)


# -- ps and reap: the journal ---------------------------------------------------------


def _records() -> list[JobRecord]:
    journal = Journal(os.environ[RUNTIME_DIR_VAR])
    try:
        return [e for e in journal.entries() if isinstance(e, JobRecord)]
    finally:
        journal.close()


@pytest.fixture
def orphanable_job(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], JobRecord, Path]]:
    """A running `tether run` job with a sleep child; its record; the child's mark."""
    mark = tmp_path / "child"
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            tether_cmd("run", "--policy", POLICY, "--", "sh", "-c", TREE, "sh", str(mark)),
            stderr=err,
        )
    try:
        wait_for_file(mark, SETTLE)
        wait_for(lambda: any(r.state == "running" and r.watchdog for r in _records()), SETTLE,
                 "the job's record")  # fmt: skip
        (record,) = _records()
        yield proc, record, mark
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=SETTLE)


def test_ps_and_reap(orphanable_job: tuple[subprocess.Popen[bytes], JobRecord, Path]) -> None:
    proc, record, mark = orphanable_job
    child = int(mark.read_text())
    assert record.leader is not None and record.watchdog is not None

    tree = run_json("ps", str(record.leader[0]), "--json")
    validate("ps", tree)
    assert child in {m["pid"] for m in tree["members"]}

    listing = run_json("ps", "--json")
    validate("ps", listing)
    (job,) = listing["jobs"]
    assert job["job_id"] == record.job_id and job["supervisor"]["alive"] is True

    skipped = run_json("reap", "--dry-run", "--json")
    validate("reap", skipped)
    assert [j["action"] for j in skipped["jobs"]] == ["skipped"]

    # Orphan the job: its watchdog first, then tether run itself.
    kill_identity(*record.watchdog)
    wait_for(lambda: not alive(*record.watchdog), SETTLE, "the watchdog to die")  # type: ignore[misc]
    proc.kill()
    proc.wait()
    assert alive(child, proc_stat(child).starttime)  # type: ignore[union-attr]

    dry = run_json("reap", "--dry-run", "--json")
    validate("reap", dry)
    (job,) = dry["jobs"]
    assert job["action"] == "would terminate" and child in {m["pid"] for m in job["members"]}

    done = run_json("reap", "--json")
    validate("reap", done)
    (job,) = done["jobs"]
    assert job["action"] == "terminated" and job["report"]["complete"] is True
    assert not _records()
    assert errors("reap", {**done, "jobs": [{**job, "action": "vanished"}]})
    without_report = {k: v for k, v in job.items() if k != "report"}
    assert errors("reap", {**done, "jobs": [without_report]})


# -- config --------------------------------------------------------------------------


def test_config(tmp_path: Path) -> None:
    path = tmp_path / "ci.toml"
    path.write_text(
        '[termination]\npolicy = "INT,2s,TERM,10s,KILL"\n\n[run]\ntimeout = "5m"\n\n'
        '[prune]\nexclude_users = ["nobody"]\n'
    )
    env = {**os.environ, "TETHER_CONFIG": str(path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    config = run_json("config", "--json", env=env)
    validate("config", config)
    by_key = {s["key"]: s for s in config["settings"]}
    assert by_key["termination.policy"]["line"] == 2
    assert by_key["run.timeout"]["value"] == 300
    assert by_key["prune.exclude_users"]["value"] == ["nobody"]
    assert by_key["termination.grace"]["value"] is None
    one = run_json("config", "--json", "run.timeout", env=env)
    validate("config", one)
    assert [s["key"] for s in one["settings"]] == ["run.timeout"]
    broken = copy.deepcopy(config)
    broken["settings"][0]["kind"] = "guess"
    assert errors("config", broken)


# -- prune and epilog ----------------------------------------------------------------

DOCS_USER = "tether-docs"


@pytest.fixture
def stray(tmp_path: Path) -> Iterator[tuple[pwd.struct_passwd, int]]:
    """A sleep of an ordinary user, in a session of its own: a stray to list (never killed
    by these tests: prune runs dry, epilog with --dry-run)."""
    if not is_root():
        pytest.skip("needs root (a process of another user)")
    try:
        user = pwd.getpwnam(DOCS_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        done = subprocess.run([useradd, "--no-create-home", "--shell", "/bin/sh", DOCS_USER],
                              capture_output=True, check=False)  # fmt: skip
        if done.returncode not in (0, 9):  # 9: made meanwhile by a parallel run
            pytest.skip(f"useradd failed: {done.stderr.decode(errors='replace')}")
        user = pwd.getpwnam(DOCS_USER)
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
         "sleep", "300"],
        start_new_session=True,
    )  # fmt: skip

    try:
        wait_for_exec(proc.pid, "sleep", SETTLE)
        yield user, proc.pid
    finally:
        st = proc_stat(proc.pid)
        if st is not None:
            kill_identity(proc.pid, st.starttime)
        proc.wait(timeout=SETTLE)


def test_prune_and_epilog(stray: tuple[pwd.struct_passwd, int]) -> None:
    user, pid = stray
    scope = ("--min-uid", str(min(user.pw_uid, 1000)), "--min-age", "0s", "--include-ssh",
             "--batch", "none", "--no-syslog", "--json")  # fmt: skip
    pruned = run_json("prune", "--user", DOCS_USER, *scope)
    validate("prune", pruned)
    assert pruned["mode"] == "dry-run" and pruned["epilog"] is None
    assert {s["pid"]: s["outcome"] for s in pruned["strays"]}.get(pid) == "would kill"

    env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_JOB_UID": str(user.pw_uid)}
    ended = run_json("epilog", "--dry-run", "--force", *scope, env=env)  # --batch none
    validate("epilog", ended)
    validate("prune", ended)
    assert ended["epilog"]["job_id"] == "4242" and ended["epilog"]["whole_user"] is True
    assert pid in {s["pid"] for s in ended["strays"]}
    assert errors("epilog", pruned), "epilog.schema.json accepts a prune without its job"
    assert alive(pid, proc_stat(pid).starttime)  # type: ignore[union-attr]
