"""A lab of real sshd instances on 127.0.0.1, shared by the remote tests.

Servers (see ``sshd.py``): ``s1``..``s3`` (trusted host keys; the "hosts"
``h01``..``h20`` are aliases spread over them), ``untrusted`` (its host key is
not in known_hosts), ``nopython`` (sessions get a PATH without python3).
Aliases for failures: ``unreach`` (a closed port), ``badauth`` (a user sshd
does not know), ``unknown`` (untrusted host key), ``nopy`` (no python3).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd import SshLab, make_lab, sshd_available

N_HOSTS = 20


@pytest.fixture(scope="session")
def lab() -> Iterator[SshLab]:
    if not sshd_available():
        pytest.skip("needs OpenSSH (sshd and ssh); ./run-tests installs openssh-server as root")
    if os.geteuid() != 0:
        pytest.skip("needs root to run sshd")
    base = Path(tempfile.mkdtemp(prefix="tether-sshlab-"))
    lab = make_lab(base / "lab")
    try:
        for name in ("s1", "s2", "s3"):
            lab.start(name)
        lab.start("untrusted", trusted=False)
        lab.start("nopython", extra="SetEnv PATH=/nonexistent HOME=/nonexistent")
        for i in range(1, N_HOSTS + 1):
            lab.alias(f"h{i:02d}", f"s{(i - 1) % 3 + 1}")
        lab.alias("unknown", "untrusted")
        lab.alias("nopy", "nopython")
        lab.alias("badauth", "s1", User="no-such-user-tether")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        lab.alias("unreach", HostName="127.0.0.1", Port=closed_port)
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """test_remote.TREE as a script, and the directory its processes mark."""
    from test_remote import TREE

    script = tmp_path / "tree.py"
    script.write_text(TREE)
    marks = tmp_path / "marks"
    marks.mkdir()
    return script, marks
