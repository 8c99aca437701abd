"""The build's one dynamic part: the optional native spawn (and the pruner's
native /proc scan, _procscan.c, built and skipped the same way).

tether._platform.linux._vspawn (C, clone3 as posix_spawn does it) is built
where it can be: x86_64 and aarch64 Linux, with a C compiler and Python's
headers. A build that cannot compile it still installs (optional=True), and
tether then spawns as it did without it (tether/_platform/linux/spawn.py).
Everything else is in pyproject.toml.
"""

from __future__ import annotations

import platform
import sys
import zlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "src/tether/_platform/linux/_vspawn.c"
#: The pruner's native /proc scan (optional too: tether.prune.scan reads /proc
#: in Python without it).
PROCSCAN_SOURCE = "src/tether/_platform/linux/_procscan.c"


def _crc(source: str) -> int:
    return zlib.crc32((Path(__file__).resolve().parent / source).read_bytes())


def _extensions() -> list[Extension]:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return []
    # The module carries the CRC of the source it was built from: spawn.py
    # does not use a build whose source has changed since (a stale in-place
    # .so of an editable install).
    crc = zlib.crc32((Path(__file__).resolve().parent / SOURCE).read_bytes())
    return [
        Extension(
            "tether._platform.linux._vspawn",
            [SOURCE],
            define_macros=[("TETHER_VSPAWN_CRC", f"{crc}L")],
            optional=True,
        ),
        Extension(
            "tether._platform.linux._procscan",
            [PROCSCAN_SOURCE],
            define_macros=[("TETHER_PROCSCAN_CRC", f"{_crc(PROCSCAN_SOURCE)}L")],
            # Its reads run in a second thread: libpthread before glibc 2.34.
            extra_compile_args=["-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
    ]


setup(ext_modules=_extensions())
