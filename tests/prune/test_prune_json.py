"""tether.prune._json: the text of ``json.dumps(indent=2, ensure_ascii=True)``, faster.

The prune document is compared by scripts byte for byte (and its schema is
documented), so the encoder is held to the standard library's exact output,
including every case it hands back to it.
"""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tether.prune._json import dumps


class _Int(enum.IntEnum):
    ONE = 1


class _Str(str):
    pass


class _Float(float):
    def __repr__(self) -> str:
        return "not json"


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and the infinities included: json spells them its own way
    st.text(),  # control characters, quotes, backslashes, non-ASCII, surrogates
)
documents = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        # Keys json turns into strings itself (numbers, booleans, None).
        st.dictionaries(st.one_of(st.integers(), st.booleans(), st.none()), inner, max_size=3),
    ),
    max_leaves=30,
)


def _standard(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=True)


@given(documents)
@example({"strays": [{"pid": 1, "uids": [1000, 1000], "cmdline": 'a\x1b[31m\n"é\ud800'}]})
@example({"x": math.nan, "y": [math.inf, -math.inf]})
@example({2: "two", True: "yes", None: "none", 1.5: "float"})
@example({"e": _Int.ONE, "s": _Str("sub"), "f": _Float(1.5)})  # subclasses: json's way
@example(OrderedDict(a=1))
@example({"empty": {}, "none": [], "t": ()})
@example([[[[]]], {"a": {"b": {}}}])
@settings(max_examples=500, deadline=None)
def test_the_same_text_as_the_standard_library(obj: Any) -> None:
    assert dumps(obj) == _standard(obj)


def test_a_type_json_refuses_is_refused_alike() -> None:
    for bad in ({"x": {1, 2}}, {"x": object()}, [b"bytes"]):
        try:
            _standard(bad)
        except TypeError as err:
            expected = str(err)
        else:
            raise AssertionError("json took it")
        try:
            dumps(bad)
        except TypeError as err:
            assert str(err) == expected
        else:
            raise AssertionError("dumps took it")
