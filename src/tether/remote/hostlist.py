"""pdsh/clush host lists: ``node[01-64,70],gpu[1-4]``, ``-x`` exclusion, targets.

A host list is a comma-separated list of words; a word may hold bracketed
ranges (``node[01-04]``), several of them (``rack[1-2]-node[1-3]``, a
cartesian product), and lists inside the brackets (``[1-3,7,10-11]``). A
range keeps the zero padding of its first bound (``[01-10]`` -> ``01`` ..
``10``), as pdsh does. Expansion keeps the order written and drops repeats.

Each expanded name is a *target*: ``[USER@]HOST[:PORT]``. Host names are
restricted to what DNS, /etc/hosts and ssh_config aliases use, and may not
start with ``-``: they become ssh arguments and must never be read as options.

:func:`compress` is the inverse of :func:`expand` (``node01,node02,node03`` ->
``node[01-03]``), for headers that name several hosts at once (``-b``).

A host list is sized before anything is built (:func:`count`): every
bracket's values are counted from its bounds, a word is the product of its
brackets, a list the sum of its words (repeats included). A list that would
exceed :data:`MAX_HOSTS` names is refused with its size, so a 16 KB argument
(``n[1-65535]-[1-65535]...``) is an error, never gigabytes of names.
"""

from __future__ import annotations

from collections.abc import Iterable

from tether._records import dataclass
from tether.errors import UsageError

#: Most names a host list (and all of --host/-w/-x together) may expand to,
#: counted before expansion, repeats included (a typo like [1-99999999]).
MAX_HOSTS = 65536
#: Digits a range bound may have (ints longer than this are no host number).
_MAX_DIGITS = 18
#: Sizes are counted up to this (an error names larger ones "over 10**18").
_HUGE = 10**18 + 1
#: Longest name a list may expand to ([USER@]HOST[:PORT]; DNS names stop at
#: 253): with MAX_HOSTS, what bounds an expansion's memory (32 MiB of text).
MAX_NAME = 512

# The names' alphabets, checked by hand on every run (re, with enum behind
# it, was ~2 ms of a remote run's start before its ssh): what each accepts is
# exactly what the regular expression in its docstring accepts (tested).
_ALNUM_ = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_HOST_CHARS = _ALNUM_ | frozenset(".%-")
_USER_CHARS = _ALNUM_ | frozenset(".-")
_IPV6_CHARS = frozenset("0123456789ABCDEFabcdef:.%")


def _is_host(text: str) -> bool:
    """``re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._%-]*", text)``"""
    return text[:1] in _ALNUM_ and _HOST_CHARS.issuperset(text)


def _is_user(text: str) -> bool:
    """``re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", text)``"""
    return text[:1] in _ALNUM_ and _USER_CHARS.issuperset(text)


def _is_ipv6(text: str) -> bool:
    """``re.fullmatch(r"[0-9A-Fa-f:.%]+", text)``"""
    return bool(text) and _IPV6_CHARS.issuperset(text)


def _range(text: str) -> tuple[str, str | None] | None:
    """``re.fullmatch(r"(\\d+)(?:-(\\d+))?", text)``'s two groups, or None.
    ``\\d`` is any Unicode decimal digit (category Nd), as str.isdecimal."""
    lo, sep, hi = text.partition("-")
    if not lo.isdecimal() or (sep and not hi.isdecimal()):
        return None
    return lo, hi if sep else None


class HostListError(UsageError):
    """A host list or target does not parse."""


@dataclass(frozen=True)
class Target:
    """One remote host as ssh will be asked to reach it."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def label(self) -> str:
        """How output and reports name this target (as the user wrote it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = host if self.port is None else f"{host}:{self.port}"
        return text if self.user is None else f"{self.user}@{text}"

    def __str__(self) -> str:
        return self.label


def parse_target(text: str) -> Target:
    """``[USER@]HOST[:PORT]`` (``[v6addr]:PORT`` for IPv6) -> a Target."""
    user: str | None = None
    rest = text
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        if not _is_user(user):
            raise HostListError(f"bad user name in {text!r}")
    port_text: str | None = None
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or not _is_ipv6(host) or ":" not in host:
            raise HostListError(f"bad IPv6 address in {text!r}")
        if tail:
            if not tail.startswith(":"):
                raise HostListError(f"bad host {text!r}")
            port_text = tail[1:]
    else:
        host, sep, port_part = rest.partition(":")
        if sep:
            port_text = port_part
        if not _is_host(host):
            raise HostListError(
                f"bad host name {host!r} in {text!r}" if host else f"empty host name in {text!r}"
            )
    port: int | None = None
    if port_text is not None:
        # ASCII digits only: str.isdigit takes a superscript two, which int()
        # refuses (a traceback), and int() reads other scripts' digits.
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise HostListError(f"bad port in {text!r}")
        port = int(port_text)
    return Target(host, user, port)


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            if depth:
                raise HostListError(f"nested '[' in host list {text!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostListError(f"unbalanced ']' in host list {text!r}")
            depth = 0
        if ch == "," and not depth:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise HostListError(f"unbalanced '[' in host list {text!r}")
    out.append("".join(cur))
    return out


def _quoted(text: str) -> str:
    """``text`` for a one-line error: repr, cut at 80 characters with its length."""
    if len(text) <= 80:
        return repr(text)
    return f"{text[:80]!r}... ({len(text)} characters)"


def _parts(spec: str, whole: str) -> list[tuple[str, str | None]]:
    """A bracket's ``lo[-hi]`` parts, checked (bounds, order, digits); nothing expanded."""
    parts: list[tuple[str, str | None]] = []
    for part in spec.split(","):
        bounds = _range(part.strip())
        if bounds is None:
            raise HostListError(
                f"bad range {_quoted('[' + spec + ']')} in host list {_quoted(whole)}"
            )
        lo_text, hi_text = bounds
        if max(len(lo_text), len(hi_text or "")) > _MAX_DIGITS:
            raise HostListError(
                f"range bound longer than {_MAX_DIGITS} digits in host list {_quoted(whole)}"
            )
        if hi_text is not None:
            lo, hi = int(lo_text), int(hi_text)
            if hi < lo:
                raise HostListError(
                    f"range {part.strip()} runs backwards in host list {_quoted(whole)}"
                )
            if hi - lo >= MAX_HOSTS:
                raise HostListError(
                    f"range {part.strip()} is too large ({hi - lo + 1} hosts, more than "
                    f"{MAX_HOSTS})"
                )
        parts.append((lo_text, hi_text))
    return parts


def _brackets(word: str, whole: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """A word as (literal prefix, bracket parts) pairs; the tail is a last pair with no parts."""
    out: list[tuple[str, list[tuple[str, str | None]]]] = []
    pos = 0
    while True:
        start = word.find("[", pos)
        if start < 0:
            out.append((word[pos:], []))
            return out
        end = word.index("]", start)  # balanced: checked by _split_top
        out.append((word[pos:start], _parts(word[start + 1 : end], whole)))
        pos = end + 1


def _size(parts: list[tuple[str, str | None]]) -> int:
    return sum(1 if hi is None else int(hi) - int(lo) + 1 for lo, hi in parts)


def _words(text: str) -> list[list[tuple[str, list[tuple[str, str | None]]]]]:
    """``text``'s words, parsed and sized: HostListError if they would expand
    to more than MAX_HOSTS names (computed from the bounds, before building any)."""
    words = []
    total = 0
    for raw in _split_top(text):
        word = raw.strip()
        if not word:
            raise HostListError(f"empty host in host list {_quoted(text)}")
        parsed = _brackets(word, text)
        size, length = 1, 0
        for prefix, parts in parsed:
            length += len(prefix) + max(
                (max(len(lo), len(hi or "")) for lo, hi in parts), default=0
            )
            if parts:
                # Capped as it grows: thousands of brackets stay small ints.
                size = min(size * _size(parts), _HUGE)
        if length > MAX_NAME:
            raise HostListError(
                f"host list {_quoted(text)} has a name of up to {length} characters "
                f"(more than {MAX_NAME})"
            )
        total = min(total + size, _HUGE)
        words.append(parsed)
    if total > MAX_HOSTS:
        many = f"{total}" if total < _HUGE else f"over {_HUGE - 1}"
        raise HostListError(
            f"host list {_quoted(text)} expands to {many} hosts, more than {MAX_HOSTS} "
            f"(counted before expansion)"
        )
    return words


def count(text: str) -> int:
    """How many names ``text`` expands to, repeats included, without expanding it.

    Raises:
        HostListError: as :func:`expand`, including more than MAX_HOSTS names.
    """
    total = 0
    for parsed in _words(text):
        size = 1
        for _prefix, parts in parsed:
            if parts:
                size *= _size(parts)
        total += size
    return total


def _values(parts: list[tuple[str, str | None]]) -> list[str]:
    values: list[str] = []
    for lo_text, hi_text in parts:
        if hi_text is None:
            values.append(lo_text)
            continue
        width = len(lo_text) if lo_text.startswith("0") and len(lo_text) > 1 else 0
        values.extend(str(i).zfill(width) for i in range(int(lo_text), int(hi_text) + 1))
    return values


def expand(text: str) -> list[str]:
    """Expand a pdsh/clush host list to names, in order, without repeats.

    The list is sized first (:func:`count`): nothing is built for one that
    would exceed MAX_HOSTS names.

    Raises:
        HostListError: unbalanced brackets, a bad range, an empty word, too many hosts.
    """
    out: dict[str, None] = {}
    for parsed in _words(text):
        names = [""]
        for prefix, parts in parsed:
            if parts:
                names = [n + prefix + v for n in names for v in _values(parts)]
            else:
                names = [n + prefix for n in names]
        out.update(dict.fromkeys(names))
    return list(out)


def resolve_targets(
    hosts: Iterable[str], lists: Iterable[str], excludes: Iterable[str]
) -> list[Target]:
    """Targets from ``--host`` values, ``-w`` lists, minus ``-x`` lists; validated.

    Exclusion matches a name as written (``user@node01`` is excluded by
    ``user@node01`` or by ``node01``).
    """
    hosts, lists, excludes = list(hosts), list(lists), list(excludes)
    # All of them together are bounded as one list is, before any is expanded.
    total = len(hosts) + sum(count(spec) for spec in [*lists, *excludes])
    if total > MAX_HOSTS:
        raise HostListError(f"--host, -w and -x together name {total} hosts, more than {MAX_HOSTS}")
    names: dict[str, None] = {}
    for h in hosts:
        names[h] = None
    for spec in lists:
        for name in expand(spec):
            names[name] = None
    dropped: set[str] = set()
    for spec in excludes:
        dropped.update(expand(spec))
    targets: list[Target] = []
    for name in names:
        target = parse_target(name)
        if name in dropped or target.host in dropped:
            continue
        targets.append(target)
    return targets


def compress(names: Iterable[str]) -> str:
    """The shortest-form host list of ``names``: ``expand(compress(names))`` holds them all.

    Names that differ only in their last number fold into one bracket
    (``node[01-03,07]``), keeping the zero padding exactly as :func:`expand`
    reads it; the result is sorted (``n9`` before ``n10``) and repeats are
    dropped. A name holding brackets or commas (an IPv6 label) is kept
    as it is.
    """
    import re  # only for -b's output

    last_number = re.compile(r"^(.*?)(\d+)(\D*)$")
    groups: dict[tuple[str, str], list[str]] = {}
    loose: set[str] = set()
    for name in dict.fromkeys(names):
        m = last_number.match(name)
        if m is None or any(c in name for c in "[],"):
            loose.add(name)
        else:
            groups.setdefault((m.group(1), m.group(3)), []).append(m.group(2))
    words: list[tuple[tuple[str, str, int], str]] = [((n, "", -1), n) for n in loose]
    for (prefix, suffix), numbers in groups.items():
        numbers.sort(key=lambda t: (int(t), len(t)))
        if len(numbers) == 1:
            words.append(((prefix, suffix, int(numbers[0])), prefix + numbers[0] + suffix))
            continue
        words.append(((prefix, suffix, int(numbers[0])), f"{prefix}[{_fold(numbers)}]{suffix}"))
    return ",".join(word for _key, word in sorted(words))


def _fold(numbers: list[str]) -> str:
    """``["01", "02", "03", "07"]`` (sorted) -> ``01-03,07``: runs that expand back exactly."""
    parts: list[str] = []
    i = 0
    while i < len(numbers):
        first = numbers[i]
        # As _expand_ranges reads a range: its first bound's padding, if any.
        width = len(first) if first.startswith("0") and len(first) > 1 else 0
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == str(int(numbers[j]) + 1).zfill(width):
            j += 1
        parts.append(first if j == i else f"{first}-{numbers[j]}")
        i = j + 1
    return ",".join(parts)
