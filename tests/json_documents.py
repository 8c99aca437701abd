"""Hypothesis strategies for JSON documents, for tests that hold an encoder of
tether's to the standard library's text (tether._compact_json, tether.prune._json)."""

from __future__ import annotations

import enum

from hypothesis import strategies as st


class IntSubclass(enum.IntEnum):
    ONE = 1


class StrSubclass(str):
    pass


def documents(*extra_leaves: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Nested lists, tuples and dicts (string keys, and the keys json turns
    into strings itself) of None, booleans, integers, floats (NaN and the
    infinities included) and text (control characters, quotes, backslashes,
    non-ASCII, surrogates), and ``extra_leaves``."""
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(), *extra_leaves
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=4).map(tuple),
            st.dictionaries(st.text(max_size=6), inner, max_size=4),
            st.dictionaries(st.one_of(st.integers(), st.booleans(), st.none()), inner, max_size=3),
        ),
        max_leaves=30,
    )
