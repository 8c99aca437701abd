"""Termination policies: ``TERM,10s,KILL``, signal names and durations.

A policy is a sequence of steps. Each step sends one signal to every member
of the job that can still receive it, then waits up to its grace period for
the tree to empty before the next step. The grace after the last signal is the
bounded final wait: whatever is still alive then is reported as a survivor.
"""

from __future__ import annotations

import math

from tether import _signals
from tether._records import dataclass, field, replace
from tether.errors import PolicyError

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

DEFAULT_POLICY_TEXT = "TERM,10s,KILL"
#: How long the last step waits for the kernel to confirm the tree is gone
#: when the policy does not end with a duration of its own.
DEFAULT_FINAL_WAIT = 5.0

# systemd.time(7) units, longest spelling first so "min" is not read as "m" + "in".
_UNIT_SECONDS: dict[str, float] = {
    "usec": 1e-6, "us": 1e-6, "µs": 1e-6,
    "msec": 1e-3, "ms": 1e-3,
    "seconds": 1.0, "second": 1.0, "sec": 1.0, "s": 1.0,
    "minutes": 60.0, "minute": 60.0, "min": 60.0, "m": 60.0,
    "hours": 3600.0, "hour": 3600.0, "hr": 3600.0, "h": 3600.0,
    "days": 86400.0, "day": 86400.0, "d": 86400.0,
    "weeks": 604800.0, "week": 604800.0, "w": 604800.0,
}  # fmt: skip
#: Units longest first, so "min" is not read as "m" + "in" (as a regex
#: alternation in that order would: re is ~5 ms of a start, issue 15).
_UNITS_LONGEST_FIRST = sorted(_UNIT_SECONDS, key=len, reverse=True)
#: MICRO SIGN, GREEK SMALL and CAPITAL MU: one letter to a reader.
_MU = frozenset("\u00b5\u03bc\u039c")


def _unit_at(s: str, i: int) -> str | None:
    """The unit (its key in _UNIT_SECONDS) written at ``s[i:]``, if any:
    ASCII letters in any case, or a micro sign before the s."""
    for unit in _UNITS_LONGEST_FIRST:
        text = s[i : i + len(unit)]
        if len(text) != len(unit):
            continue
        if unit == "µs":
            if text[0] in _MU and text[1] in "sS":
                return unit
        elif text.isascii() and text.lower() == unit:
            return unit
    return None


def _duration_part(s: str, pos: int) -> tuple[str, str | None, int] | None:
    """One ``number [unit]`` at ``s[pos:]``, spaces around it included:
    (number, unit or None, end); None if no number starts there."""
    n = len(s)
    i = pos
    while i < n and s[i].isspace():
        i += 1
    start = i
    while i < n and s[i].isdecimal():
        i += 1
    if i > start:
        if i < n and s[i] == ".":
            i += 1
            while i < n and s[i].isdecimal():
                i += 1
    elif i + 1 < n and s[i] == "." and s[i + 1].isdecimal():
        i += 1
        while i < n and s[i].isdecimal():
            i += 1
    else:
        return None
    number = s[start:i]
    while i < n and s[i].isspace():
        i += 1
    unit = _unit_at(s, i)
    if unit is not None:
        i += len(unit)
        while i < n and s[i].isspace():
            i += 1
    return number, unit, i


def _word_at(s: str, i: int) -> str:
    """The letters (anything but digits, spaces and dots) at ``s[i:]``."""
    j = i
    while j < len(s) and not (s[j].isdecimal() or s[j].isspace() or s[j] == "."):
        j += 1
    return s[i:j]


def parse_duration(text: str, *, bare_number_unit: str | None = "s") -> float:
    """Parse a duration such as ``250ms``, ``10s``, ``2m``, ``1.5h`` or ``1min 30s``.

    Args:
        text: the duration as written by a user.
        bare_number_unit: unit for a number without one (``"s"``, as in
            coreutils ``timeout``), or None to require a unit.

    Returns:
        The duration in seconds.

    Raises:
        PolicyError: the text is not a non-negative, finite duration.
    """
    s = text.strip()
    if not s:
        raise PolicyError("empty duration")
    pos, total, parts = 0, 0.0, 0
    while pos < len(s):
        part = _duration_part(s, pos)
        if part is None:
            raise PolicyError(f"bad duration {text!r} (examples: 250ms, 10s, 2m, 1h, '1min 30s')")
        number, unit, end = part
        if unit is None:
            # A bare number only stands alone ("10"), never inside "1min 30".
            word = _word_at(s, end)
            if word:
                raise PolicyError(
                    f"bad duration {text!r}: unknown unit {word!r} (known: "
                    "us, ms, s, m or min, h, d, w; also sec, minutes, hours, days, weeks)"
                )
            if bare_number_unit is None or parts or end != len(s):
                raise PolicyError(f"bad duration {text!r}: a unit is required (e.g. {number}s)")
            unit = bare_number_unit
        size = _UNIT_SECONDS[unit]
        # Divide for sub-second units: 9 / 1000 is the float nearest 0.009,
        # 9 * 1e-3 is not, and the policy would not survive str() -> parse().
        total += float(number) / round(1 / size) if size < 1 else float(number) * size
        parts += 1
        pos = end
    if not math.isfinite(total):
        raise PolicyError(f"bad duration {text!r}: too large")
    check_duration(total, text)
    return total


#: The longest duration tether accepts (24 days, documented): a wait is a
#: poll(2), whose int milliseconds end at 2**31 - 1 (24.8 days); the loops
#: clamp each poll to :data:`MAX_POLL_MS` and wait again.
MAX_DURATION = 24 * 86400.0
MAX_POLL_MS = 2**31 - 1


def check_duration(seconds: float, text: object) -> None:
    """Raise PolicyError for a duration longer than :data:`MAX_DURATION`."""
    if seconds > MAX_DURATION:
        raise PolicyError(f"bad duration {text!r}: at most 24d (a longer wait overflows poll)")


def format_duration(seconds: float) -> str:
    """Render seconds the way :func:`parse_duration` reads them back."""
    if seconds == 0:
        return "0s"
    if seconds < 1 or seconds != int(seconds):
        ms = round(seconds * 1000)
        if ms / 1000 == seconds:
            return f"{ms}ms"
        text = repr(seconds)
        return f"{text}s" if "e" not in text else f"{seconds:.9f}s"
    s = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def parse_signal(text: str) -> _signals.Signal:
    """Parse ``TERM``, ``SIGTERM``, ``sigterm`` or ``15`` into a signal.

    Raises:
        PolicyError: no such signal on this platform (or signal 0).
    """
    s = text.strip()
    if s.isascii() and s.isdigit():
        try:
            sig = _signals.Signal(int(s))
        except ValueError:
            raise PolicyError(f"unknown signal {text!r}") from None
        return sig
    name = s.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return _signals.Signal.named(name)
    except KeyError:
        raise PolicyError(f"unknown signal {text!r} (examples: TERM, SIGINT, 9)") from None


def _name_of(number: str) -> str:
    try:
        return _signals.Signal(int(number)).name.removeprefix("SIG")
    except ValueError:
        return "TERM"


def signal_name(sig: int) -> str:
    """``15`` -> ``"TERM"``; unknown numbers render as digits."""
    try:
        return _signals.Signal(sig).name.removeprefix("SIG")
    except ValueError:
        return str(sig)


#: Signals a process cannot catch, block or ignore.
UNCATCHABLE = frozenset({_signals.SIGKILL, _signals.SIGSTOP})


@dataclass(frozen=True)
class Step:
    """One step of a policy: send ``signal``, then wait up to ``grace`` seconds."""

    signal: _signals.Signal
    grace: float

    def __str__(self) -> str:
        return f"{signal_name(self.signal)},{format_duration(self.grace)}"


@dataclass(frozen=True)
class KillScript:
    """A user command run with the job's identity before (or instead of) signalling.

    The script gets ``TETHER_JOB_ID``, ``TETHER_LEADER_PID`` and
    ``TETHER_MEMBER_PIDS`` (space separated) in its environment, as JS7's
    ``kill_task.sh`` gets the task's pid.
    """

    argv: tuple[str, ...]
    mode: Literal["precede", "replace"] = "precede"
    timeout: float = 10.0


@dataclass(frozen=True)
class Policy:
    """How a job's tree is terminated.

    Attributes:
        steps: signal then grace, in order; the last grace bounds the final wait.
        leader_signal: signal for the job's leader in the first step, if it
            should differ from the tree's (Clarive's ``kill_signal`` beside
            ``kill_children_signal``).
        tree_delay: how long the first step waits after signalling the leader
            before the rest of the tree is signalled (the leader may shut its
            own workers down). The wait ends early if the tree empties.
        kill_script: optional user hook run before, or instead of, the signals.
    """

    steps: tuple[Step, ...]
    leader_signal: _signals.Signal | None = None
    tree_delay: float = 0.0
    kill_script: KillScript | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.steps:
            raise PolicyError("empty policy: give at least one signal, e.g. TERM,10s,KILL")
        if self.tree_delay < 0:
            raise PolicyError("tree delay must not be negative")

    @classmethod
    def parse(cls, text: str, **options: object) -> Policy:
        """Parse ``"TERM,10s,KILL"`` or ``"INT,2s,TERM,10s,KILL"``.

        Tokens are signals or durations (with a unit; a bare number is a
        signal number). A signal with no duration after it is followed by the
        next one at once; the last one by :data:`DEFAULT_FINAL_WAIT`.
        Keyword ``options`` set the other fields of :class:`Policy`.
        """
        tokens = [t.strip() for t in text.split(",")]
        if not text.strip() or any(not t for t in tokens):
            raise PolicyError(f"empty policy or empty step in {text!r} (example: TERM,10s,KILL)")
        steps: list[Step] = []
        pending: _signals.Signal | None = None
        for tok in tokens:
            if tok.isdigit():
                # "TERM,10,KILL" meant a grace, but 10 is also SIGUSR1: inside
                # a policy that reading would silently drop the grace.
                raise PolicyError(
                    f"bad policy {text!r}: {tok!r} is a bare number; write {tok}s for a "
                    f"grace, or the signal's name (e.g. {_name_of(tok)}) for a signal"
                )
            if (tok[0].isdigit() and not tok.isdigit()) or tok[0] == ".":
                grace = parse_duration(tok, bare_number_unit=None)
                if pending is None:
                    raise PolicyError(f"bad policy {text!r}: duration {tok!r} must follow a signal")
                steps.append(Step(pending, grace))
                pending = None
            else:
                if pending is not None:
                    steps.append(Step(pending, 0.0))
                pending = parse_signal(tok)
        if pending is not None:
            steps.append(Step(pending, DEFAULT_FINAL_WAIT))
        return cls(tuple(steps), **options)  # type: ignore[arg-type]

    @classmethod
    def default(cls) -> Policy:
        """``TERM,10s,KILL``: what systemd and most supervisors do."""
        if cls is not Policy:
            return cls.parse(DEFAULT_POLICY_TEXT)
        if not _default:  # parsed once: a Policy is immutable
            _default.append(cls.parse(DEFAULT_POLICY_TEXT))
        return _default[0]

    @classmethod
    def from_timeout_flags(
        cls, sig: _signals.Signal | None = None, kill_after: float | None = None
    ) -> Policy:
        """The policy coreutils ``timeout -s SIG -k DURATION`` implies.

        tether always ends with KILL (nothing may outlive the job); ``-k`` only
        sets how long the first signal is given.
        """
        first = sig if sig is not None else _signals.Signal(_signals.SIGTERM)
        grace = kill_after if kill_after is not None else 10.0
        if first == _signals.SIGKILL:
            return cls((Step(first, DEFAULT_FINAL_WAIT),))
        return cls(
            (Step(first, grace), Step(_signals.Signal(_signals.SIGKILL), DEFAULT_FINAL_WAIT))
        )

    @property
    def warnings(self) -> tuple[str, ...]:
        """Orders that are allowed but probably not meant (the CLI prints them)."""
        out = []
        for i, step in enumerate(self.steps[:-1]):
            if step.signal == _signals.SIGKILL:
                later = ",".join(signal_name(s.signal) for s in self.steps[i + 1 :])
                out.append(
                    f"policy {self}: KILL in step {i + 1} ends every member, so {later} "
                    "after it reaches nobody"
                )
                break
        if self.steps[-1].signal not in UNCATCHABLE and self.kill_script is None:
            out.append(
                f"policy {self} ends with {signal_name(self.steps[-1].signal)}: a member that "
                "ignores it survives the policy (end with KILL)"
            )
        return tuple(out)

    def skipping_to_last(self) -> Policy:
        """This policy with only its last step (a second Ctrl-C)."""
        return replace(self, steps=self.steps[-1:], leader_signal=None, tree_delay=0.0)

    def __str__(self) -> str:
        # Frozen: the text is made once (a job's record and report each ask).
        text: str | None = self.__dict__.get("_text")
        if text is None:
            text = ",".join(str(s) for s in self.steps)
            object.__setattr__(self, "_text", text)
        return text

    def to_dict(self) -> dict[str, object]:
        """Everything needed to apply this policy later (the journal keeps it)."""
        return {
            "steps": str(self),
            "leader_signal": signal_name(self.leader_signal) if self.leader_signal else None,
            "tree_delay": self.tree_delay,
            "kill_script": None
            if self.kill_script is None
            else {
                "argv": list(self.kill_script.argv),
                "mode": self.kill_script.mode,
                "timeout": self.kill_script.timeout,
            },
        }

    @classmethod
    def from_dict(cls, data: object) -> Policy:
        """Inverse of :meth:`to_dict`; PolicyError if anything is malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("steps"), str):
            raise PolicyError(f"malformed policy {data!r}")
        options: dict[str, object] = {}
        leader = data.get("leader_signal")
        if leader is not None:
            if not isinstance(leader, str):
                raise PolicyError(f"malformed leader signal {leader!r}")
            options["leader_signal"] = parse_signal(leader)
        delay = data.get("tree_delay", 0.0)
        if not isinstance(delay, (int, float)) or isinstance(delay, bool):
            raise PolicyError(f"malformed tree delay {delay!r}")
        options["tree_delay"] = float(delay)
        script = data.get("kill_script")
        if script is not None:
            argv = script.get("argv") if isinstance(script, dict) else None
            mode = script.get("mode") if isinstance(script, dict) else None
            timeout = script.get("timeout") if isinstance(script, dict) else None
            if (
                not isinstance(argv, list)
                or not argv
                or not all(isinstance(a, str) for a in argv)
                or mode not in ("precede", "replace")
                or not isinstance(timeout, (int, float))
            ):
                raise PolicyError(f"malformed kill script {script!r}")
            options["kill_script"] = KillScript(tuple(argv), mode=mode, timeout=float(timeout))
        return cls.parse(data["steps"], **options)


_default: list[Policy] = []
