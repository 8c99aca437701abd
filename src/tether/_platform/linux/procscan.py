"""The optional native /proc reader (``_procscan.c``), or None.

It serves the pruner (:mod:`tether.prune.scan`), the stat-only snapshot and
a cgroup KILL's capture of the frozen members (:func:`tether._platform.linux.capture`).
The extension is built where a compiler is (setup.py, optional); without it,
or when it is stale, each reads /proc in Python. Both ways give the same
rows (tests run both).
"""

from __future__ import annotations

import os

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The _procscan.c this file speaks to (its PROCSCAN_ABI): a module built
#: from another version of it is not used.
ABI = 2
#: False: never the native way (the environment variable TETHER_NO_NATIVE_PROCSCAN
#: set to anything but "" or "0" does the same; tests of the Python way).
use_native = os.environ.get("TETHER_NO_NATIVE_PROCSCAN", "") in ("", "0")
_cached: list[Any] = []


def module() -> Any:
    """The _procscan extension, or None: switched off, not built, or stale."""
    if not use_native:
        return None
    if not _cached:
        try:
            loaded = _load()
        except OSError:
            # Out of descriptors: finding the module lists its package's
            # directory (EMFILE at the limit, seen in a cancel at the fd
            # limit). Not "not built": tried again on the next call.
            return None
        _cached.append(loaded)
    return _cached[0]


def _load() -> Any:
    try:
        from tether._platform.linux import _procscan  # type: ignore[attr-defined]
    except ImportError:
        return None
    if getattr(_procscan, "ABI", None) != ABI:
        return None
    # In a checkout (an editable install builds in place) the source sits
    # beside the module: one built from an older source is not used even when
    # nobody bumped the ABI. An installed wheel has no source here.
    try:
        with open(os.path.join(os.path.dirname(__file__), "_procscan.c"), "rb") as f:
            text = f.read(1 << 20)
    except OSError:
        return _procscan
    import zlib

    return _procscan if zlib.crc32(text) == getattr(_procscan, "SOURCE_CRC", None) else None
