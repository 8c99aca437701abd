"""The POSIX-shell engine: for remote hosts without python3 >= 3.11.

The agent (``shell_agent.sh``) is sent over the connection and run by
``/bin/sh``; see its header for how it works. This module is the client's
half: it encodes what the agent reads (text lines in which every byte of
argv, environment and reasons is an ``\\ooo`` escape, decoded there by
``printf`` and never evaluated), and turns the agent's text RESULT into the
dicts the Python agent sends, so the rest of the client treats both alike.

The shell engine's guarantees are weaker, and every report says so
(:data:`CAVEATS`).
"""

from __future__ import annotations

import os

from tether.policy import Policy, format_duration, signal_name
from tether.spec import JobSpec

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Reads the agent (a decimal length line, then the script) and runs it.
#: Fixed text: part of the remote command line, and of stage 0's hand-over
#: when the remote python3 is too old for the engine.
SHELL_BOOT = (
    'IFS= read -r n && exec /bin/sh -c "$(PATH="$PATH:/usr/bin:/bin" dd bs=1 count=$n 2>/dev/null)"'
    " tether-sh"
)

CAVEATS = (
    "remote engine: the POSIX-shell agent, whose guarantees are weaker:",
    "no cgroup or subreaper there: a process that leaves the job's session and clears "
    "its environment (setsid + env -i) is not found",
    "members are signalled by pid after a /proc scan (no pidfd): a pid reused between "
    "scan and signal could be hit",
    "no freezing while signalling: a member forked during a step is caught by the next rescan",
    "stdin is not forwarded: the job's stdin is /dev/null",
    "no watchdog: if the shell agent itself is killed while its connection stays up, "
    "the job runs on until `tether cancel --host HOST JOB_ID`",
)

#: What a signal's name may be made of to reach the shell agent's `kill -s`
#: (checked by hand: re, with enum behind it, is ~2 ms of a remote run's start).
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_CHARS = _UPPER | frozenset("0123456789")


class ShellEngineError(Exception):
    """The job asks for something the shell agent cannot do."""


_script: list[bytes] = []


def agent_script() -> bytes:
    """shell_agent.sh, read once (a list, not functools.lru_cache: no functools)."""
    if not _script:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shell_agent.sh")
        with open(path, "rb") as f:
            _script.append(f.read())
    return _script[0]


def agent_block() -> bytes:
    """What SHELL_BOOT reads: the length line, then the script."""
    script = agent_script()
    return b"%d\n" % len(script) + script


def escape(data: bytes) -> bytes:
    """Every byte as ``\\ooo``: printf's format decodes it; nothing else does."""
    return b"".join(b"\\%03o" % b for b in data)


def _signal(sig: int) -> str:
    name = signal_name(sig)
    # As re.fullmatch("[A-Z][A-Z0-9]*", name): a name, never a number or RTMIN+1.
    if not (name[:1] in _UPPER and _NAME_CHARS.issuperset(name)):
        raise ShellEngineError(f"signal {name} cannot be sent by the shell agent")
    return name


def _policy_lines(policy: Policy) -> list[bytes]:
    if policy.kill_script is not None:
        raise ShellEngineError("kill scripts need the Python engine on the remote host")
    lines = [
        b"step %s:%d" % (_signal(s.signal).encode(), round(s.grace * 1000)) for s in policy.steps
    ]
    if policy.leader_signal is not None:
        lines.append(b"leader_signal " + _signal(policy.leader_signal).encode())
    lines.append(b"tree_delay %d" % round(policy.tree_delay * 1000))
    return lines


def encode_run(spec: JobSpec) -> bytes:
    """The spec of a run, as the shell agent reads it; ShellEngineError for
    what the agent cannot do as asked (never a silently weaker job)."""
    for asked, what in (
        (spec.tag_gid is not None, "--tag-gid"),
        (spec.env is not None, "an explicit environment"),
        (spec.cwd is not None, "a working directory"),
        (spec.leftovers != "terminate", "waiting for leftovers"),
        (spec.foreground, "--foreground"),
        (bool(spec.forward) or spec.cancel_on is not None, "--forward/--cancel-on"),
        (spec.fail_on_leftovers, "--fail-on-leftovers"),
    ):
        if asked:
            raise ShellEngineError(f"{what} needs the Python engine on the host")
    args = [os.fsencode(a) for a in spec.argv]
    # env(1) starts the job: its first operand without '=' is the command.
    if b"=" in args[0]:
        raise ShellEngineError("with the shell agent the command name may not contain '='")
    lines = [b"run"]
    lines += [b"arg " + escape(a) for a in args]
    lines += _policy_lines(spec.policy)
    if spec.timeout is not None:
        lines.append(b"timeout %d" % max(1, round(spec.timeout * 1000)))
    lines.append(b"end")
    return b"\n".join(lines) + b"\n"


def encode_cancel(reason: str) -> bytes:
    """A cancel line for a running shell agent."""
    return b"cancel " + escape(reason.encode()) + b"\n"


def encode_cancel_job(job_id: str, reason: str | None, policy: Policy | None) -> bytes:
    """The spec of an out-of-band cancel (the job's own policy unless given)."""
    lines = [b"cancel", b"job " + job_id.encode("ascii")]
    if reason:
        lines.append(b"reason " + escape(reason.encode()))
    if policy is not None:
        lines += _policy_lines(policy)
    lines.append(b"end")
    return b"\n".join(lines) + b"\n"


def _steps_text(steps: list[str]) -> str:
    """``["TERM:1000", "KILL:5000"]`` (the agent's record) -> ``TERM,1s,KILL,5s``."""
    out = []
    for step in steps:
        name, _, ms = step.partition(":")
        out.append(f"{name},{format_duration(int(ms or 0) / 1000)}")
    return ",".join(out) or "?"


def _text(hexdata: str) -> str:
    return bytes.fromhex(hexdata).decode(errors="replace") if hexdata else ""


def _cmdline(hexdata: str) -> str:
    return " ".join(_text(hexdata).rstrip("\0").split("\0"))


def decode_result(payload: bytes, policy_text: str | None) -> dict[str, Any]:
    """The agent's RESULT text -> the Python agent's RESULT dict.

    Run: ``{returncode, timed_out, reason, report}``; cancel: ``{found,
    notes, report}``. Times the agent sends are milliseconds since the
    termination began; start times are clock ticks since boot.
    """
    fields: dict[str, list[str]] = {}
    members: list[list[str]] = []
    survivors: list[list[str]] = []
    steps: list[dict[str, Any]] = []
    notes: list[str] = []
    for raw in payload.decode("ascii", errors="replace").splitlines():
        key, _, rest = raw.partition(" ")
        parts = rest.split(" ")
        if key == "member":
            members.append(parts)
        elif key == "survivor":
            survivors.append(parts)
        elif key == "step":
            sig, at, grace, signalled, left, duration = parts[:6]
            steps.append(
                {
                    "signal": sig,
                    "started_at": int(at) / 1000,
                    "grace": int(grace) / 1000,
                    "signalled": int(signalled),
                    "left_after": int(left),
                    "duration": int(duration) / 1000,
                    "froze": None,
                }
            )
        elif key == "note":
            notes.append(rest)
        else:
            fields[key] = parts
    if fields.get("found", ["1"])[0] != "1":
        return {"found": False}
    btime, clk = (int(x) for x in fields.get("btime", ["0", "100"])[:2])

    def unix(ticks: str) -> float:
        return btime + int(ticks) / (clk or 100)

    alive = {(s[0], s[1]) for s in survivors}
    member_dicts = []
    for m in members:
        pid, start, how, sigs, end, denied, cmd = [*m, ""][:7]
        signals = [] if sigs in ("-", "") else sigs.split(",")
        if denied == "1":
            outcome = "denied"
        elif (pid, start) in alive:
            outcome = "survived"
        elif signals:
            outcome = "killed"
        else:
            outcome = "exited"
        member_dicts.append(
            {
                "pid": int(pid),
                "start_time": unix(start),
                "cmdline": _cmdline(cmd),
                "found_by": [how],
                "outcome": outcome,
                "ended_by": signals[-1] if signals and outcome == "killed" else None,
                "ended_at": None if end in ("-", "") else max(0, int(end)) / 1000,
                "signals": signals,
            }
        )
    survivor_dicts = []
    for s in survivors:
        pid, start, state, wchan, cmd = [*s, ""][:5]
        survivor_dicts.append(
            {
                "pid": int(pid),
                "start_time": unix(start),
                "cmdline": _cmdline(cmd),
                "state": state,
                "wchan": None if wchan in ("-", "0", "") else wchan,
                "reason": "stuck in the kernel (D state)"
                if state == "D"
                else "still alive after the last step",
            }
        )
    reason = _text(fields.get("reasonhex", [""])[0]) or "cancelled"
    report = {
        "schema": 1,
        "job_id": fields.get("job", ["?"])[0],
        "reason": reason,
        "policy": policy_text or _steps_text(fields.get("steps", [])),
        "started_at": int(fields.get("started", ["0"])[0]) / 1000,
        "duration": int(fields.get("duration", ["0"])[0]) / 1000,
        "complete": not survivor_dicts,
        "members": member_dicts,
        "survivors": survivor_dicts,
        "trackers": [
            {"name": "session", "used": True, "reason": "shell agent: setsid"},
            {"name": "cookie", "used": True, "reason": "shell agent: /proc/PID/environ"},
            {"name": "walk", "used": True, "reason": "shell agent: children of members"},
            {"name": "cgroup", "used": False, "reason": "not available to the shell agent"},
            {"name": "subreaper", "used": False, "reason": "not available to the shell agent"},
        ],
        "steps": steps,
        "caveats": list(CAVEATS),
        "kill_script": None,
    }
    if "status" not in fields:
        return {"found": True, "notes": notes, "report": report}
    status_text = fields["status"][0]
    returncode: int | None = None
    if status_text.isdigit():
        status = int(status_text)
        # The shell reports death by signal N as 128+N.
        returncode = -(status - 128) if status > 128 else status
    return {
        "returncode": returncode,
        "timed_out": fields.get("timed_out", ["0"])[0] == "1",
        "reason": reason,
        "report": report,
    }
