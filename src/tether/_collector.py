"""The cyclic garbage collector around a start-up.

A command (:func:`tether.cli.main`) and a remote host's engine (stage 1)
turn the collector off while they import and set up: the collections that
start-up triggers traverse what imports create, which lives as long as the
process, and find next to nothing (~7 ms of a ``tether run``).
"""

from __future__ import annotations

import gc


def gc_back_on() -> None:
    """Cyclic collection on again, for what may run for long (a supervision,
    a termination): what start-up made is frozen first (it lives as long as
    the process), so collections traverse only what comes after."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
