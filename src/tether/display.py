"""What the commands show: for people at a terminal, colour, tree connectors,
a progress line and tables; piped, the plain ``tether ps`` tree.

Plain ANSI escapes, no rich: rich costs ~30 ms of start-up, and this is drawn
only when the stream is a terminal. Piped output keeps the plain columns that
scripts parse. Colour follows https://no-color.org: any non-empty
``NO_COLOR`` turns it off, as does ``TERM=dumb``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence

from tether.report import MemberRecord, Report
from tether.sanitize import oneline
from tether.sanitize import visible as v

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

    from tether.terminate import Progress

RESET = "\x1b[0m"
BOLD = "1"
DIM = "2"
RED = "31"
GREEN = "32"
YELLOW = "33"
BLUE = "34"
MAGENTA = "35"
CYAN = "36"
CLEAR_TO_EOL = "\x1b[K"
_SGR = re.compile(r"\x1b\[[0-9;]*m")
#: Columns COMMAND keeps in the report table before FOUND BY gives way.
MIN_COMMAND = 16
#: Below this width the report table and the progress line take their short forms.
NARROW = 80

#: /proc/PID/stat state letter -> (word, colour) (proc(5)).
STATES: dict[str, tuple[str, str | None]] = {
    "R": ("running", GREEN),
    "S": ("sleeping", None),
    "D": ("disk sleep", f"{BOLD};{MAGENTA}"),
    "T": ("stopped", YELLOW),
    "t": ("traced", YELLOW),
    "Z": ("zombie", RED),
    "X": ("dead", RED),
    "I": ("idle", DIM),
    "P": ("parked", DIM),
    "W": ("paging", DIM),
}
TRACKER_COLOURS = {
    "cgroup": BLUE,
    "subreaper": MAGENTA,
    "session": CYAN,
    "cookie": YELLOW,
    "walk": GREEN,
    "gid": RED,
}


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):  # closed, or a stream without a fd
        return False


def colour_wanted(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Colour on ``stream``: a terminal, no ``NO_COLOR``, and not ``TERM=dumb``."""
    env = os.environ if env is None else env
    return is_terminal(stream) and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def width_of(stream: TextIO, default: int = 100) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or default
    except (OSError, ValueError, AttributeError):
        return default


class Paint:
    """Wraps text in SGR escapes, or leaves it alone when colour is off."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, text: str, code: str | None) -> str:
        if not self.on or not code or not text:
            return text
        return f"\x1b[{code}m{text}{RESET}"

    def pad(self, text: str, code: str | None, width: int, right: bool = False) -> str:
        """``text`` padded to ``width`` visible columns, then painted."""
        padding = " " * max(0, width - len(text))
        painted = self(text, code)
        return padding + painted if right else painted + padding

    def trackers(self, names: Sequence[str], width: int = 0) -> str:
        plain = ",".join(names)
        painted = ",".join(self(n, TRACKER_COLOURS.get(n)) for n in names)
        return painted + " " * max(0, width - len(plain))


def visible_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: its length without SGR escapes."""
    return len(_SGR.sub("", text))


def fold(line: str, width: int) -> list[str]:
    """``line`` broken at spaces into lines of at most ``width`` columns (SGR
    escapes take none); continuations are indented two more than ``line``.

    A terminal wraps a long line at its last column, mid-word: this breaks
    it first, between words. A single word longer than a line stays whole.
    """
    if visible_width(line) <= width:
        return [line]
    body = line.lstrip(" ")
    indent = " " * (len(line) - len(body) + 2)
    out: list[str] = []
    current = line[: len(line) - len(body)]
    used = len(current)
    fresh = True  # nothing but the indent on the current line
    for word in body.split(" "):
        size = visible_width(word)
        if not fresh and used + 1 + size > width:
            out.append(current)
            current, used, fresh = indent + word, len(indent) + size, False
            continue
        current += word if fresh else " " + word
        used += size if fresh else 1 + size
        fresh = False
    out.append(current)
    return out


def _box(stream: TextIO) -> tuple[str, str, str]:
    """Tree connectors (branch, last, pipe): box drawing if the stream can encode it."""
    try:
        "├└│─".encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "|- ", "`- ", "|  "
    return "├─ ", "└─ ", "│  "


# -- tether ps PID -------------------------------------------------------------

#: One row of `tether ps PID`: pid, ppid, state letter, found_by, cmdline.
Row = tuple[int, int, str, Sequence[str], str]


def tree_lines(rows: Sequence[Row], paint: Paint, stream: TextIO, width: int) -> list[str]:
    """The members as a tree with connectors, their state and how each was found."""
    by_pid = {r[0]: r for r in rows}
    kids: dict[int, list[int]] = {}
    for pid, ppid, *_ in rows:
        kids.setdefault(ppid if ppid in by_pid else -1, []).append(pid)
    branch, last, pipe = _box(stream)
    width -= 1  # the last column wraps
    found_width = max([8, *(len(",".join(r[3])) for r in rows)])
    # As in the report table: FOUND BY gives way before COMMAND wraps.
    found_width = max(8, min(found_width, width - (7 + 1 + 7 + 2 + 10 + 2 + 2) - MIN_COMMAND))
    head = f"{'PID':>7} {'PPID':>7}  {'STATE':<10}  {'FOUND BY':<{found_width}}  COMMAND"
    out = [paint(head, BOLD)]
    fixed = 7 + 1 + 7 + 2 + 10 + 2 + found_width + 2

    def show(pid: int, prefix: str, connector: str, child_prefix: str) -> None:
        _, ppid, state, found, cmd = by_pid[pid]
        word, colour = STATES.get(state, (state, None))
        room = max(8, width - fixed - len(prefix) - len(connector))
        out.append(
            f"{pid:>7} {ppid:>7}  {paint.pad(word, colour, 10)}  "
            f"{_found_cell(paint, found, found_width)}  "
            f"{paint(prefix + connector, DIM)}{oneline(cmd, room)}"
        )
        children = sorted(kids.get(pid, []))
        for i, child in enumerate(children):
            end = i == len(children) - 1
            show(
                child,
                child_prefix,
                last if end else branch,
                child_prefix + ("   " if end else pipe),
            )

    for top in sorted(kids.get(-1, [])):
        show(top, "", "", "")
    return out


def plain_tree_lines(rows: Sequence[Row]) -> list[str]:
    """The members as plain, stable columns (``tether ps PID`` piped: scripts parse it)."""
    by_pid = {r[0]: r for r in rows}
    kids: dict[int, list[int]] = {}
    for pid, ppid, *_ in rows:
        kids.setdefault(ppid if ppid in by_pid else -1, []).append(pid)
    out = [f"{'PID':>7} {'PPID':>7} S  {'FOUND BY':<22} COMMAND"]

    def show(pid: int, depth: int) -> None:
        _, ppid, state, found, cmd = by_pid[pid]
        out.append(
            f"{pid:>7} {ppid:>7} {state}  {','.join(found):<22} {'  ' * depth}{oneline(cmd, 100)}"
        )
        for child in sorted(kids.get(pid, [])):
            show(child, depth + 1)

    for top in sorted(kids.get(-1, [])):
        show(top, 0)
    return out


# -- reports -------------------------------------------------------------------


def _how(m: MemberRecord, narrow: bool = False) -> tuple[str, str | None]:
    if m.outcome == "killed":
        by = v(m.ended_by or "?")[:16]
        return f"by {by}" if narrow else f"killed by {by}", RED if m.ended_by == "KILL" else YELLOW
    if m.outcome == "exited":
        return "exited" if narrow else "exited by itself", GREEN
    return v(m.outcome.upper())[:16], f"{BOLD};{RED}"


def _found_cell(paint: Paint, names: Sequence[str], width: int) -> str:
    """FOUND BY in ``width`` columns: coloured names, or cut with "..." (uncoloured)."""
    text = ",".join(names)
    if len(text) <= width:
        return paint.trackers(names, width)
    return text[: max(0, width - 3)] + "..."


def report_table(report: Report, paint: Paint, width: int = 100) -> str:
    """The report as a table for a terminal ``width`` columns wide; survivors stand out.

    The same facts as :meth:`Report.render_text`, laid out for reading
    rather than parsing (that one stays the stable text for pipes and logs).
    No line reaches the last column (a terminal wraps there, mid-word): a
    member row is one line (on a narrow terminal HOW IT ENDED is shortened
    and FOUND BY cut before COMMAND falls below MIN_COMMAND columns), and
    every other line is folded between words.
    """
    width = max(20, width - 1)
    narrow = width < NARROW
    lines = [
        # Every field may come from a remote agent: shown through the sanitiser.
        f"tether: job {paint(v(report.job_id), BOLD)} terminated ({v(report.reason)}) "
        f"with policy {v(report.policy)}",
    ]
    verdict = paint(report.verdict, GREEN if report.complete else f"{BOLD};{RED}")
    survivors = len(report.survivors)
    lines.append(
        f"  {len(report.members)} member(s), {len(report.killed)} killed, "
        + paint(f"{survivors} survivor(s)", f"{BOLD};{RED}" if survivors else None)
        + f", {report.duration:.3f}s: {verdict}"
    )
    if report.members:
        members = sorted(report.members, key=lambda m: (m.start_time, m.pid))
        found = [[v(n) for n in m.found_by] for m in members]
        hows = [_how(m, narrow) for m in members]
        whens = ["-" if m.ended_at is None else f"{m.ended_at:.3f}s" for m in members]
        how_head = "HOW" if narrow else "HOW IT ENDED"
        pid_w = max(3, *(len(str(m.pid)) for m in members))
        how_w = max(len(how_head), *(len(h) for h, _ in hows))
        when_w = max(4, *(len(w) for w in whens))
        found_w = max(8, *(len(",".join(f)) for f in found))
        gap = " " if narrow else "  "
        fixed = 2 + pid_w + how_w + when_w + 4 * len(gap)
        # FOUND BY gives way first: a wrapped row is unreadable, a cut list is not.
        found_w = max(8, min(found_w, width - fixed - MIN_COMMAND))
        room = max(1, width - fixed - found_w)
        lines.append("")
        head = gap.join(
            (f"  {'PID':>{pid_w}}", f"{'FOUND BY':<{found_w}}", f"{how_head:<{how_w}}",
             f"{'WHEN':>{when_w}}", "COMMAND")
        )  # fmt: skip
        lines.append(paint(head, BOLD))
        for m, names, (how, colour), when in zip(members, found, hows, whens, strict=True):
            cells = (
                f"  {m.pid:>{pid_w}}", _found_cell(paint, names, found_w),
                paint.pad(how, colour, how_w), f"{when:>{when_w}}", oneline(m.cmdline, room),
            )  # fmt: skip
            lines.append(gap.join(cells))
        lines.append("")
    for s in report.survivors:
        lines.append(
            paint(f"  SURVIVOR pid {s.pid}", f"{BOLD};{RED}")
            + f" state {STATES.get(s.state, (v(s.state), None))[0]} ({v(s.state)}), "
            f"wchan {v(s.wchan or '-')}: {v(s.reason)}"
        )
    for n, step in enumerate(report.steps):
        lines.append(
            f"  {'steps:' if n == 0 else '':<6} {paint.pad(v(step.signal), BOLD, 4)} at "
            f"{step.started_at:.3f}s: signalled {step.signalled}, {step.left_after} left "
            f"after {step.duration:.3f}s" + (f" (froze by {v(step.froze)})" if step.froze else "")
        )
    used = [v(t.name) for t in report.trackers if t.used]
    lines.append("  trackers: " + (paint.trackers(used) if used else "none"))
    for t in report.trackers:
        if not t.used:
            lines.append(paint(f"    not used: {v(t.name)} ({v(t.reason)})", DIM))
    lines.extend(f"  caveat: {v(c)}" for c in report.caveats)
    if report.kill_script:
        lines.append(f"  kill script: {v(report.kill_script)}")
    return "\n".join(part for line in lines for part in fold(line, width))


def render_report(report: Report, stream: TextIO) -> str:
    """What to print of ``report`` on ``stream``: a table on a terminal, else
    the stable text of :meth:`Report.render_text` (scripts and logs parse it)."""
    if not is_terminal(stream):
        return report.render_text()
    return report_table(report, Paint(colour_wanted(stream)), width_of(stream))


# -- progress ------------------------------------------------------------------


class ProgressLine:
    """One status line on a terminal, redrawn in place while a termination runs.

    Drawn only once the termination has lasted ``after`` seconds, so a tree
    that dies at once does not flicker. ``\\r`` + clear-to-end-of-line
    (spaces instead on ``TERM=dumb``, which has no such escape).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        env: Mapping[str, str] | None = None,
        after: float = 0.25,
    ) -> None:
        import time

        self.stream = stream if stream is not None else sys.stderr
        env = os.environ if env is None else env
        self.paint = Paint(colour_wanted(self.stream, env))
        self.dumb = env.get("TERM") == "dumb"
        self.started = time.monotonic()
        self.after = after
        self.drawn = 0  # visible width of what is on the line now
        self._clock = time.monotonic

    def __call__(self, p: Progress) -> None:
        if self._clock() - self.started < self.after:
            return
        signal, left = self.paint(p.signal, BOLD), self.paint(str(p.members_left), YELLOW)
        forms = (
            f"tether: step {p.step}/{p.steps} {signal}: {left} member(s) left, "
            f"{p.grace_left:.1f}s of grace left",
            f"tether: {p.step}/{p.steps} {signal}: {left} left, {p.grace_left:.1f}s grace",
            f"{p.step}/{p.steps} {signal} {left} {p.grace_left:.0f}s",
        )
        # A line that reaches the last column wraps, and "\r" then redraws
        # only its second half: the first form that fits in width - 1 columns.
        room = width_of(self.stream) - 1
        painted = next((f for f in forms if visible_width(f) <= room), forms[-1])
        text = _SGR.sub("", painted)
        self._write("\r" + painted + self._erase(len(text)))
        self.drawn = len(text)

    def clear(self) -> None:
        """Remove the line, if one was drawn."""
        if self.drawn:
            self._write("\r" + self._erase(0) + "\r")
            self.drawn = 0

    def _erase(self, written: int) -> str:
        if self.dumb:
            return " " * max(0, self.drawn - written)
        return CLEAR_TO_EOL

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a display must never break a termination
