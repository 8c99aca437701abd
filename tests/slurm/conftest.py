"""A real Slurm for `tether epilog` and `tether prune`: started once per
proctrack plugin, shared by every test of that plugin (see slurm_cluster.py).

Jobs run as the pruner's test users (tether-prune-a, -b). Each test's
processes write ``NAME.pid`` marks into a directory of its own and are killed
by identity afterwards, whatever the test found.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_cluster import PLUGINS, SPAWN, Cluster, Lab, plugin_unavailable, slurm_available

from helpers import user_python

USERS = ("tether-prune-a", "tether-prune-b")

#: The [prune] table of docs/slurm-epilog.md, with a short policy so a
#: TERM-ignoring stray costs the suite 2 s instead of 30.
TETHER_TOML = """\
[prune]
min_uid = 1000
min_age = "5m"
exclude_users = ["slurm", "munge"]
exclude_comm = ['^slurmstepd$', '^sshd$', '^dbus-daemon$']
include_ssh = false
policy = "TERM,2s,KILL"
"""


@pytest.fixture(scope="session")
def slurm_users() -> dict[str, pwd.struct_passwd]:
    from prune.prune_support import ensure_user

    return {name[-1]: ensure_user(name) for name in USERS}


@pytest.fixture(scope="session")
def slurm_base() -> Iterator[Cluster]:
    why = slurm_available()
    if why is not None:
        pytest.skip(why)
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="tether-slurm-")))
    try:
        cluster.setup()
        cluster.tether_toml.write_text(TETHER_TOML)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)


@pytest.fixture(scope="session", params=PLUGINS, ids=[f"proctrack-{p}" for p in PLUGINS])
def cluster(request: pytest.FixtureRequest, slurm_base: Cluster) -> Cluster:
    why = plugin_unavailable(request.param)
    if why is not None:
        pytest.skip(why)
    if slurm_base.plugin != request.param:
        slurm_base.start(request.param)
    return slurm_base


@pytest.fixture
def lab(cluster: Cluster, slurm_users: dict[str, pwd.struct_passwd]) -> Iterator[Lab]:
    with _lab(cluster, slurm_users) as lab:
        yield lab


@pytest.fixture
def any_lab(slurm_base: Cluster, slurm_users: dict[str, pwd.struct_passwd]) -> Iterator[Lab]:
    """A lab on whichever plugin runs now (the first that runs here if none yet),
    for what does not depend on the proctrack plugin: no restart for it."""
    if not slurm_base.plugin:
        plugin = next((p for p in PLUGINS if plugin_unavailable(p) is None), None)
        if plugin is None:
            pytest.skip("no proctrack plugin runs here")
        slurm_base.start(plugin)
    with _lab(slurm_base, slurm_users) as lab:
        yield lab


@contextlib.contextmanager
def _lab(cluster: Cluster, slurm_users: dict[str, pwd.struct_passwd]) -> Iterator[Lab]:
    py = user_python(slurm_users["a"])
    if py is None:
        pytest.skip("no Python interpreter the test users can run")
    d = Path(tempfile.mkdtemp(prefix="marks-", dir=cluster.base / "jobs"))
    d.chmod(0o777)
    (d / "spawn.py").write_text(SPAWN)
    (d / "spawn.py").chmod(0o644)
    lab = Lab(cluster, slurm_users, py[-1], d)
    try:
        yield lab
    finally:
        if cluster.daemons.get("slurmd") is None:
            cluster.start_slurmd()  # scancel needs it
        lab.cleanup()
        shutil.rmtree(d, ignore_errors=True)
        os.environ.pop("SLURM_CONF", None)
