"""``json.dumps(obj, indent=2, ensure_ascii=True)``, the same text, faster.

With an indent the standard library uses its pure-Python encoder: a chain of
generators yielding every comma, colon and indent (~17 ms for a prune document
of 1000 strays). Here each string is escaped by the C escaper the standard
library itself uses (``_json.encode_basestring_ascii``), numbers by the same
``repr`` calls, and the layout is built by joining lists. Anything this does
not handle exactly as the standard library does (a key that is not a string,
a float that is not finite, a subclass of a basic type, a type json does not
know) makes it fall back to ``json.dumps`` itself.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring_ascii
from typing import Any


class _Unusual(Exception):
    """Something :func:`dumps` leaves to the standard library."""


def dumps(obj: object) -> str:
    """``json.dumps(obj, indent=2, ensure_ascii=True)``."""
    try:
        return _value(obj, "\n", {})
    except (_Unusual, RecursionError):
        return json.dumps(obj, indent=2, ensure_ascii=True)


def _value(o: Any, newline: str, keys: dict[str, str]) -> str:
    """``o`` encoded; ``newline`` is the line break and indent of its level;
    ``keys`` caches encoded keys (a list of rows repeats them)."""
    t = type(o)
    if t is str:
        return encode_basestring_ascii(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if t is int:
        return int.__repr__(o)
    if t is float:
        if not math.isfinite(o):
            raise _Unusual  # NaN, Infinity: json's own spelling
        return float.__repr__(o)
    inner = newline + "  "
    if t is dict:
        if not o:
            return "{}"
        parts = []
        for k, v in o.items():
            if type(k) is not str:
                raise _Unusual  # json turns numbers, booleans, None into strings
            key = keys.get(k)
            if key is None:
                key = keys[k] = encode_basestring_ascii(k) + ": "
            parts.append(key + _value(v, inner, keys))
        return "{" + inner + ("," + inner).join(parts) + newline + "}"
    if t is list or t is tuple:
        if not o:
            return "[]"
        return "[" + inner + ("," + inner).join([_value(v, inner, keys) for v in o]) + newline + "]"
    raise _Unusual
