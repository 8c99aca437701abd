"""Process names and command lines made safe for a terminal, a log and JSON.

A process chooses its own name and argv: escape sequences, BEL, a newline
that forges a second log line, or bytes that are not UTF-8. Everything the
pruner shows or logs from /proc goes through :func:`visible`, which keeps
the text readable and makes every such character visible instead
(``\\x1b``, ``\\n``, ``\\xff``), so the result is printable UTF-8 and one line.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(c: str) -> str:
    named = _NAMED.get(c)
    if named is not None:
        return named
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with control characters, undecodable bytes and backslashes escaped."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, without building a new string
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)


def visible_bytes(data: bytes) -> str:
    """Bytes from /proc (a comm, an argv element) as :func:`visible` text."""
    return visible(data.decode("utf-8", "surrogateescape"))
