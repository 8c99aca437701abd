"""Issue 15: the fast sanitiser (str.replace for ASCII, str.translate with a
cached table otherwise) escapes exactly what the character-by-character walk
it replaced did, over hostile input."""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tether import sanitize
from tether.sanitize import _escape, oneline, visible


def reference_visible(text: str) -> str:
    """The sanitiser before issue 15, verbatim: one Python step per character."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


# Every kind of character the sanitiser must handle: C0/C1 controls, DEL,
# bidi overrides, zero-width and other format characters, line and
# paragraph separators, odd spaces, lone surrogates (non-UTF-8 argv bytes
# under surrogateescape), private use, unassigned and astral code points.
HOSTILE = st.sampled_from(
    [
        *map(chr, range(0x00, 0x21)),
        "\x7f", "\x85", "\x9b", "\xa0", "\xad", "\u061c", "\u200b", "\u200e",
        "\u2028", "\u2029", "\u202a", "\u202e", "\u2066", "\u2069", "\u3000",
        "\ufeff", "\ufffe", "\ud800", "\udc80", "\udcff", "\ue000", "\U000e0001",
        "\U0010ffff", "\U0001f600", "é", "日", "\\", "x", "1",
    ]
)  # fmt: skip
TEXT = st.one_of(
    st.text(HOSTILE, max_size=200),
    st.text(st.characters(codec=None), max_size=200),  # any code point, surrogates too
    st.text(st.characters(max_codepoint=0x7F), max_size=200),  # the ASCII fast path
    st.binary(max_size=200).map(os.fsdecode),
)


@settings(max_examples=600, deadline=None)
@given(TEXT)
@example("\x1b]0;pwned\x07\x1b[2J\r\nFORGED LINE\u202e\x9b")
@example("\\x1b already escaped \x1b")
@example(os.fsdecode(b"\xff\xfe-not-utf8\n"))
def test_visible_matches_the_reference_walk(text: str) -> None:
    out = visible(text)
    assert out == reference_visible(text)
    assert out.isprintable()
    assert visible(out) == out


@settings(max_examples=300, deadline=None)
@given(TEXT, st.integers(min_value=0, max_value=120))
def test_oneline_and_prefixes_match_the_reference(text: str, width: int) -> None:
    assert oneline(text, width) == " ".join(reference_visible(text).split())[:width]
    # Every character becomes one or more: a cut input gives the same prefix
    # (what lets callers cut a long command line before sanitising it).
    assert visible(text[:width])[:width] == reference_visible(text)[:width]


def test_the_cache_is_bounded_and_stays_right_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    table = sanitize._Escapes()
    monkeypatch.setattr(sanitize, "_ESCAPES", table)
    monkeypatch.setattr(sanitize, "_ESCAPES_CACHED", 8)
    text = "".join(map(chr, range(0x80, 0x400))) + "\u202e\ud800"
    assert visible(text) == reference_visible(text)
    assert len(table) == 8
    assert visible(text) == reference_visible(text)  # past the bound: worked out again
