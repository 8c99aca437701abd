"""JobSpec: what to run and how to contain it, described once.

A :class:`JobSpec` is built once — by :func:`tether.start`/:func:`tether.run`
from their keyword arguments, by ``tether run`` from its flags over the
configuration, by a remote agent from the wire — and passed down unchanged to
:class:`tether.job.Job` and :func:`tether.supervise.supervise`. How a job is
*supervised* (its stdio, a dedicated supervisor, the journal, the watchdog,
the caller to watch) is not part of the spec: that differs between the two
ends of a remote run, the spec does not.

Adding a ``run`` option means: a field here (with its check and its wire
key), its one click option, and the code that acts on it.
"""

from __future__ import annotations

import math
import os
from _collections_abc import Iterable  # collections.abc's, already loaded by os

from tether import _signals
from tether._records import dataclass, field, replace
from tether.errors import UsageError
from tether.policy import Policy, parse_signal, signal_name
from tether.tracking.base import TRACKER_NAMES, parse_tracker_names

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import MappingProxyType
    from typing import Any, Literal, TypeAlias
else:
    MappingProxyType = type(type.__dict__)  # as types defines it (types: ~1 ms a start)

#: What happens to members still alive when the leader exits by itself.
#: (A string at run time, as annotations are: typing is not imported.)
Leftovers: TypeAlias = "Literal['terminate', 'wait']"
LEFTOVERS: tuple[Leftovers, ...] = ("terminate", "wait")

#: Bounds on a spec read from the wire (remote bytes are hostile).
_MAX_ARGS = 1 << 16
_MAX_ARG_BYTES = 1 << 20
_MAX_ENV = 1 << 14

Arg = str | bytes | os.PathLike[str] | os.PathLike[bytes]

#: Signals a supervisor cannot take over: uncatchable, synchronous faults (a
#: handler would loop on the faulting instruction), and CHLD (it reaps with it).
_UNROUTABLE = frozenset(
    {_signals.SIGKILL, _signals.SIGSTOP, _signals.SIGCHLD, _signals.SIGSEGV, _signals.SIGBUS,
     _signals.SIGFPE, _signals.SIGILL, _signals.SIGTRAP, _signals.SIGSYS}
)  # fmt: skip


def parse_signal_set(value: object, what: str) -> frozenset[_signals.Signal]:
    """``"HUP,USR1"`` (or names/numbers in a list) as a set of signals a
    supervisor can handle; ``none`` or ``""`` is the empty set.

    Raises:
        UsageError: an unknown signal, or one that cannot be handled.
    """
    if isinstance(value, (str, bytes)):
        text = os.fsdecode(value).strip()
        items: list[object] = [] if text.lower() in ("", "none") else [*text.split(",")]
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise UsageError(f"{what}: not a list of signals: {value!r}")
    out: set[_signals.Signal] = set()
    for item in items:
        try:
            sig = (
                _signals.Signal(item)
                if isinstance(item, int) and not isinstance(item, bool)
                else parse_signal(str(item))
            )
        except ValueError as err:
            raise UsageError(f"{what}: {err}") from None
        if sig in _UNROUTABLE:
            raise UsageError(f"{what}: SIG{signal_name(sig)} cannot be handled by a supervisor")
        out.add(sig)
    return frozenset(out)


def signal_list(signals: Iterable[int]) -> str:
    """A signal set as ``--forward`` takes it (sorted by number), ``none`` if empty."""
    return ",".join(signal_name(s) for s in sorted(signals)) or "none"


def command_args(argv: Iterable[Arg] | str | bytes) -> tuple[str, ...]:
    """argv as strings: bytes and paths through os.fsdecode; a string is an error."""
    if isinstance(argv, (str, bytes)):
        raise UsageError(
            f"the command must be a list of arguments, not a string: {argv!r} "
            "(split it, e.g. shlex.split(), or run it with a shell: shell=True in the "
            "Python API, ['sh', '-c', ...] elsewhere)"
        )
    args = tuple(_arg(a) for a in argv)
    if not args:
        raise UsageError("no command given")
    return args


def _arg(value: object) -> str:
    if isinstance(value, (bytes, os.PathLike)):
        # surrogateescape: bytes that are not UTF-8 reach exec unchanged.
        return os.fsdecode(value)
    if not isinstance(value, str):
        raise UsageError(
            f"command arguments must be str, bytes or paths, not {type(value).__name__}"
        )
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise UsageError(f"argument {value!r} cannot be encoded for exec") from None
    return value


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What to run and how to contain it. Frozen; checked when built.

    Attributes:
        argv: the command and its arguments (the first is looked up in PATH).
        policy: how the tree is terminated.
        trackers: None (``auto``): every tracker that can be used here, the
            job recording why the others could not; or exactly these, each of
            which must be usable (else :class:`~tether.errors.TrackerError`
            before anything starts: never weaker than asked).
        env: the job's whole environment; None inherits the supervisor's.
            tether adds ``TETHER_JOB_ID`` either way.
        cwd: the job's working directory; None inherits.
        timeout: seconds after which the whole tree is terminated; None: none.
        restartable: the journal names the job restartable (``tether reap``).
        tag_gid: (root) a supplementary group every process of the job carries.
        leftovers: when the leader exits by itself, ``terminate`` what is left
            with the policy, or ``wait`` for it to exit by itself.
        forward: signals the supervisor passes on to the leader (through its
            verified handle) instead of cancelling the job, besides the
            default USR1, USR2 and WINCH (and HUP where the supervisor is
            PID 1); see :func:`tether.supervise.signal_roles`.
        cancel_on: the signals that start the policy; None: INT, TERM, QUIT,
            and HUP unless the supervisor is PID 1. A default one left out is
            passed on to the leader.
        foreground: the job keeps the supervisor's session and process group,
            so the terminal's signals (Ctrl-C, Ctrl-Z) and /dev/tty reach it
            (as ``timeout --foreground``); the session tracker is not used,
            and INT and QUIT from the terminal do not cancel the job.
        fail_on_leftovers: members still running when the leader exited make
            the run a failure (``tether run`` exits 123), after they were
            terminated with the policy.
    """

    argv: tuple[str, ...]
    policy: Policy = field(default_factory=Policy.default)
    trackers: frozenset[str] | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    timeout: float | None = None
    restartable: bool = False
    tag_gid: int | None = None
    leftovers: Leftovers = "terminate"
    forward: frozenset[_signals.Signal] = frozenset()
    cancel_on: frozenset[_signals.Signal] | None = None
    foreground: bool = False
    fail_on_leftovers: bool = False

    def __post_init__(self) -> None:
        # Normalise what callers may pass loosely; a frozen dataclass sets
        # its own fields through object.__setattr__ (as attrs converters do).
        set_ = object.__setattr__
        set_(self, "argv", command_args(self.argv))
        if isinstance(self.policy, str):
            set_(self, "policy", Policy.parse(self.policy))
        elif self.policy is None:
            set_(self, "policy", Policy.default())
        if self.trackers is not None:
            given: object = self.trackers
            if given == "auto":
                set_(self, "trackers", None)
            elif not isinstance(given, frozenset) or not given or not given <= set(TRACKER_NAMES):
                set_(self, "trackers", parse_tracker_names(given))  # type: ignore[arg-type]
        if self.env is not None:
            set_(self, "env", MappingProxyType({str(k): str(v) for k, v in self.env.items()}))
        if self.cwd is not None:
            set_(self, "cwd", os.fspath(self.cwd))
        if self.timeout is not None:
            timeout = float(self.timeout)
            if not math.isfinite(timeout) or timeout <= 0:
                raise UsageError(f"timeout must be a positive number of seconds, not {timeout}")
            set_(self, "timeout", timeout)
        if self.tag_gid is not None and (
            isinstance(self.tag_gid, bool) or not isinstance(self.tag_gid, int) or self.tag_gid < 0
        ):
            raise UsageError(f"not a group id: {self.tag_gid!r}")
        if self.leftovers not in LEFTOVERS:
            raise UsageError(f"leftovers must be one of {', '.join(LEFTOVERS)}")
        set_(self, "forward", parse_signal_set(self.forward, "forward"))
        if self.cancel_on is not None:
            set_(self, "cancel_on", parse_signal_set(self.cancel_on, "cancel_on"))
            both = self.forward & self.cancel_on
            if both:
                raise UsageError(
                    f"{signal_list(both)} cannot both be passed on (forward) and cancel the "
                    "job (cancel_on)"
                )
        for flag in ("foreground", "fail_on_leftovers"):
            if not isinstance(getattr(self, flag), bool):
                raise UsageError(f"{flag} must be True or False")
        if self.foreground and self.trackers is not None and "session" in self.trackers:
            raise UsageError(
                "the session tracker cannot be used with foreground: the job stays in the "
                "terminal's session and process group"
            )

    def evolve(self, **changes: Any) -> JobSpec:
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    @property
    def trackers_text(self) -> str:
        """The trackers as ``tether run --trackers`` takes them."""
        if self.trackers is None:
            return "auto"
        return ",".join(n for n in TRACKER_NAMES if n in self.trackers)

    # -- the wire: the remote agents (Python and POSIX shell) -------------

    def to_wire(self) -> dict[str, Any]:
        """A JSON-safe dict; every byte of argv and env survives (base64)."""
        return {
            "argv": [_b64(os.fsencode(a)) for a in self.argv],
            "policy": self.policy.to_dict(),
            "trackers": self.trackers_text,
            "env": None
            if self.env is None
            else {_b64(os.fsencode(k)): _b64(os.fsencode(v)) for k, v in self.env.items()},
            "cwd": None if self.cwd is None else _b64(os.fsencode(self.cwd)),
            "timeout": self.timeout,
            "restartable": self.restartable,
            "tag_gid": self.tag_gid,
            "leftovers": self.leftovers,
            "forward": [signal_name(s) for s in sorted(self.forward)],
            "cancel_on": None
            if self.cancel_on is None
            else [signal_name(s) for s in sorted(self.cancel_on)],
            "foreground": self.foreground,
            "fail_on_leftovers": self.fail_on_leftovers,
        }

    @classmethod
    def from_wire(cls, data: object) -> JobSpec:
        """Inverse of :meth:`to_wire`, for bytes from a peer: bounded, typed,
        and a :class:`UsageError` (one line) for anything malformed."""
        if not isinstance(data, dict):
            raise UsageError("malformed job spec: not an object")
        raw_argv = data.get("argv")
        if not isinstance(raw_argv, list) or not 0 < len(raw_argv) <= _MAX_ARGS:
            raise UsageError("malformed job spec: argv")
        argv = tuple(os.fsdecode(_unb64(a, "argv")) for a in raw_argv)
        raw_env = data.get("env")
        env: dict[str, str] | None = None
        if raw_env is not None:
            if not isinstance(raw_env, dict) or len(raw_env) > _MAX_ENV:
                raise UsageError("malformed job spec: env")
            env = {
                os.fsdecode(_unb64(k, "env")): os.fsdecode(_unb64(v, "env"))
                for k, v in raw_env.items()
            }
        raw_cwd = data.get("cwd")
        cwd = None if raw_cwd is None else os.fsdecode(_unb64(raw_cwd, "cwd"))
        timeout = data.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float))
        ):
            raise UsageError("malformed job spec: timeout")
        trackers = data.get("trackers", "auto")
        if not isinstance(trackers, str):
            raise UsageError("malformed job spec: trackers")
        restartable = data.get("restartable", False)
        if not isinstance(restartable, bool):
            raise UsageError("malformed job spec: restartable")
        leftovers = data.get("leftovers", "terminate")
        if leftovers not in LEFTOVERS:
            raise UsageError("malformed job spec: leftovers")
        forward = data.get("forward", [])
        cancel_on = data.get("cancel_on")
        for name, value in (("forward", forward), ("cancel_on", cancel_on)):
            if value is not None and (
                not isinstance(value, list)
                or len(value) > 64
                or not all(isinstance(v, str) and len(v) <= 16 for v in value)
            ):
                raise UsageError(f"malformed job spec: {name}")
        flags = {k: data.get(k, False) for k in ("foreground", "fail_on_leftovers")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise UsageError("malformed job spec: foreground/fail_on_leftovers")
        return cls(
            argv=argv,
            policy=Policy.from_dict(data.get("policy")),
            trackers=None if trackers == "auto" else parse_tracker_names(trackers),
            env=env,
            cwd=cwd,
            timeout=timeout,
            restartable=restartable,
            tag_gid=data.get("tag_gid"),
            leftovers=leftovers,
            forward=forward,
            cancel_on=cancel_on,
            **flags,
        )


# binascii, not base64 (its module, re and struct: ~0.6 ms of a remote
# host's start), and only where the wire form is built or read.


def _b64(data: bytes) -> str:
    import binascii

    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > _MAX_ARG_BYTES * 4 // 3 + 4:
        raise UsageError(f"malformed job spec: {what}")
    import binascii

    try:
        # strict_mode: the alphabet only, padding only at the end (as
        # b64decode(validate=True), which also took a lone "=" for b"").
        return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise UsageError(f"malformed job spec: {what} is not base64") from None
