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


# -- the names' checks without re (a remote run's start), held to the regexes --

#: Characters near the classes' edges: a newline, Unicode digits and letters
#: (a Kelvin sign, a dotless i) that case-insensitive or Unicode rules might take.
_EDGES = ["\n", "\u0660", "\u00e9", "\u212a", "\uff10", "\u0131", "\U0001d7ce"]
_NAME_ALPHABET = st.sampled_from([*"aZ09_.%-:@[]fF ", *_EDGES])
_names = st.text(_NAME_ALPHABET, max_size=6) | st.text(max_size=6)


@given(_names)
def test_host_user_and_ipv6_checks_are_the_regexes(text: str) -> None:
    import re

    from tether.remote import hostlist

    host = re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._%-]*", text) is not None
    user = re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", text) is not None
    ipv6 = re.fullmatch(r"[0-9A-Fa-f:.%]+", text) is not None
    assert (hostlist._is_host(text), hostlist._is_user(text), hostlist._is_ipv6(text)) == (
        host,
        user,
        ipv6,
    )


# \u00b2 (a superscript two) is a digit to str.isdigit, not to \d.
_RANGE_ALPHABET = st.sampled_from([*"0129-x ", "\u0660", "\u0669", "\uff11", "\u00b2"])


@given(st.text(_RANGE_ALPHABET, max_size=7) | st.text(max_size=5))
def test_a_range_is_read_as_the_regex_read_it(text: str) -> None:
    import re

    from tether.remote import hostlist

    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    assert hostlist._range(text) == (None if m is None else (m.group(1), m.group(2)))


def test_str_isdecimal_is_the_regex_digit_class_for_every_character() -> None:
    """_range reads ``\\d`` (a str pattern's: Unicode category Nd) as str.isdecimal."""
    import re

    digit = re.compile(r"\d")
    for code in range(0x110000):
        c = chr(code)
        assert (digit.fullmatch(c) is not None) == c.isdecimal(), hex(code)


@pytest.mark.parametrize("port", ["\u00b2", "\u0663", "\uff12\uff12", "2\u00b2", "+22", " 22", ""])
def test_a_port_is_ascii_digits(port: str) -> None:
    """A superscript digit passed str.isdigit and then raised int()'s
    ValueError (a traceback, not a usage error); an Arabic-Indic three was
    read as port 3."""
    with pytest.raises(HostListError, match="bad port"):
        parse_target(f"h:{port}")
