"""prctl(2): child subreaper and parent-death signal.

Through the optional native module where it is built (no ctypes to import,
~3 ms of every `tether run`), else through ctypes.
"""

from __future__ import annotations

import os

from tether._once import once

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def _native() -> Any:
    from tether._platform.linux import spawn

    return spawn._native_module() if spawn._use_native else None


@once
def _libc() -> ctypes.CDLL:
    # dlopen(NULL): the symbols already loaded, libc's among them. Not
    # ctypes.util.find_library("c"), which runs `ldconfig -p` in a subprocess
    # (a fork, an exec and a parse of the whole cache on every `tether run`).
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "prctl"):  # a statically linked Python without libc's symbols
        from ctypes.util import find_library

        libc = ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)
    # Declared so a pointer argument is passed as 64 bits, not truncated to an int.
    libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    libc.prctl.restype = ctypes.c_int
    return libc


def _prctl(option: int, arg2: int = 0) -> int:
    import ctypes

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
    native = _native()
    if native is not None:
        native.set_child_subreaper(on)
        return
    _prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def is_child_subreaper() -> bool:
    native = _native()
    if native is not None:
        return bool(native.is_child_subreaper())
    import ctypes

    value = ctypes.c_int(0)
    _prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(value))
    return bool(value.value)
