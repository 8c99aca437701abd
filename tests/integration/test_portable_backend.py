"""The psutil backend (macOS, BSD) runs the session/pgid and walk path.

It is forced on Linux here, in a child interpreter, so the same code path a
Mac takes is exercised against real processes.
"""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import alive

SCRIPT = r"""
import json, sys, time
import tether.process as process
process.IS_LINUX = False
import tether.tracking.select as select
select.IS_LINUX = False
import tether

job_sh = "sleep 100 & sh -c 'trap \"\" TERM; echo ready; sleep 100' & wait"
with tether.start(["sh", "-c", job_sh], policy="TERM,500ms,KILL", stdout=-1) as job:
    job._popen.stdout.readline()
    members = [(p.pid, p.starttime) for p in job.members()]
    report = job.cancel()
json.dump({"members": members, "report": report.to_dict()}, sys.stdout)
"""


def test_psutil_backend_terminates_session_tree() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    data = json.loads(out.stdout)
    report = data["report"]
    assert report["complete"]
    used = {t["name"] for t in report["trackers"] if t["used"]}
    assert used == {"session", "walk"}
    assert len(data["members"]) >= 3
    by_cmd = {m["cmdline"]: m for m in report["members"]}
    ignorer = next(m for c, m in by_cmd.items() if "trap" in c and not c.startswith("sh -c sleep"))
    assert ignorer["ended_by"] == "KILL"
    assert any(m["ended_by"] == "TERM" for m in report["members"])
    # psutil identities are create times in ns, not /proc ticks: check liveness by pid.
    for pid, _start in data["members"]:
        assert not alive_any(pid)


def alive_any(pid: int) -> bool:
    from tether.linux import procfs

    try:
        with procfs.ProcDir(pid) as d:
            return d.stat().state not in ("Z", "X") and alive(pid, d.stat().starttime)
    except (procfs.ProcessGone, OSError):
        return False
