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

import json_documents
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


documents = json_documents.documents()


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


def _outcome(views: list[Any]) -> Any:
    from tether.prune.classify import Plan, PruneOptions, SourceStatus
    from tether.prune.outcome import Outcome

    # A source's text before the rows, and a reason after them, that spell
    # the document's own "strays" key (escaped: not taken for it).
    key = '\n  "strays": []'
    plan = Plan(
        tuple(v.stray for v in views), {key: 1}, (), (), (SourceStatus("s", True, key),), {},
        PruneOptions(), len(views), 0.5,
    )  # fmt: skip
    return Outcome("dry-run", plan, tuple(views), None, "syslog", None)


_texts = st.text(max_size=40)


def _view(
    pid: Any = 42,
    uids: Any = (1000, 1000, 1000, 1000),
    age: Any = 1.25,
    cputime: Any = 0.5,
    orphan: Any = True,
    cgroup: Any = "/user.slice",
    start: Any = 1.7e9,
    comm: str = "a\x1bb",
    cmdline: str = 'sh -c "x\\ny"',
    rule: str = "rule é",
    ppid: Any = 1,
    sid: Any = 42,
) -> Any:
    from tether.prune.classify import Stray
    from tether.prune.outcome import StrayView

    stray = Stray(pid, 7, ppid, sid, uids, comm, age, cputime, rule, orphan)
    return StrayView(stray, "alice", comm, cmdline, cgroup, start, "would kill")


#: Rows of the right types, any values (NaN and the infinities included).
_rows = st.builds(
    _view,
    pid=st.integers(-(2**70), 2**70),
    uids=st.tuples(*[st.integers(0, 2**40)] * 4),
    age=st.floats(),
    cputime=st.floats(),
    cgroup=st.one_of(st.none(), _texts),
    start=st.floats(),
    comm=_texts,
    cmdline=st.text(max_size=300),
    rule=_texts,
)
#: A value of another type json writes otherwise (or not at all).
_odd = st.builds(
    _view,
    pid=st.sampled_from([True, 42]),
    uids=st.sampled_from([(1, 2, 3, 4), [1, 2, 3, 4], (1, 2, 3), (1, 2, 3, True)]),
    age=st.sampled_from([1.0, 3, True]),
    orphan=st.sampled_from([True, False, 1]),
    cgroup=st.sampled_from([None, "/x", 7]),
)


@given(st.lists(st.one_of(_rows, _odd), max_size=4))
@example([_view(start=math.nan)])
@example([_view(age=math.inf)])
@example([_view(cputime=-math.inf)])
@example([_view(pid=True)])
@example([_view(uids=(1, 2, 3, True))])
@example([_view(uids=(1, 2, 3))])
@example([_view(orphan=1)])
@example([_view(cgroup=7)])
@example([_view(age=3)])
@example([_view(age=10**400)])  # round() keeps an int: isfinite() would overflow
@example([_view(cputime=10**400)])
@example([_view(ppid=False)])
@example([_view(sid=True)])
@example([_view(start=True)])
@settings(max_examples=300, deadline=None)
def test_the_prune_document_is_the_standard_librarys_text(views: list[Any]) -> None:
    """Outcome.to_json writes the strays' rows itself: the same text as
    json.dumps of to_dict, whatever their strings and numbers (a value that
    is not finite or not of its type is left to the general encoder)."""
    outcome = _outcome(views)
    assert outcome.to_json() == _standard(outcome.to_dict())


def test_the_rows_are_written_by_the_row_writer() -> None:
    from tether.prune import outcome as module

    doc = _outcome([_view(), _view(pid=43, cgroup=None)])
    assert module._stray_rows(doc.strays) is not None
    assert doc.to_json() == _standard(doc.to_dict())
    assert module._stray_rows(_outcome([_view(start=math.nan)]).strays) is None
