"""tether._compact_json: ``json.dumps(obj, separators=(",", ":"))`` without the json package.

Journal records are read back by other tethers (the watchdog, ``tether reap``,
older versions), so the text is held to the standard library's byte for byte,
errors included, and the fallback path is exercised too.
"""

from __future__ import annotations

import json
import math
from typing import Any

import json_documents
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tether import _compact_json
from tether._compact_json import dumps

documents = json_documents.documents(
    st.just(json_documents.IntSubclass.ONE), st.text(max_size=4).map(json_documents.StrSubclass)
)


def _standard(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


@given(documents)
@example({"job_id": "a" * 24, "argv": ["sh", "-c", 'x\x1b[31m\n"é\ud800'], "step": [1, 2.5]})
@example(math.nan)
@settings(max_examples=300, deadline=None)
def test_the_text_is_json_dumps(obj: Any) -> None:
    assert dumps(obj) == _standard(obj)


@pytest.mark.parametrize("obj", [{"x": {1, 2}}, [object()], {(1, 2): 3}])
def test_what_json_refuses_is_refused_alike(obj: Any) -> None:
    with pytest.raises(TypeError) as ours:
        dumps(obj)
    with pytest.raises(TypeError) as theirs:
        _standard(obj)
    assert str(ours.value) == str(theirs.value)


def test_a_cycle_is_refused_and_leaves_no_trace() -> None:
    """A failed call must not poison the next: each call has its own
    markers, as json.dumps does."""
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    for _ in range(2):
        with pytest.raises(ValueError, match="Circular reference"):
            dumps(cyclic)
    shared = [1]
    assert dumps([shared, shared]) == "[[1],[1]]"


def test_the_c_encoder_is_in_use_here() -> None:
    """On CPython the private encoder is there and probed usable (else every
    record would silently import json again)."""
    dumps({})
    assert _compact_json._made and _compact_json._made[0] is not None


def test_without_the_c_encoder_json_does_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compact_json, "_made", [None])
    assert dumps({"a": [1, None]}) == '{"a":[1,null]}'
