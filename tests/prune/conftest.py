"""Fixtures for the pruner's tests: real users, real orphans, real cgroups.

Every prune these tests run is scoped with --user to the three users created
here (tether-prune-a/-b/-c): other suites run on this machine at the same time,
as root and as tether-test, and a pruner must never touch their processes.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prune_support import USERS, Cgroups, Procs, ensure_user

from helpers import cgroup2_mount, is_root, user_python
from tether._platform.linux import cgroupfs


@pytest.fixture(scope="session")
def users() -> dict[str, pwd.struct_passwd]:
    """tether-prune-a, -b, -c (keys "a", "b", "c"), created with useradd."""
    if not is_root():
        pytest.skip("creating users with useradd and switching to them needs root")
    out = {name[-1]: ensure_user(name) for name in USERS}
    for user in out.values():
        if user.pw_uid < 1000:
            pytest.skip(f"{user.pw_name} got uid {user.pw_uid}, below the floor the tests use")
    py = user_python(out["a"])
    if py is None:
        pytest.skip("no Python interpreter the test users can run with tether importable")
    return out


@pytest.fixture
def procs(users: dict[str, pwd.struct_passwd]) -> Iterator[Procs]:
    d = Path(tempfile.mkdtemp(prefix="tether-prune-"))
    d.chmod(0o777)  # the test users write their marks here
    p = Procs(users, d)
    try:
        yield p
    finally:
        p.cleanup()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cgroups(procs: Procs) -> Iterator[Cgroups]:
    """A private subtree of real cgroups (under the suite's own cgroup)."""
    mount = cgroup2_mount()
    parent = cgroupfs.probe().parent
    if mount is None or parent is None:
        pytest.skip("needs a writable cgroup v2 hierarchy")
    root = Path(parent) / f"prune-{uuid.uuid4().hex[:12]}"
    root.mkdir()
    cg = Cgroups(root, [root])
    try:
        yield cg
    finally:
        procs.cleanup()  # the processes first: a cgroup with members cannot go
        cg.remove()


@pytest.fixture
def journal_dir() -> str:
    """The per-test journal conftest.py set up (root's journal, for these tests)."""
    return os.environ["TETHER_RUNTIME_DIR"]
