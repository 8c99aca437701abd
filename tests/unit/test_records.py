"""tether._records: at run time a lean stand-in for dataclasses (issue 15:
~25 ms of every command's imports). It must behave as dataclasses does for
every option tether uses, so each case below builds the same class body with
both decorators and compares what a caller can see: construction (and its
errors), repr, equality, hashing, frozen-ness, replace, fields, pickling,
pattern matching and slots."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tether._records as records

#: How a field is declared: (annotation line suffix, uses field()).
KINDS = {
    "plain": "",
    "default": " = 7",
    "default_tuple": " = ()",
    "field_default": " = field(default=None)",
    "field_no_repr": " = field(default='x', repr=False)",
    "factory_list": " = field(default_factory=list)",
    "factory_dict": " = field(default_factory=dict)",
}


def build(decorator_module: Any, kinds: list[str], options: str, post_init: bool) -> type:
    body = ["__annotations__ = {}", *(f"f{i}: object{KINDS[k]}" for i, k in enumerate(kinds))]
    if post_init:
        # Called after the fields are set, in both: "boom" in a field fails it.
        body += [
            "def __post_init__(self):",
            "    if 'boom' in [getattr(self, n) for n in type(self).__dict__['__annotations__']]:",
            "        raise ValueError('boom')",
        ]
    source = f"@dataclass({options})\nclass Rec:\n" + textwrap.indent("\n".join(body), "    ")
    namespace: dict[str, Any] = {
        "dataclass": decorator_module.dataclass,
        "field": decorator_module.field,
        "__name__": __name__,
    }
    exec(compile(source, "<record>", "exec"), namespace)
    cls: type = namespace["Rec"]
    globals()[f"Rec_{decorator_module.__name__.replace('.', '_')}"] = cls  # picklable by name
    cls.__qualname__ = cls.__name__ = f"Rec_{decorator_module.__name__.replace('.', '_')}"
    return cls


def valid_order(kinds: list[str], kw_only: bool) -> bool:
    """dataclasses' rule: no plain field after one with a default (unless kw_only)."""
    seen_default = False
    for k in kinds:
        if k == "plain" and seen_default and not kw_only:
            return False
        seen_default = seen_default or k != "plain"
    return True


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as err:  # the kind of error is what must agree
        return "error", type(err).__mro__[1] if type(
            err
        ).__name__ == "FrozenInstanceError" else type(err)


def seen(obj: Any, values: dict[str, Any]) -> dict[str, Any]:
    """What a caller can observe of a record instance (class names aside)."""
    other = obj.__class__(**values)
    return {
        "repr": repr(obj).split("(", 1)[1],
        "fields": {n: getattr(obj, n) for n in values},
        "eq": (obj == other, obj != other, obj == 5),
        "hash": outcome(lambda: hash(obj) == hash(other)),
        "set": outcome(lambda: setattr(obj, "f0", 99)) if values else None,
        "match_args": getattr(obj.__class__, "__match_args__", None),
        "slots": hasattr(obj.__class__, "__slots__"),
        "dict": hasattr(obj, "__dict__"),
    }


FIELD_LISTS = st.lists(st.sampled_from(list(KINDS)), max_size=5)
OPTIONS = st.sampled_from(
    ["", "frozen=True", "frozen=True, slots=True", "slots=True", "eq=False",
     "frozen=True, kw_only=True", "kw_only=True"]
)  # fmt: skip


@given(FIELD_LISTS, OPTIONS, st.booleans(), st.data())
@settings(max_examples=300, deadline=None)
def test_records_behave_as_dataclasses(
    kinds: list[str], options: str, post_init: bool, data: st.DataObject
) -> None:
    kw_only = "kw_only" in options
    if not valid_order(kinds, kw_only):
        for module in (dataclasses, records):
            with pytest.raises(TypeError):
                build(module, kinds, options, post_init)
        return
    ours = build(records, kinds, options, post_init)
    theirs = build(dataclasses, kinds, options, post_init)
    values = {f"f{i}": data.draw(st.sampled_from([1, "a", (2,), None, float("nan"), "boom"]))
              for i in range(len(kinds))}  # fmt: skip
    required = {n: v for n, v in values.items() if kinds[int(n[1:])] == "plain"}
    # help() and IDEs: the same signature, before any instance exists.
    assert str(inspect.signature(ours)) == str(inspect.signature(theirs))
    # Construction: all by keyword, only the required, positionally, and wrong.
    assert outcome(lambda: type(ours(**values)) and None) == outcome(
        lambda: type(theirs(**values)) and None
    )
    if "boom" in values.values():
        return
    assert seen(ours(**values), values) == seen(theirs(**values), values)
    a, b = ours(**required), theirs(**required)
    assert repr(a).split("(", 1)[1] == repr(b).split("(", 1)[1]
    positional = list(values.values())
    assert outcome(lambda: repr(ours(*positional)).split("(", 1)[1]) == outcome(
        lambda: repr(theirs(*positional)).split("(", 1)[1]
    )
    assert outcome(lambda: type(ours(nope=1)) and None) == outcome(
        lambda: type(theirs(nope=1)) and None
    )
    # replace and fields
    if values:
        changed = {"f0": "changed"}
        assert (
            repr(records.replace(ours(**values), **changed)).split("(", 1)[1]
            == repr(dataclasses.replace(theirs(**values), **changed)).split("(", 1)[1]
        )
    assert [f.name for f in records.fields(ours)] == [f.name for f in dataclasses.fields(theirs)]
    # Pickling (the keeper pickles specs): the same fields come back, equal.
    back = pickle.loads(pickle.dumps(ours(**values)))
    assert seen(back, values)["repr"] == seen(ours(**values), values)["repr"]
    # Class attributes: a plain default stays one (not with slots), a factory leaves none.
    for i, k in enumerate(kinds):
        name = f"f{i}"
        assert (name in ours.__dict__) == (name in theirs.__dict__), (k, options)


def test_a_factory_gives_each_instance_its_own_value() -> None:
    @records.dataclass
    class Bag:
        items: list[int] = records.field(default_factory=list)

    first, second = Bag(), Bag()
    first.items.append(1)
    assert second.items == []


def test_what_it_does_not_implement_is_refused() -> None:
    with pytest.raises(TypeError):
        records.dataclass(order=True)(type("X", (), {"__annotations__": {"a": "int"}}))
    with pytest.raises(TypeError):
        records.dataclass(type("Y", (), {"__annotations__": {"a": "ClassVar[int]"}}))
    with pytest.raises(ValueError):
        records.dataclass(type("Z", (), {"__annotations__": {"a": "list"}, "a": []}))


def test_every_tether_record_pickles_and_compares() -> None:
    """The keeper pickles job specs; each record type of the run path round-trips."""
    from tether.config import EffectiveConfig
    from tether.policy import Policy
    from tether.spec import JobSpec

    for value in (Policy.default(), JobSpec(argv=("true",)), EffectiveConfig.defaults()):
        back = pickle.loads(pickle.dumps(value))
        assert back == value and repr(back) == repr(value)


NAMED_TUPLE = """
class Pair(NamedTuple):
    '''A pair.'''

    left: int
    right: str = "r"
    extra: tuple[int, ...] = ()

    def both(self) -> str:
        return f"{self.left}{self.right}"

    @property
    def twice(self) -> int:
        return self.left * 2
"""


def named_tuple(module: Any) -> Any:
    namespace: dict[str, Any] = {"NamedTuple": module.NamedTuple, "__name__": __name__}
    exec(compile("from __future__ import annotations\n" + NAMED_TUPLE, "<nt>", "exec"), namespace)
    return namespace["Pair"]


def test_named_tuples_behave_as_typings() -> None:
    import typing

    ours, theirs = named_tuple(records), named_tuple(typing)
    for args in [(1,), (1, "x"), (1, "x", (2,))]:
        a, b = ours(*args), theirs(*args)
        assert (repr(a), tuple(a), a == tuple(b), hash(a) == hash(b)) == (
            repr(b), tuple(b), True, True
        )  # fmt: skip
        assert (a.both(), a.twice, a._asdict(), a._replace(left=5)) == (
            b.both(), b.twice, b._asdict(), b._replace(left=5)
        )  # fmt: skip
    assert (ours._fields, ours._field_defaults, ours.__doc__, ours.__qualname__) == (
        theirs._fields, theirs._field_defaults, theirs.__doc__, theirs.__qualname__
    )  # fmt: skip
    assert set(ours.__annotations__) == set(theirs.__annotations__)
    assert outcome(ours) == outcome(theirs)
    for module in (records, typing):
        with pytest.raises(TypeError):
            exec("class Bad(NamedTuple):\n    a: int = 1\n    b: int\n", {
                "NamedTuple": module.NamedTuple, "__name__": __name__,
            })  # fmt: skip


def test_init_is_compiled_on_first_construction() -> None:
    @records.dataclass(frozen=True, slots=True)
    class Late:
        a: int
        b: str = "b"

    assert not inspect.isfunction(Late.__dict__["__init__"])  # nothing compiled yet
    with pytest.raises(TypeError):
        Late()  # the compiled __init__ says what is missing
    assert inspect.isfunction(Late.__dict__["__init__"])
    assert Late(1) == Late(1, "b") and repr(Late(2, "c")).endswith("Late(a=2, b='c')")


def test_a_record_inside_itself_shows_as_an_ellipsis() -> None:
    made = []
    for module in (records, dataclasses):

        @module.dataclass
        class Node:
            other: object = None

        node = Node()
        node.other = Node(node)
        made.append(repr(node).replace(Node.__qualname__, "Node"))
    assert made[0] == made[1] == "Node(other=Node(other=...))"


def test_a_named_tuple_keeps_its_own_methods() -> None:
    import typing

    for module in (records, typing):
        with pytest.raises(AttributeError):
            exec(
                "class P(NamedTuple):\n    a: int\n    def _replace(self): pass\n",
                {"NamedTuple": module.NamedTuple, "__name__": __name__},
            )
