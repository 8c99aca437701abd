"""pdsh/clush host lists and ``[USER@]HOST[:PORT]`` targets (no sshd needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.remote.hostlist import (
    HostListError,
    Target,
    expand,
    parse_target,
    resolve_targets,
)


def test_ranges_padding_and_lists() -> None:
    assert expand("node[01-03,10],gpu[1-2]") == [
        "node01",
        "node02",
        "node03",
        "node10",
        "gpu1",
        "gpu2",
    ]
    assert expand("n[8-11]") == ["n8", "n9", "n10", "n11"]
    assert expand("n[098-101]") == ["n098", "n099", "n100", "n101"]
    assert expand("r[1-2]-n[1-2]") == ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]
    assert expand("a,b,a") == ["a", "b"]
    assert expand("plain") == ["plain"]


def test_exclusion_and_targets() -> None:
    targets = resolve_targets(["root@extra:2222"], ["node[1-4]"], ["node[2-3]"])
    assert [t.label for t in targets] == ["root@extra:2222", "node1", "node4"]
    assert targets[0] == Target("extra", "root", 2222)
    assert resolve_targets([], ["n[1-2]"], ["n[1-2]"]) == []


@pytest.mark.parametrize(
    "bad",
    ["n[1-", "n]1[", "n[2-1]", "n[a-b]", "n[[1]]", "a,,b", "", "n[1-99999999]", "-oProxyCommand=x"],
)
def test_bad_lists_are_usage_errors(bad: str) -> None:
    with pytest.raises(HostListError):
        for name in expand(bad):
            parse_target(name)


@pytest.mark.parametrize(
    "bad", ["-p22", "host:0", "host:99999", "host:x", "us er@h", "h;rm", "h h", "[zz]:2", "a/b"]
)
def test_bad_targets(bad: str) -> None:
    with pytest.raises(HostListError):
        parse_target(bad)


def test_ipv6_target() -> None:
    t = parse_target("me@[::1]:2200")
    assert (t.host, t.user, t.port, t.label) == ("::1", "me", 2200, "me@[::1]:2200")


@st.composite
def host_lists(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A host list and the names it must expand to (built independently)."""
    words, names = [], []
    for _ in range(draw(st.integers(1, 4))):
        prefix = draw(st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True))
        if draw(st.booleans()):
            words.append(prefix)
            names.append(prefix)
            continue
        parts, values = [], []
        for _ in range(draw(st.integers(1, 3))):
            lo = draw(st.integers(0, 120))
            hi = draw(st.integers(lo, lo + 15))
            width = draw(st.integers(1, 4))
            lo_text = str(lo).zfill(width)
            parts.append(f"{lo_text}-{hi}" if hi != lo or draw(st.booleans()) else lo_text)
            pad = width if lo_text.startswith("0") and len(lo_text) > 1 else 0
            values.extend(str(i).zfill(pad) for i in range(lo, hi + 1))
        suffix = draw(st.sampled_from(["", "-ib", "x"]))
        words.append(f"{prefix}[{','.join(parts)}]{suffix}")
        names.extend(prefix + v + suffix for v in values)
    expected = list(dict.fromkeys(names))
    return ",".join(words), expected


@given(host_lists())
def test_expansion_matches_a_direct_construction(case: tuple[str, list[str]]) -> None:
    text, expected = case
    assert expand(text) == expected
    for name in expected:
        assert parse_target(name).host == name


@given(host_lists(), st.data())
def test_exclusion_removes_exactly_the_excluded(
    case: tuple[str, list[str]], data: st.DataObject
) -> None:
    text, names = case
    drop = data.draw(st.lists(st.sampled_from(names), unique=True))
    kept = [t.host for t in resolve_targets([], [text], [",".join(drop)] if drop else [])]
    assert kept == [n for n in names if n not in drop]
