"""``dataclass``, ``field``, ``fields`` and ``replace`` for tether's record types.

Type checkers see :mod:`dataclasses` itself (below ``TYPE_CHECKING``), so mypy
checks every record as the dataclass it declares. At run time a lean
equivalent stands in, for the part of dataclasses tether uses: ``frozen``,
``eq``, ``kw_only``, ``slots``; fields with ``default``, ``default_factory``
and ``repr``; ``__post_init__``; ``replace`` and ``fields``. No inheritance
between records, no ``ClassVar``/``InitVar``, no ``order``: :func:`dataclass`
refuses what it does not implement rather than doing it differently.

Why not dataclasses itself: every ``tether`` command defines some 45 records
at import, and dataclasses compiles six generated methods for each of them
(~0.55 ms a class) after importing ``inspect`` (~7 ms with ``ast``, ``dis``
and ``tokenize``): ~25 ms of the ~60 ms ``tether run`` spent importing
(issue 15). Here only ``__init__`` is generated, compiled when the record is
first constructed (field assignment is what instances pay for at every
creation, and a process table makes thousands); ``__repr__``, ``__eq__``,
``__hash__`` and the frozen guards are shared functions reading the field
names. ``NamedTuple`` is typing's class syntax over collections.namedtuple,
without typing's compile of each (string) annotation. tests/unit/test_records.py
holds the runtime behaviour to dataclasses' for each option used.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import FrozenInstanceError, dataclass, field, fields, replace
    from typing import NamedTuple
else:
    import _thread
    from _collections import _tuplegetter  # the C field getter namedtuple uses

    class FrozenInstanceError(AttributeError):
        """Assigning to a field of a frozen record (as dataclasses' own)."""

    class _Missing:
        __slots__ = ()

        def __repr__(self) -> str:
            return "MISSING"

    MISSING = _Missing()

    class _HasFactory:
        # The default a factory field's parameter shows (inspect.signature),
        # as dataclasses' own sentinel.
        __slots__ = ()

        def __repr__(self) -> str:
            return "<factory>"

    _HAS_FACTORY = _HasFactory()

    class Field:
        """What :func:`fields` returns for one field (the attributes tether reads)."""

        __slots__ = ("default", "default_factory", "kw_only", "name", "repr")

        def __init__(self, default, default_factory, repr, kw_only):
            if default is not MISSING and default_factory is not MISSING:
                raise ValueError("cannot specify both default and default_factory")
            self.name = ""
            self.default = default
            self.default_factory = default_factory
            self.repr = repr
            self.kw_only = kw_only

        def __repr__(self) -> str:
            return f"Field(name={self.name!r})"

    def field(*, default=MISSING, default_factory=MISSING, repr=True, kw_only=MISSING):
        return Field(default, default_factory, repr, kw_only)

    def fields(class_or_instance):
        try:
            return tuple(class_or_instance.__record_fields__.values())
        except AttributeError:
            raise TypeError("must be called with a record type or instance") from None

    def replace(obj, /, **changes):
        for f in obj.__record_fields__.values():
            if f.name not in changes:
                changes[f.name] = getattr(obj, f.name)
        return obj.__class__(**changes)

    #: (id, thread) of the records whose repr is being built: a record
    #: reached again inside its own repr shows as "...", as dataclasses'.
    _in_repr = set()

    def _repr(self):
        key = (id(self), _thread.get_ident())
        if key in _in_repr:
            return "..."
        _in_repr.add(key)
        try:
            shown = ", ".join(
                f"{f.name}={getattr(self, f.name)!r}"
                for f in self.__record_fields__.values()
                if f.repr
            )
        finally:
            _in_repr.discard(key)
        return f"{self.__class__.__qualname__}({shown})"

    def _eq(self, other):
        # As dataclasses: the fields as tuples (an identical value is equal,
        # NaN included).
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = self.__record_names__
        return tuple([getattr(self, n) for n in names]) == tuple([getattr(other, n) for n in names])

    def _hash(self):
        return hash(tuple([getattr(self, n) for n in self.__record_names__]))

    # Records have no subclasses (see _process): as dataclasses does for the
    # decorated class itself, any attribute is refused, not only fields.
    def _frozen_setattr(self, name, value):
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def _frozen_delattr(self, name):
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _getstate(self):
        return [getattr(self, n) for n in self.__record_names__]

    def _setstate(self, state):
        for name, value in zip(self.__record_names__, state, strict=True):
            object.__setattr__(self, name, value)

    _UNSUPPORTED = ("ClassVar", "typing.ClassVar", "InitVar", "dataclasses.InitVar", "KW_ONLY")

    def init_source(record_fields, frozen, post_init):
        """The generated ``__init__``'s source (positional fields, then
        keyword-only ones; defaults bound as globals of the function), its
        globals, and its defaults: (positional tuple, keyword-only dict)."""
        env = {"_HAS_FACTORY": _HAS_FACTORY, "_set": object.__setattr__}
        positional, keyword, body = [], [], []
        defaults, kwdefaults = [], {}
        for f in record_fields:
            if f.default is not MISSING:
                env[f"_d_{f.name}"] = f.default
                param = f"{f.name}=_d_{f.name}"
                value = f.name
                default = f.default
            elif f.default_factory is not MISSING:
                env[f"_f_{f.name}"] = f.default_factory
                param = f"{f.name}=_HAS_FACTORY"
                value = f"_f_{f.name}() if {f.name} is _HAS_FACTORY else {f.name}"
                default = _HAS_FACTORY
            else:
                param = f.name
                value = f.name
                default = MISSING
            (keyword if f.kw_only else positional).append(param)
            if default is not MISSING:
                if f.kw_only:
                    kwdefaults[f.name] = default
                else:
                    defaults.append(default)
            if frozen:
                body.append(f"_set(self, {f.name!r}, {value})")
            else:
                body.append(f"self.{f.name} = {value}")
        params = ["self", *positional, *(["*", *keyword] if keyword else [])]
        if post_init:
            body.append("self.__post_init__()")
        source = f"def __init__({', '.join(params)}):\n" + "".join(
            f" {line}\n" for line in body or ["pass"]
        )
        return source, env, (tuple(defaults), kwdefaults)

    def _init(cls, record_fields, frozen):
        source, env, (defaults, kwdefaults) = init_source(
            record_fields, frozen, hasattr(cls, "__post_init__")
        )
        # The same code, compiled ahead (tether._record_inits, made by
        # tools/gen_record_inits.py): a compile is ~0.15 ms, and a command
        # constructs some twenty records. A record whose source is not there
        # (changed since, or not tether's) is compiled here.
        code = _precompiled().get(source)
        if code is None:
            exec(compile(source, f"<record {cls.__qualname__}>", "exec"), env)
            init = env["__init__"]
        else:
            init = _function(code, env, "__init__", defaults or None)
            init.__kwdefaults__ = kwdefaults or None
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        # As dataclasses: the fields' annotations (strings here), for help().
        annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
        init.__annotations__ = {f.name: annotations[f.name] for f in record_fields}
        init.__annotations__["return"] = None
        return init

    _function = type(_repr)
    _codes = []

    def _precompiled():
        if not _codes:
            _codes.append(_load_codes())
        return _codes[0]

    def _load_codes():
        # Not where it would be compiled from source on every start (no .pyc
        # and none to be written: PYTHONDONTWRITEBYTECODE in a fresh
        # checkout): that costs what compiling the ~20 inits a command
        # constructs does. Where a .pyc can be written, the first start
        # writes it.
        import sys

        spec = globals().get("__spec__")
        if (
            sys.dont_write_bytecode
            and type(getattr(spec, "loader", None)).__name__ == "SourceFileLoader"
        ):
            cached = getattr(spec, "cached", None)
            if not cached:
                return {}
            import os

            name = f"_record_inits.{sys.implementation.cache_tag}.pyc"
            if not os.path.exists(os.path.join(os.path.dirname(cached), name)):
                return {}
        try:
            from tether._record_inits import CODES
        except ImportError:  # a copy of tether without it
            return {}
        return CODES

    def source_of(cls):
        """``init_source`` of a record class (tools/gen_record_inits.py)."""
        record_fields = cls.__record_fields__.values()
        ordered = [f for f in record_fields if not f.kw_only]
        ordered += [f for f in record_fields if f.kw_only]
        frozen = cls.__dict__.get("__setattr__") is _frozen_setattr
        return init_source(ordered, frozen, hasattr(cls, "__post_init__"))[0]

    class _FirstInit:
        """Where ``__init__`` is until it is first looked up — by the record's
        first construction, or by ``inspect.signature`` or ``help()`` — which
        compiles the real one, puts it in the class and hands it on: a
        command constructs few of the records it imports."""

        __slots__ = ("frozen", "ordered")

        def __init__(self, ordered, frozen):
            self.ordered = ordered
            self.frozen = frozen

        def __get__(self, obj, owner):
            init = _init(owner, self.ordered, self.frozen)
            owner.__init__ = init
            return init if obj is None else init.__get__(obj, owner)

    def _process(cls, frozen, eq, kw_only, slots):
        for base in cls.__mro__[1:]:
            if "__record_fields__" in base.__dict__:
                raise TypeError(f"{cls.__name__}: records do not inherit from records here")
        # The class's own annotations, as dataclasses reads them (not
        # inspect.get_annotations: importing inspect is what this avoids).
        annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
        record_fields = {}
        seen_default = False
        for name, annotation in annotations.items():
            if isinstance(annotation, str) and annotation.startswith(_UNSUPPORTED):
                raise TypeError(f"{cls.__name__}.{name}: {annotation} is not supported here")
            value = cls.__dict__.get(name, MISSING)
            f = value if isinstance(value, Field) else Field(value, MISSING, True, MISSING)
            f.name = name
            if f.kw_only is MISSING:
                f.kw_only = kw_only
            if f.default is not MISSING and f.default.__class__.__hash__ is None:
                raise ValueError(
                    f"mutable default {type(f.default)} for field {name} is not allowed"
                )
            has_default = f.default is not MISSING or f.default_factory is not MISSING
            if not f.kw_only:
                if seen_default and not has_default:
                    raise TypeError(f"non-default argument {name!r} follows default argument")
                seen_default = seen_default or has_default
            record_fields[name] = f
            # As dataclasses: a plain default stays a class attribute (not
            # with slots); a field() or a factory leaves none.
            if isinstance(value, Field):
                if f.default is MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, f.default)
        ordered = [f for f in record_fields.values() if not f.kw_only]
        ordered += [f for f in record_fields.values() if f.kw_only]
        names = tuple(record_fields)
        methods = {
            "__record_fields__": record_fields,
            "__record_names__": names,
            "__match_args__": tuple(f.name for f in ordered if not f.kw_only),
            "__init__": _FirstInit(ordered, frozen),
        }
        if "__repr__" not in cls.__dict__:
            methods["__repr__"] = _repr
        if eq:
            if "__eq__" not in cls.__dict__:
                methods["__eq__"] = _eq
            if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:
                methods["__hash__"] = _hash if frozen else None
        if frozen:
            methods["__setattr__"] = _frozen_setattr
            methods["__delattr__"] = _frozen_delattr
        if slots:
            namespace = {
                k: v for k, v in cls.__dict__.items()
                if k not in names and k not in ("__dict__", "__weakref__")
            }  # fmt: skip
            namespace.update(methods, __slots__=names)
            if frozen:
                namespace["__getstate__"] = _getstate
                namespace["__setstate__"] = _setstate
            qualname = cls.__qualname__
            cls = type(cls)(cls.__name__, cls.__bases__, namespace)
            cls.__qualname__ = qualname
        else:
            for key, value in methods.items():
                setattr(cls, key, value)
        return cls

    def dataclass(
        cls=None, /, *, frozen=False, eq=True, kw_only=False, slots=False, repr=True, order=False
    ):
        if not repr or order:
            raise TypeError("repr=False and order=True are not supported here")

        def wrap(cls):
            return _process(cls, frozen, eq, kw_only, slots)

        return wrap if cls is None else wrap(cls)

    #: What typing refuses to let a NamedTuple class body override.
    _NAMED_TUPLE_OWN = frozenset(
        {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
         "_make", "_replace", "_asdict", "_source"}
    )  # fmt: skip

    def _named_tuple(typename, field_names, defaults, module):
        # collections.namedtuple, as it builds the class (collections, with
        # itertools, keyword, operator and reprlib, is ~2 ms of a start).
        field_names = tuple(field_names)
        num_fields = len(field_names)
        arg_list = ", ".join(field_names) + ("," if num_fields == 1 else "")
        tuple_new = tuple.__new__
        namespace = {"_tuple_new": tuple_new, "__builtins__": {},
                     "__name__": f"namedtuple_{typename}"}  # fmt: skip
        __new__ = eval(f"lambda _cls, {arg_list}: _tuple_new(_cls, ({arg_list}))", namespace)
        __new__.__name__ = "__new__"
        __new__.__doc__ = f"Create new instance of {typename}({arg_list})"
        if defaults:
            __new__.__defaults__ = tuple(defaults)
        field_defaults = dict(zip(field_names[num_fields - len(defaults) :], defaults, strict=True))

        @classmethod
        def _make(cls, iterable):
            result = tuple_new(cls, iterable)
            if len(result) != num_fields:
                raise TypeError(f"Expected {num_fields} arguments, got {len(result)}")
            return result

        def _replace(self, /, **kwds):
            result = self._make(map(kwds.pop, field_names, self))
            if kwds:
                raise ValueError(f"Got unexpected field names: {list(kwds)!r}")
            return result

        repr_fmt = "(" + ", ".join(f"{name}=%r" for name in field_names) + ")"

        def __repr__(self):
            return self.__class__.__name__ + repr_fmt % self

        def _asdict(self):
            return dict(zip(self._fields, self, strict=True))

        def __getnewargs__(self):
            return tuple(self)

        methods = (__new__, _make.__func__, _replace, __repr__, _asdict, __getnewargs__)
        for method in methods:
            method.__qualname__ = f"{typename}.{method.__name__}"
        class_namespace = {
            "__doc__": f"{typename}({arg_list})", "__slots__": (), "_fields": field_names,
            "_field_defaults": field_defaults, "__new__": __new__, "_make": _make,
            "_replace": _replace, "__repr__": __repr__, "_asdict": _asdict,
            "__getnewargs__": __getnewargs__, "__match_args__": field_names,
        }  # fmt: skip
        for index, name in enumerate(field_names):
            class_namespace[name] = _tuplegetter(index, f"Alias for field number {index}")
        result = type(typename, (tuple,), class_namespace)
        result.__module__ = module
        return result

    class _NamedTupleMeta(type):
        # typing.NamedTuple's class syntax, without its checks of each
        # annotation (under `from __future__ import annotations` each is a
        # string typing compiles into a ForwardRef: ~1 ms a class).
        def __new__(mcs, name, bases, namespace):
            annotations = namespace.get("__annotations__", {})
            names = list(annotations)
            defaults = [namespace[n] for n in names if n in namespace]
            if names[len(names) - len(defaults) :] != [n for n in names if n in namespace]:
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = _named_tuple(name, names, defaults, namespace["__module__"])
            for key, value in namespace.items():
                if key in _NAMED_TUPLE_OWN:
                    raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
                if key in names or key in ("__module__", "__qualname__", "__annotations__"):
                    continue
                setattr(cls, key, value)
            cls.__qualname__ = namespace.get("__qualname__", name)
            cls.__annotations__ = annotations
            return cls

    def _named_tuple_entries(bases):
        return (_NamedTupleBase,)

    # As typing does: the base itself is made without the metaclass's __new__.
    _NamedTupleBase = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})

    def NamedTuple():
        raise TypeError("NamedTuple is used as a base class here: class X(NamedTuple): ...")

    NamedTuple.__mro_entries__ = _named_tuple_entries

__all__ = ["FrozenInstanceError", "NamedTuple", "dataclass", "field", "fields", "replace"]
