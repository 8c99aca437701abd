"""prctl(2) through ctypes: child subreaper and parent-death signal."""

from __future__ import annotations

import ctypes
import functools
import os

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    # dlopen(NULL): the symbols already loaded, libc's among them. Not
    # ctypes.util.find_library("c"), which runs `ldconfig -p` in a subprocess
    # (a fork, an exec and a parse of the whole cache on every `tether run`).
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "prctl"):  # a statically linked Python without libc's symbols
        from ctypes.util import find_library

        libc = ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)
    # Declared so a pointer argument is passed as 64 bits, not truncated to an int.
    libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    libc.prctl.restype = ctypes.c_int
    return libc


def _prctl(option: int, arg2: int = 0) -> int:
    rc: int = _libc().prctl(option, arg2, 0, 0, 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def set_child_subreaper(on: bool = True) -> None:
    """Orphaned descendants re-parent to this process instead of init.

    The attribute is per process (not per thread) and is not inherited by
    children, so only the supervisor is ever a subreaper.
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def is_child_subreaper() -> bool:
    value = ctypes.c_int(0)
    _prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(value))
    return bool(value.value)
