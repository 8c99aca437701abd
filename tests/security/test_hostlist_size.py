"""Issue 17, item 9: host lists are sized before they are expanded.

A 16 KB ``-w`` argument can describe billions of names
(``n[1-65535]-[1-65535]``). The list is counted from its bounds first, and one
over MAX_HOSTS (or with names over MAX_NAME) is a one-line error naming its
size, before a single name is built.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import SRC
from tether.remote import hostlist
from tether.remote.hostlist import MAX_HOSTS, MAX_NAME, HostListError, count, expand

#: Arguments of at most 16 KB that expand to far more than MAX_HOSTS names.
HUGE = {
    "product": "n[1-65535]-[1-65535]",
    "many ranges in one bracket": "n[" + ",".join(["1-65535"] * 2000) + "]",
    "many words": ",".join(["n[1-65535]"] * 1400),
    "many brackets": "n" + "[1-9]" * 3000,
}


@pytest.mark.parametrize("text", list(HUGE.values()), ids=list(HUGE))
def test_a_huge_list_is_refused_with_its_size_before_expansion(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(text) <= 16 << 10
    # Nothing may be built: a value of any bracket is never produced.
    monkeypatch.setattr(hostlist, "_values", lambda parts: pytest.fail("expanded"))
    with pytest.raises(HostListError) as caught:
        expand(text)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    assert f"more than {MAX_HOSTS}" in message or f"more than {MAX_NAME}" in message
    with pytest.raises(HostListError):
        count(text)


def test_the_error_names_the_exact_size_when_it_is_countable() -> None:
    with pytest.raises(HostListError, match=r"expands to 4294836225 hosts"):
        expand("n[1-65535]-[1-65535]")
    with pytest.raises(HostListError, match=r"over 1000000000000000000 hosts"):
        expand("n" + "[1-9]" * 40)


def test_names_longer_than_the_cap_are_refused_before_expansion() -> None:
    with pytest.raises(HostListError, match=f"more than {MAX_NAME}"):
        expand("x" * MAX_NAME + "[1-2]")
    # Padding counts: [0001-2] makes four-digit names.
    assert count("x" * (MAX_NAME - 4) + "[0001-2]") == 2
    with pytest.raises(HostListError, match=f"more than {MAX_NAME}"):
        expand("x" * (MAX_NAME - 3) + "[0001-2]")


def test_several_lists_are_bounded_together() -> None:
    half = f"a[1-{MAX_HOSTS // 2 + 1}]"
    assert count(half) == MAX_HOSTS // 2 + 1
    with pytest.raises(HostListError, match=f"together name {MAX_HOSTS + 2} hosts"):
        hostlist.resolve_targets([], [half], [half.replace("a", "b")])


@st.composite
def ranges(draw: st.DrawFn) -> tuple[str, int]:
    """A host list (possibly huge) and the number of names it writes, counted directly."""
    words, total = [], 0
    for _ in range(draw(st.integers(1, 4))):
        word, size = draw(st.from_regex(r"[a-z]{1,4}", fullmatch=True)), 1
        for _ in range(draw(st.integers(0, 4))):
            parts, n = [], 0
            for _ in range(draw(st.integers(1, 3))):
                lo = draw(st.integers(0, 10**6))
                hi = lo + draw(st.integers(0, MAX_HOSTS - 1))
                parts.append(f"{lo}-{hi}")
                n += hi - lo + 1
            word += f"[{','.join(parts)}]"
            size *= n
        words.append(word)
        total += size
    return ",".join(words), total


@settings(max_examples=200, deadline=None)
@given(ranges())
def test_count_is_the_product_and_sum_of_the_bounds(case: tuple[str, int]) -> None:
    text, total = case
    if total > MAX_HOSTS:
        with pytest.raises(HostListError, match=f"more than {MAX_HOSTS}"):
            count(text)
    else:
        assert count(text) == total
        # Repeats are dropped by expand, never added.
        assert len(expand(text)) <= total


def test_a_16k_argument_is_a_one_line_error_under_a_memory_limit() -> None:
    """The CLI, under RLIMIT_AS 1 GiB (the old expansion needed ~4 GiB of names)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    text = "n[1-65535]-[1-65535]," + ",".join(["m[1-65535]"] * 1400)
    assert len(text) <= 16 << 10
    done = subprocess.run(
        [sys.executable, "-m", "tether.cli", "run", "-w", text, "--", "true"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        preexec_fn=limit,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "hosts, more than 65536 (counted before expansion)" in lines[0]
    assert done.returncode == 125
