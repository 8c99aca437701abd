"""The Epilog's exit status is a contract: slurmd drains a node whose Epilog
exits non-zero. tether epilog exits 0 on bad input (2 only with --strict) for
that reason; this proves the drain on the real slurmd, with an Epilog that
exits 1 in place of the shipped one for one job."""

from __future__ import annotations

import os
import re
import shutil

from slurm_cluster import EPILOG, Lab

from helpers import wait_for

FAILING = """#!/bin/sh
echo "$SLURM_JOB_ID" > {mark}
exit 1
"""


def test_an_epilog_exiting_non_zero_drains_the_node(any_lab: Lab) -> None:
    cluster = any_lab.cluster
    epilog = cluster.base / "etc" / "tether-epilog"
    mark = any_lab.dir / "epilog-ran"
    failing = epilog.with_name("tether-epilog.failing")
    failing.write_text(FAILING.format(mark=mark))
    failing.chmod(0o755)

    def state() -> str:
        out = cluster.run("scontrol", "show", "node", cluster.node)
        found = re.search(r"\bState=(\S+)", out)
        assert found is not None, out
        return found.group(1)

    assert "DRAIN" not in state()
    # Swapped by rename: slurmd never executes a half-written file.
    os.replace(failing, epilog)
    try:
        job = any_lab.job("a", "drain")
        any_lab.end("drain")
        wait_for(lambda: "DRAIN" in state(), 60, "the node to drain")
        assert mark.read_text().strip() == job, "drained, but not by this job's Epilog"
        reason = cluster.run("scontrol", "show", "node", cluster.node)
        assert re.search(r"Reason=.*[Ee]pilog", reason), reason
    finally:
        restored = epilog.with_name("tether-epilog.restored")
        shutil.copyfile(EPILOG, restored)
        restored.chmod(0o755)
        os.replace(restored, epilog)
        cluster.run("scontrol", "update", f"NodeName={cluster.node}", "State=RESUME", check=False)
    wait_for(lambda: "DRAIN" not in state(), 60, "the node to resume")
