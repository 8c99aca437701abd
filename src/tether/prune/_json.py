"""``json.dumps(obj, indent=2, ensure_ascii=True)``, the same text, faster.

With an indent the standard library uses its pure-Python encoder: a chain of
generators yielding every comma, colon and indent (~17 ms for a prune document
of 1000 strays). Here each string is escaped by the C escaper the standard
library itself uses (``_json.encode_basestring_ascii``), numbers by the same
``repr`` calls, and the text is one join of its pieces. Anything this does
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
    out: list[str] = []
    try:
        _emit(obj, "\n", {}, out)
    except (_Unusual, RecursionError):
        return json.dumps(obj, indent=2, ensure_ascii=True)
    return "".join(out)  # one copy of the text (concatenating would copy it per level)


def _emit(o: Any, newline: str, layouts: dict[tuple[str, ...], list[str]], out: list[str]) -> None:
    """Append ``o``'s text to ``out``; ``newline`` is the line break and indent
    of its level; ``layouts`` caches, per level and sequence of keys, the text
    that comes before each value of a dict."""
    t = type(o)
    if t is str:
        out.append(encode_basestring_ascii(o))
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif t is int:
        out.append(int.__repr__(o))
    elif t is float:
        if not math.isfinite(o):
            raise _Unusual  # NaN, Infinity: json's own spelling
        out.append(float.__repr__(o))
    elif t is dict:
        if not o:
            out.append("{}")
            return
        # A list of rows repeats one layout: the text before each value (comma,
        # line break, indent, key) is made once per layout and level.
        layout = (newline, *o)
        prefixes = layouts.get(layout)
        if prefixes is None:
            if any(type(k) is not str for k in o):
                raise _Unusual  # json turns numbers, booleans, None into strings
            inner = newline + "  "
            prefixes = layouts[layout] = [
                ("," if i else "{") + inner + encode_basestring_ascii(k) + ": "
                for i, k in enumerate(o)
            ]
        inner = newline + "  "
        for prefix, v in zip(prefixes, o.values(), strict=True):
            out.append(prefix)
            # Strings and ints inline: most of a document's values, a call each.
            tv = type(v)
            if tv is str:
                out.append(encode_basestring_ascii(v))
            elif tv is int:
                out.append(int.__repr__(v))
            else:
                _emit(v, inner, layouts, out)
        out.append(newline + "}")
    elif t is list or t is tuple:
        if not o:
            out.append("[]")
            return
        inner = newline + "  "
        before = "[" + inner
        for v in o:
            out.append(before)
            before = "," + inner
            _emit(v, inner, layouts, out)
        out.append(newline + "]")
    else:
        raise _Unusual
