"""``@once``: functools.cache for a function of no arguments.

functools (with collections, itertools, keyword, operator, reprlib and
types) is ~2 ms of every start of `tether run` (issue 15), and the run path
caches only such functions: what the platform offers, found on first use.
As functools.cache, an exception is not cached, and two threads calling
first may both compute the value.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: typing stays unimported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol, TypeVar

    T = TypeVar("T")
    T_co = TypeVar("T_co", covariant=True)

    class Once(Protocol[T_co]):
        __wrapped__: Callable[[], Any]

        def __call__(self) -> T_co: ...
        def cache_clear(self) -> None: ...
        def cached(self) -> bool: ...


class _Once:
    __slots__ = ("__wrapped__", "_done", "_value")

    def __init__(self, f: Callable[[], Any]) -> None:
        self.__wrapped__ = f
        self._done = False
        self._value: Any = None

    def __call__(self) -> Any:
        if not self._done:
            self._value = self.__wrapped__()
            self._done = True
        return self._value

    def cache_clear(self) -> None:
        self._done = False
        self._value = None

    def cached(self) -> bool:
        """Whether the value has been computed (and not cleared since)."""
        return self._done

    def __repr__(self) -> str:
        return f"<once {self.__wrapped__.__qualname__}>"


def once(f: Callable[[], T]) -> Once[T]:
    """Call ``f`` on the first call only; return its value from then on."""
    return _Once(f)
