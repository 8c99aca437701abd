"""``json.dumps(obj, separators=(",", ":"))`` without importing :mod:`json`.

Every job writes its journal record as compact JSON, so every ``tether run``
paid for the ``json`` package: its decoder, scanner and encoder modules, and
the regular expressions they compile (~2 ms of a start on a 2-core node). The
text comes from the same C encoder ``json.dumps`` itself uses for a compact,
unindented document (``_json.make_encoder``, with the same arguments
``json.JSONEncoder.iterencode`` passes it), so it is byte for byte the
standard library's. Where that private entry point is missing or takes other
arguments (another Python implementation or version), ``json.dumps`` does the
work.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    _Encoder = Callable[[object, int], "list[str] | tuple[str, ...]"]
#: make_encoder's arguments but the first (each call's own markers dict, as
#: JSONEncoder.iterencode makes: a failed call can leave entries in it, and
#: threads must not share one), or None where the C encoder is not usable.
_made: list[tuple[Callable[..., _Encoder], tuple[object, ...]] | None] = []


def _not_serializable(o: object) -> object:
    # JSONEncoder.default's error, word for word.
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def _probe() -> tuple[Callable[..., _Encoder], tuple[object, ...]] | None:
    try:
        from _json import encode_basestring_ascii, make_encoder

        # (default, encoder, indent, key_separator, item_separator, sort_keys,
        #  skipkeys, allow_nan): json.dumps's defaults, compact separators.
        args = (_not_serializable, encode_basestring_ascii, None, ":", ",", False, False, True)
        make_encoder({}, *args)({"probe": [1, 2.5, None, True, "\u00e9"]}, 0)
    except (ImportError, TypeError):
        return None
    return make_encoder, args


def dumps(obj: object) -> str:
    """``json.dumps(obj, separators=(",", ":"))``, the same text."""
    if not _made:
        _made.append(_probe())
    made = _made[0]
    if made is None:
        import json

        return json.dumps(obj, separators=(",", ":"))
    make_encoder, args = made
    return "".join(make_encoder({}, *args)(obj, 0))
