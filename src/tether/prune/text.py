"""Process names and command lines made safe for a terminal, a log and JSON.

The pruner shows and logs what processes chose to call themselves; it uses
the one sanitiser, :mod:`tether.sanitize` (re-exported here for its modules).
"""

from __future__ import annotations

from tether.sanitize import visible, visible_bytes

__all__ = ["visible", "visible_bytes"]
