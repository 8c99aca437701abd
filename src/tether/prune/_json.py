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
from collections.abc import Callable
from itertools import chain
from json.encoder import encode_basestring_ascii
from math import isfinite

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
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


def _finite(v: float) -> str:
    if not isfinite(v):
        raise _Unusual  # NaN, Infinity: json's own spelling
    return float.__repr__(v)


#: Exact types -> their text (subclasses are not here: json may spell them otherwise).
_SCALARS: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    float: _finite,
    bool: lambda v: "true" if v else "false",
    type(None): lambda v: "null",
}


def _converters(newline: str, layouts: dict[Any, Any]) -> dict[type, Callable[[Any], str]]:
    """:data:`_SCALARS`, and containers as text at this level (cached per level)."""
    key = ("converters", newline)
    convert = layouts.get(key)
    if convert is None:

        def nested(v: Any) -> str:
            part: list[str] = []
            _emit(v, newline, layouts, part)
            return "".join(part)

        convert = layouts[key] = {**_SCALARS, dict: nested, list: nested, tuple: nested}
    return convert


def _emit(o: Any, newline: str, layouts: dict[Any, Any], out: list[str]) -> None:
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
        if not isfinite(o):
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
        # A row of scalars (and small containers): each value's text by one
        # lookup of its exact type, then prefixes and texts in one extend.
        convert = _converters(inner, layouts)
        try:
            texts = [convert[type(v)](v) for v in o.values()]
        except KeyError:  # a type json may spell otherwise: value by value
            texts = []
            for v in o.values():
                part: list[str] = []
                _emit(v, inner, layouts, part)
                texts.append("".join(part))
        out.extend(chain.from_iterable(zip(prefixes, texts, strict=True)))
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
            tv = type(v)
            if tv is int:
                out.append(int.__repr__(v))
            elif tv is str:
                out.append(encode_basestring_ascii(v))
            else:
                _emit(v, inner, layouts, out)
        out.append(newline + "]")
    else:
        raise _Unusual
