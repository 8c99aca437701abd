"""Handles where pidfd_open is refused (no kernel support, or a seccomp filter).

A /proc/PID dirfd then stands in for the pidfd: pidfd_send_signal takes it,
but it polls readable at once, as every directory does. Polled as a pidfd it
would call a live process exited, and a tree "empty" while it runs.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator

import pytest

from tether import _platform
from tether.process import ProcessHandle

pytestmark = pytest.mark.skipif(_platform.NAME != "linux", reason="the linux backend's fallback")


def _refused(pid: int) -> int:
    raise OSError(errno.ENOSYS, "pidfd_open refused")


@pytest.fixture
def child_and_dirfd_handle(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[subprocess.Popen[bytes], ProcessHandle]]:
    """A sleeping child, and a handle on it opened with pidfd_open refused."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        with monkeypatch.context() as m:
            m.setattr(os, "pidfd_open", _refused)
            handle = ProcessHandle.open(child.pid)
        assert handle is not None
        try:
            yield child, handle
        finally:
            handle.close()
    finally:
        child.kill()
        child.wait()


def test_a_dirfd_handle_is_not_polled_as_a_pidfd(
    child_and_dirfd_handle: tuple[subprocess.Popen[bytes], ProcessHandle],
) -> None:
    child, handle = child_and_dirfd_handle
    assert handle.fileno == -1  # nothing for a poller: exits are asked for
    assert not handle.has_exited()
    handle.send_signal(9)
    child.wait(10)  # reaped: gone
    assert handle.has_exited()


def test_a_dirfd_handle_calls_a_zombie_exited(
    child_and_dirfd_handle: tuple[subprocess.Popen[bytes], ProcessHandle],
) -> None:
    child, handle = child_and_dirfd_handle
    handle.send_signal(9)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # a zombie now
    assert handle.has_exited()
