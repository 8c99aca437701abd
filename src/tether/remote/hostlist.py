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
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tether.errors import UsageError

#: Longest list a single expression may expand to (a typo like [1-99999999]).
MAX_HOSTS = 65536

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._%-]*")
_IPV6 = re.compile(r"[0-9A-Fa-f:.%]+")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


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
        if not _USER.fullmatch(user):
            raise HostListError(f"bad user name in {text!r}")
    port_text: str | None = None
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or not _IPV6.fullmatch(host) or ":" not in host:
            raise HostListError(f"bad IPv6 address in {text!r}")
        if tail:
            if not tail.startswith(":"):
                raise HostListError(f"bad host {text!r}")
            port_text = tail[1:]
    else:
        host, sep, port_part = rest.partition(":")
        if sep:
            port_text = port_part
        if not _HOST.fullmatch(host):
            raise HostListError(
                f"bad host name {host!r} in {text!r}" if host else f"empty host name in {text!r}"
            )
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
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


def _expand_ranges(spec: str, whole: str) -> list[str]:
    values: list[str] = []
    for part in spec.split(","):
        m = _RANGE.fullmatch(part.strip())
        if m is None:
            raise HostListError(f"bad range [{spec}] in host list {whole!r}")
        lo_text, hi_text = m.group(1), m.group(2)
        if hi_text is None:
            values.append(lo_text)
            continue
        lo, hi = int(lo_text), int(hi_text)
        if hi < lo:
            raise HostListError(f"range {part} runs backwards in host list {whole!r}")
        if hi - lo >= MAX_HOSTS:
            raise HostListError(f"range {part} is too large (more than {MAX_HOSTS} hosts)")
        width = len(lo_text) if lo_text.startswith("0") and len(lo_text) > 1 else 0
        values.extend(str(i).zfill(width) for i in range(lo, hi + 1))
    return values


def _expand_word(word: str, whole: str) -> list[str]:
    names = [""]
    pos = 0
    while pos < len(word):
        start = word.find("[", pos)
        if start < 0:
            names = [n + word[pos:] for n in names]
            break
        end = word.index("]", start)  # balanced: checked by _split_top
        prefix = word[pos:start]
        choices = _expand_ranges(word[start + 1 : end], whole)
        names = [n + prefix + c for n in names for c in choices]
        if len(names) > MAX_HOSTS:
            raise HostListError(f"host list {whole!r} expands to more than {MAX_HOSTS} hosts")
        pos = end + 1
    return names


def expand(text: str) -> list[str]:
    """Expand a pdsh/clush host list to names, in order, without repeats.

    Raises:
        HostListError: unbalanced brackets, a bad range, an empty word.
    """
    out: dict[str, None] = {}
    for raw in _split_top(text):
        word = raw.strip()
        if not word:
            raise HostListError(f"empty host in host list {text!r}")
        for name in _expand_word(word, text):
            out[name] = None
            if len(out) > MAX_HOSTS:
                raise HostListError(f"host list {text!r} expands to more than {MAX_HOSTS} hosts")
    return list(out)


def resolve_targets(
    hosts: Iterable[str], lists: Iterable[str], excludes: Iterable[str]
) -> list[Target]:
    """Targets from ``--host`` values, ``-w`` lists, minus ``-x`` lists; validated.

    Exclusion matches a name as written (``user@node01`` is excluded by
    ``user@node01`` or by ``node01``).
    """
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
    groups: dict[tuple[str, str], list[str]] = {}
    loose: set[str] = set()
    for name in dict.fromkeys(names):
        m = _LAST_NUMBER.match(name)
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
