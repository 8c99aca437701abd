"""tether._signals.Signal stands in for signal.Signals: same numbers, names and errors."""

from __future__ import annotations

import pickle
import signal

import pytest

from tether import _signals
from tether._signals import Signal


@pytest.mark.parametrize("number", range(-1, signal.NSIG + 2))
def test_every_number_is_named_as_the_enum_names_it(number: int) -> None:
    try:
        expected: str | None = signal.Signals(number).name
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            Signal(number)
        assert _signals.name_of(number) is None
    else:
        sig = Signal(number)
        assert (sig.name, int(sig), sig.value, _signals.name_of(number)) == (
            expected, number, number, expected,
        )  # fmt: skip


@pytest.mark.parametrize("name", sorted(signal.Signals.__members__))
def test_every_name_and_alias_is_found(name: str) -> None:
    sig = Signal.named(name)
    assert sig == signal.Signals[name] and sig.name == signal.Signals[name].name


def test_a_signal_mixes_with_the_callers_signal_module() -> None:
    term = Signal(signal.SIGTERM)
    assert term == signal.SIGTERM and hash(term) == hash(signal.SIGTERM)
    assert term in {signal.SIGTERM} and signal.SIGTERM in {term}
    assert str(term) == f"{term}" == "15" and repr(term) == "<Signal.SIGTERM: 15>"
    assert pickle.loads(pickle.dumps(term)).name == "SIGTERM"
    with pytest.raises(KeyError):
        Signal.named("SIGNOPE")
    with pytest.raises(ValueError):
        Signal(True)


def test_the_constants_and_functions_are_the_kernels() -> None:
    for name in ("SIGKILL", "SIGTERM", "SIGCHLD", "SIGHUP", "SIG_DFL", "SIG_IGN", "SIG_BLOCK"):
        assert getattr(_signals, name) == getattr(signal, name)
    assert _signals.valid_signals() == signal.valid_signals()
    assert _signals.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGTERM)


def test_a_delivery_is_the_one_instance_through_copy_and_pickle() -> None:
    """Delivery is compared with `is` (three instances, not an Enum: enum is
    ~2 ms of a start); a copy or an unpickled one must still be that one."""
    import copy

    from tether.process import Delivery

    for d in (Delivery.DELIVERED, Delivery.GONE, Delivery.DENIED):
        assert copy.copy(d) is d and copy.deepcopy(d) is d
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            assert pickle.loads(pickle.dumps(d, protocol)) is d


@pytest.mark.parametrize("value", ["15", " 15", "15\n", "SIGTERM", b"15", bytearray(b"9"), "٩"])
def test_a_string_or_bytes_is_no_signal_as_the_enum_says(value: object) -> None:
    """int() reads "15", " 15" and b"15" (and the Arabic-Indic digit nine);
    Signals does not, and nor may Signal."""
    with pytest.raises(ValueError):
        signal.Signals(value)
    with pytest.raises(ValueError):
        Signal(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [15.0, 9.5, True, False])
def test_floats_and_bools_are_no_signals(value: object) -> None:
    """Integers only, stricter than the enum (Signals(15.0) and Signals(True)
    are SIGTERM and SIGHUP, by equality)."""
    with pytest.raises(ValueError):
        Signal(value)  # type: ignore[arg-type]


def test_an_int_subclass_is_a_signal() -> None:
    """signal.Signals members (an IntEnum) and Signal itself are integers."""
    assert Signal(signal.SIGTERM).name == "SIGTERM"
    assert Signal(Signal(9)).name == "SIGKILL"
