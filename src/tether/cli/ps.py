"""``tether ps``: the tree rooted at PID and how each member was found; without
PID, the journal of live jobs and who is looking after each.

The journal's JSON rows (:func:`job_dict`) are shared with ``tether reap``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from tether.cli._common import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    built_on_first_use,
    echo_err,
    echo_out,
    isatty,
    parse_pid,
)
from tether.errors import UsageError

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import click

    from tether.journal import JobRecord, JournalProblem
    from tether.membership import ReadOnlyMembership
    from tether.process import ProcessInfo
    from tether.recovery import JobState

_PS_EPILOG = """\
On a terminal the tree is drawn with connectors, each member's state and the
trackers that found it in colour (unless NO_COLOR or TERM=dumb); piped, the
columns are plain and stable.

\b
EXIT STATUS:
  0  listed
  1  (without PID) a journal record was unusable (reported and skipped)
  2  bad input: neither a pid nor a job id, no such process or job; or
     an unusable journal directory
"""


def __getattr__(name: str) -> object:
    # `tether ps [--json] [-a] [PID]` runs show() without importing click.
    return built_on_first_use(__name__, globals(), {"ps": _command}, name)


def _command() -> click.Command:
    import click

    @click.command("ps", epilog=_PS_EPILOG)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a tree.")
    @click.option(
        "-a", "--all", "show_all", is_flag=True,
        help="One row per process: do not collapse identical sibling processes.",
    )  # fmt: skip
    @click.argument("pid", type=str, required=False, metavar="[PID|JOB_ID]")
    def ps(pid: str | None, as_json: bool, show_all: bool) -> None:
        """Show the tree rooted at PID and how each member was found.

        A job tether started (PID is its leader, or JOB_ID, or a unique prefix
        of it, as `tether ps` lists them) is shown with the trackers of its
        journal record: its cgroup, session and recorded members. Read-only: any
        process may be shown, pid 1, kernel threads and tether's own ancestors
        included, and the tree lists every process below PID (zombies too). What
        could not be read (other users' environments, without root) is said on
        stderr.

        Without PID, list the jobs in the journal of live jobs and whether their
        supervisor (and its watchdog) is still alive.
        """
        show(pid, as_json, show_all)

    return ps


#: What :func:`parse_fast` reads: each of ps's options, all flags.
FAST_FLAGS = {"--json": "as_json", "-a": "show_all", "--all": "show_all"}


def parse_fast(args: list[str]) -> tuple[str | None, bool, bool] | None:
    """(pid, as_json, show_all) from ps's arguments when they are only its
    flags and at most one PID|JOB_ID that does not start with "-"; None for
    anything else (--help, "--", bundled or unknown options, two operands),
    which the click command parses or rejects."""
    pid: str | None = None
    flags = {"as_json": False, "show_all": False}
    for arg in args:
        if arg in FAST_FLAGS:
            flags[FAST_FLAGS[arg]] = True
        elif arg.startswith("-") or pid is not None:
            return None
        else:
            pid = arg
    return pid, flags["as_json"], flags["show_all"]


def show(pid: str | None, as_json: bool, show_all: bool) -> None:
    """The command's body (click's and the fast path's). Its output is
    flushed here, inside the command: a reader that went away (``| head``)
    is then an EPIPE that click's main, and the fast path, turn into status
    1, as when click.echo flushed each line."""
    if pid is None:
        status = list_jobs(as_json)
        sys.stdout.flush()
        sys.exit(status)
    _show_tree(pid, as_json, show_all)
    sys.stdout.flush()


def _show_tree(pid: str, as_json: bool, show_all: bool) -> None:
    from tether.process import starttime_to_epoch

    membership, root, is_pid = _membership(pid)
    try:
        # One table (stat only, as pstree reads it); each member's command
        # line and a fresh stat line read once, by path: ps signals nothing,
        # so no pidfd or dirfd has to pin what it shows.
        seen, table = membership.observe()
        rows: list[tuple[int, ProcessInfo, list[str], float, str]] = [
            (s.info.pid, s.info, sorted(s.found_by), starttime_to_epoch(s.info.starttime),
             s.cmdline)
            for s in seen
        ]  # fmt: skip
    finally:
        membership.close()
    if is_pid:
        # Membership never counts what tether must not signal (pid 1, tether
        # and its ancestors, kernel threads) nor zombies; ps only reads, so
        # the rest of PID's tree is shown from the process table.
        listed = {r[0] for r in rows}
        for p in _descendants(root, table):
            if p not in listed:
                info = _reread(table[p], ("cmdline",))
                rows.append((p, info, ["walk"], starttime_to_epoch(info.starttime),
                             info.describe()))  # fmt: skip
    unread = _unreadable(rows)
    for line in unread:
        echo_err(f"tether: {line}")
    if as_json:
        out = {
            "schema": 1,
            "root": root,
            "members": [
                {
                    "pid": pid_,
                    "ppid": info.ppid,
                    "pgid": info.pgid,
                    "sid": info.sid,
                    "state": info.state,
                    "start_time": start_time,
                    "found_by": found_by,
                    "cmdline": cmdline,
                }
                for pid_, info, found_by, start_time, cmdline in rows
            ],
            "trackers": [{"name": t.name, "used": t.used, "reason": t.reason}
                         for t in membership.trackers],
        }  # fmt: skip
        echo_out(json.dumps(out, indent=2))
        return
    tree = [(pid_, info.ppid, info.state, found_by, cmd) for pid_, info, found_by, _, cmd in rows]
    summary = None
    if not show_all and len(tree) > COLLAPSE_OVER:
        shown = collapse(tree)
        if len(shown) < len(tree):
            summary = (
                f"# {len(tree)} processes in {len(shown)} rows: N*[COMMAND] stands for N "
                "sibling processes without children running COMMAND (--all lists each)"
            )
            tree = shown
    if isatty(sys.stdout):
        _draw_tree(tree, [str(t) for t in membership.trackers if t.used],
                   [str(t) for t in membership.trackers if not t.used])  # fmt: skip
        if summary is not None:
            echo_out(summary)
        return
    from tether.display import plain_tree_lines

    for line in plain_tree_lines(tree):
        echo_out(line)
    for t in membership.trackers:
        echo_out(f"# {t}")
    if summary is not None:
        echo_out(summary)


#: Trees up to this many processes are always shown one row per process.
COLLAPSE_OVER = 20

_Row = tuple[int, int, str, list[str], str]


def collapse(rows: Sequence[_Row]) -> list[_Row]:
    """pstree's ``N*[COMMAND]``: siblings without children that run the same
    command become one row (the lowest pid, the union of what found them)."""
    parents = {r[1] for r in rows}
    groups: dict[tuple[int, str], list[_Row]] = {}
    for row in rows:
        if row[0] not in parents:
            groups.setdefault((row[1], row[4]), []).append(row)
    out: list[_Row] = []
    for row in rows:
        group = groups.get((row[1], row[4]), []) if row[0] not in parents else []
        if len(group) < 2:
            out.append(row)
        elif row is group[0]:
            states = "".join(sorted({r[2] for r in group}))
            found = sorted({f for r in group for f in r[3]})
            out.append((row[0], row[1], states if len(states) == 1 else "*", found,
                        f"{len(group)}*[{row[4]}]"))  # fmt: skip
    return out


def _descendants(root: int, table: dict[int, ProcessInfo]) -> list[int]:
    """``root`` and every process below it in ``table`` (by parent links)."""
    from tether.process import children_map

    kids = children_map(table)
    out: list[int] = []
    stack = [root] if root in table else []
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(k for k in kids.get(pid, ()) if k != pid)
    return out


def _reread(info: ProcessInfo, fields: tuple[str, ...]) -> ProcessInfo:
    """``info`` with ``fields`` read, if the same process (by start time) is still there."""
    from tether.process import read_process

    again = read_process(info.pid, fields)
    return again if again is not None and again.starttime == info.starttime else info


def _cmdline_unreadable(info: ProcessInfo) -> bool:
    """Whether the same process is still there with an empty command line (one
    that exited meanwhile is not reported: it was readable while it lived)."""
    from tether.process import read_process

    again = read_process(info.pid, ("cmdline",))
    return again is not None and again.starttime == info.starttime and not again.cmdline


def _unreadable(rows: Sequence[tuple[int, ProcessInfo, list[str], float, str]]) -> list[str]:
    """What could not be read of these processes, one line per kind (empty as root)."""
    import os

    lines = []
    me = os.geteuid()
    if me != 0:
        # Only an unprivileged caller needs the owners (the table is stat only).
        uids = [_reread(r[1], ("uids",)).uids for r in rows]
        others = sum(1 for u in uids if u is not None and u[1] != me)
        if others:
            lines.append(
                f"could not read the environment of {others} process(es) of other users "
                "(needs root): the cookie tracker cannot see them"
            )
    # Shown as [comm]: either the command line was empty (unreadable, or a
    # process that cleared it) or it is literally that; a re-read tells.
    nameless = [
        info.pid
        for _pid, info, _found, _start, cmd in rows
        if not info.kernel_thread
        and info.state != "Z"
        and cmd == f"[{info.comm}]"
        and _cmdline_unreadable(info)
    ]
    if nameless:
        lines.append(
            f"command line unreadable for {len(nameless)} process(es), shown by name in "
            "[brackets]: pid "
            + ", ".join(map(str, nameless[:10]))
            + (", ..." if len(nameless) > 10 else "")
        )
    return lines


def _membership(text: str) -> tuple[ReadOnlyMembership, int, bool]:
    """Who belongs to PID's tree (or JOB_ID's job), for reading only; the root;
    whether PID named a plain process (not a journal job)."""
    from tether.errors import NoSuchProcessError, UnsafeTargetError
    from tether.membership import Membership, ReadOnlyMembership
    from tether.process import read_process

    record = _journal_record(text)
    if record is not None:
        from tether.recovery import membership_for

        # Even once the leader is gone, the tree is the record's (cgroup,
        # session, members recorded by the supervisor's scans).
        leader = record.leader.pid if record.leader is not None else record.supervisor.pid
        return ReadOnlyMembership(membership_for(record)), leader, False
    if (text.isascii() and text.isdigit()) or text.startswith("-"):
        pid = parse_pid(text)
    else:
        raise UsageError(f"not a pid, nor a job id in the journal: {text!r}")
    try:
        membership, _ = Membership.for_tree(pid)
        return ReadOnlyMembership(membership), pid, True
    except UnsafeTargetError:
        # kill's refusals (pid 1, tether, its ancestors) guard signals; ps
        # only reads: the same tree, found by the descendant walk alone.
        info = read_process(pid, ("cmdline",)) if pid > 0 else None
        if info is None:
            # Not kill's "refusing to kill pid 0": ps kills nothing.
            raise NoSuchProcessError(pid) from None
        from tether.tracking.base import TrackerStatus

        walk = Membership(
            [],
            [TrackerStatus("walk", True, f"descendants of pid {pid}")],
            not_before=info.starttime,
            leader=info.identity,
            walk_roots=[info.identity],
            job_id=f"pid-{pid}",
        )
        return ReadOnlyMembership(walk), pid, True


def _journal_record(text: str) -> JobRecord | None:
    """The journal's job whose leader is pid ``text``, or whose id starts with it."""
    from tether.errors import JournalError
    from tether.journal import Journal, JournalProblem

    try:
        journal = Journal.default()
    except (JournalError, OSError):
        return None
    try:
        records = [e for e in journal.entries() if not isinstance(e, JournalProblem)]
    finally:
        journal.close()
    if text.isascii() and text.isdigit():
        pid = parse_pid(text)  # a one-line error past int()'s 4300 digits
        led = [r for r in records if r.leader is not None and r.leader.pid == pid]
        found = next((r for r in led if _leader_alive(r)), None)
        if found is not None:
            return found
        from tether.process import read_process

        # A hex job id may begin with digits only: such a prefix names the job
        # when no process has that pid (a pid that exists goes first).
        digits = [r for r in records if r.job_id.startswith(text)] if len(text) >= 4 else []
        if not digits or read_process(pid) is not None:
            return None
    if len(text) < 4 or not set(text) <= set("0123456789abcdef"):
        return None
    matches = [r for r in records if r.job_id.startswith(text)]
    if len(matches) > 1:
        raise UsageError(
            f"job id prefix {text!r} is ambiguous: " + ", ".join(r.job_id for r in matches)
        )
    if not matches:
        raise UsageError(f"no job {text!r} in the journal ({journal.directory})")
    return matches[0]


def _leader_alive(record: JobRecord) -> bool:
    from tether.process import is_alive

    return is_alive(record.leader)


def _draw_tree(
    rows: Sequence[tuple[int, int, str, list[str], str]], used: list[str], unused: list[str]
) -> None:
    from tether.display import DIM, Paint, colour_wanted, tree_lines, width_of

    paint = Paint(colour_wanted(sys.stdout))
    for line in tree_lines(rows, paint, sys.stdout, width_of(sys.stdout)):
        echo_out(line)
    for t in used:
        echo_out(f"# {t}")
    for t in unused:
        echo_out(paint(f"# {t}", DIM))


# -- the journal of live jobs (ps without PID; reap) ---------------------------------


def _identity(identity: tuple[int, int] | None, alive: bool) -> dict[str, Any] | None:
    if identity is None:
        return None
    return {"pid": identity[0], "start_ticks": identity[1], "alive": alive}


def job_dict(record: JobRecord, state: JobState) -> dict[str, Any]:
    """One journal job as JSON (``tether ps --json`` and ``tether reap --json``)."""
    return {
        "job_id": record.job_id,
        "argv": list(record.argv),
        "state": state.describe(),
        "orphaned": state.orphaned,
        "supervisor": _identity(record.supervisor, state.supervisor_alive),
        "watchdog": _identity(record.watchdog, state.watchdog_alive),
        "leader_pid": record.leader[0] if record.leader else None,
        "cgroup": record.cgroup,
        "policy": record.policy_text,
        "started_at": record.started_at,
        "recorded_members": len(record.members),
        "restartable": record.restartable,
        "record_state": record.state,
    }


def problem_dict(p: JournalProblem) -> dict[str, str]:
    """An unusable journal record as JSON."""
    return {"path": p.path, "message": p.message}


def warn(p: JournalProblem) -> None:
    """Say on stderr that a journal record was unusable (and skipped)."""
    echo_err(f"tether: journal: {p}")


def list_jobs(as_json: bool) -> int:
    """``tether ps`` without a pid: every job in the journal and its state."""
    from tether.journal import Journal, JournalProblem
    from tether.recovery import job_state
    from tether.report import oneline

    journal = Journal.default()
    jobs: list[tuple[JobRecord, JobState]] = []
    problems: list[JournalProblem] = []
    for entry in journal.entries():
        if isinstance(entry, JournalProblem):
            problems.append(entry)
        else:
            jobs.append((entry, job_state(entry)))
    journal.close()
    if as_json:
        out = {
            "schema": 1,
            "journal": journal.directory,
            "jobs": [job_dict(r, s) for r, s in jobs],
            "problems": [problem_dict(p) for p in problems],
        }
        echo_out(json.dumps(out, indent=2))
        return EXIT_INCOMPLETE if problems else EXIT_OK
    for p in problems:
        warn(p)
    if not jobs:
        echo_out(f"no jobs in the journal ({journal.directory})")
        return EXIT_INCOMPLETE if problems else EXIT_OK
    if sys.stdout.isatty():
        _draw_jobs(jobs)
        return EXIT_INCOMPLETE if problems else EXIT_OK
    echo_out(f"{'JOB':<24} {'SUPERVISOR':>10} {'LEADER':>7} {'STARTED':<19} {'STATE':<38} COMMAND")
    for record, state in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at))
        what = state.describe() + (", restartable" if record.restartable else "")
        leader = str(record.leader[0]) if record.leader else "-"
        echo_out(
            f"{record.job_id:<24} {record.supervisor[0]:>10} {leader:>7} {started:<19} "
            f"{what:<38} {oneline(' '.join(record.argv), 60)}"
        )
    return EXIT_INCOMPLETE if problems else EXIT_OK


def _state_colour(state: JobState) -> str | None:
    from tether import display as d

    if not state.same_boot:
        return d.DIM
    if state.given_up:
        return f"{d.BOLD};{d.RED}"
    if state.supervisor_alive:
        return d.GREEN
    return d.YELLOW if state.watchdog_alive else f"{d.BOLD};{d.RED}"


def _draw_jobs(jobs: list[tuple[JobRecord, JobState]]) -> None:
    """The journal listing for a terminal: state in colour, the trackers each job uses."""
    from tether import display as d
    from tether.report import oneline

    paint = d.Paint(d.colour_wanted(sys.stdout))
    width = d.width_of(sys.stdout)
    rows = []
    for record, state in jobs:
        what = state.describe() + (", restartable" if record.restartable else "")
        rows.append((record, state, what, list(record.trackers)))
    state_width = max(len("STATE"), *(len(r[2]) for r in rows))
    found_width = max(len("TRACKERS"), *(len(",".join(r[3])) for r in rows))
    head = (
        f"{'JOB':<24} {'SUPERVISOR':>10} {'LEADER':>7} {'STARTED':<19} "
        f"{'STATE':<{state_width}} {'TRACKERS':<{found_width}} COMMAND"
    )
    echo_out(paint(head, d.BOLD))
    room = max(20, width - (24 + 1 + 10 + 1 + 7 + 1 + 19 + 1 + state_width + 1 + found_width + 1))
    for record, state, what, trackers in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at))
        leader = str(record.leader[0]) if record.leader else "-"
        echo_out(
            f"{paint.pad(record.job_id, d.BOLD, 24)} {record.supervisor[0]:>10} {leader:>7} "
            f"{started:<19} {paint.pad(what, _state_colour(state), state_width)} "
            f"{paint.trackers(trackers, found_width)} {oneline(' '.join(record.argv), room)}"
        )
