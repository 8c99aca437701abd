"""The one sanitiser for text from outside that reaches a terminal, a log or JSON.

Process names, command lines, environment cookies, remote error text and
remote reports are data an attacker may choose: an escape sequence could
rewrite root's terminal, a newline forge a syslog line, a lone surrogate
(from a non-UTF-8 argv) make ``--json`` invalid UTF-8. Everything shown
passes through :func:`visible` (or :func:`oneline`), everything logged
through :func:`log_field`, and JSON is written by :func:`json_dumps`.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: A log field longer than this is cut (syslog datagrams are small).
MAX_LOG_FIELD = 4096


def _escape(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that was not UTF-8 (os.fsdecode's surrogateescape).
        return f"\\x{code - 0xDC00:02x}"
    if c == "\n":
        return "\\n"
    if c == "\t":
        return "\\t"
    if c == "\r":
        return "\\r"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class _Escapes(dict[int, str]):
    """Code point -> itself if printable, else its escape: a table for
    ``str.translate``, filled on first sight of each character.

    translate walks the string in C: 41 vs 59 us (CPU) for 900 characters of
    CJK with newlines against the per-character generator it replaced. The
    cache is bounded: text naming many distinct code points is still
    translated right, its rarer characters are only worked out again.
    """

    def __missing__(self, code: int) -> str:
        c = chr(code)
        value = c if c.isprintable() else _escape(c)
        if len(self) < _ESCAPES_CACHED:
            self[code] = value
        return value


#: Most distinct characters the translation table keeps (a few MB at most).
_ESCAPES_CACHED = 65536
_ESCAPES = _Escapes()
_ASCII_CONTROLS = tuple(map(chr, [*range(0x20), 0x7F]))


def visible(text: str) -> str:
    """``text`` with every non-printable character written as a visible escape.

    C0 and C1 controls, DEL, newlines, bidi overrides and other format
    characters, separators other than the space, and lone surrogates become
    ``\\xNN``/``\\uNNNN``; ordinary text is unchanged.
    """
    if text.isprintable():
        return text
    if text.isascii():
        # Only C0 controls and DEL are unprintable here, and every escape is
        # printable ASCII: one str.replace per control present (C speed, no
        # per-character Python) gives what a character-by-character walk does,
        # ~20x cheaper on a 1400-character `python -c` command line.
        for c in _ASCII_CONTROLS:
            if c in text:  # 33 C searches cost a tenth of set(text)
                text = text.replace(c, _ESCAPES[ord(c)])
        return text
    return text.translate(_ESCAPES)


def visible_bytes(data: bytes) -> str:
    """Bytes (e.g. /proc or remote output) as :func:`visible` text."""
    return visible(data.decode("utf-8", "surrogateescape"))


def oneline(text: str, width: int) -> str:
    """``text`` for one row of a table: visible, runs of spaces collapsed, cut to ``width``."""
    return " ".join(visible(text).split())[:width]


def log_field(value: object) -> str:
    """A value for a text or syslog log line: visible, one line, bounded."""
    text = visible(value if isinstance(value, str) else str(value))
    return text if len(text) <= MAX_LOG_FIELD else text[:MAX_LOG_FIELD] + "..."


def json_safe(value: Any, *, non_finite_as_null: bool = False) -> Any:
    """``value`` with every string's lone surrogates escaped, so it encodes as
    UTF-8; ``non_finite_as_null``: NaN and the infinities become None (data
    from outside: json would write them as bare ``NaN``, which is not JSON)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "".join(_escape(c) if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
        return value
    if isinstance(value, dict):
        return {
            json_safe(k, non_finite_as_null=non_finite_as_null): json_safe(
                v, non_finite_as_null=non_finite_as_null
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [json_safe(v, non_finite_as_null=non_finite_as_null) for v in value]
    if non_finite_as_null and isinstance(value, float) and not -_INF < value < _INF:
        return None  # NaN compares false both ways
    return value


_INF = float("inf")


def json_dumps(value: Any, *, non_finite_as_null: bool = False, **kwargs: Any) -> str:
    """JSON that is always valid UTF-8 (non-finite numbers refused, not
    written; or written as null with ``non_finite_as_null``)."""
    import json  # not at import: a run writes no JSON but its journal's (tether._compact_json)

    safe = json_safe(value, non_finite_as_null=non_finite_as_null)
    return json.dumps(safe, allow_nan=False, **kwargs)
