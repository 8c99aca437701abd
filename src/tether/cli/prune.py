"""``tether prune`` and ``tether epilog``: stray processes on batch and CI nodes."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from tether._collector import gc_back_on
from tether._records import dataclass, replace
from tether.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_INCOMPLETE,
    EXIT_OK,
    built_on_first_use,
    configured,
    echo_err,
    echo_out,
)
from tether.errors import TetherError, UsageError

# The pruner, the policy and the configuration are imported inside the
# commands: loading this module (for --help, or for the other command) stays
# cheap. click too: `tether prune` in its common forms runs without it
# (parse_fast); the click commands are built when the click path asks.
# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import click

    from tether.config import EffectiveConfig
    from tether.policy import Policy

_PRUNE_EPILOG = """\
A process is a candidate when every one of its uids (real, effective, saved,
filesystem) is at or above the floor: --min-uid, else prune.min_uid from the
configuration, else UID_MIN from /etc/login.defs, else 1000. So a
setuid-style process (ruid 1000, euid 0) is never a candidate.

\b
Never touched: kernel threads, pid 1, tether and its ancestors and its
session, systemd's system.slice services, processes younger than --min-age,
and legitimate processes:
  - members of live tether jobs in root's journal (/run/tether): descendants
    of a live supervisor and the processes of its root-owned tether-* cgroup.
    A user's own `tether run` outside any batch job does NOT make its tree
    legitimate: user journals are written by the user;
  - batch jobs: root-owned Slurm job cgroups (slurm[_NODE]/uid_N/job_M,
    [NODE_]slurmstepd.scope/job_M), `scontrol listpids` while slurmd or a
    slurmstepd runs, processes of a running Slurm job's owner carrying that
    job's SLURM_JOB_ID (helpers that double-forked out of the job's tree),
    `qstat -f` sessions while pbs_mom runs (--batch), and session ids listed
    by --sessions-file/--sessions-command (lines "SID [JOBID [USER]]");
  - interactive sessions (under a root sshd, or a utmp login), unless
    --include-ssh.
An environment variable is never evidence for another uid's process: a
SLURM_JOB_ID only counts for the running job's own user, TETHER_JOB_ID never.
Job lists are read after the process scan, so a job starting during the scan
is seen.

A dry run (the default) prints what would be killed and why, and sends no
signal. --kill applies the policy to every stray (and to children a stray
forks while it is terminated) through pidfds opened after its start time and
uids were checked again. The listing groups the strays by the rule that
made them strays; process names and command lines are shown with control
characters escaped (\x1b, \n). Every decision is logged to syslog (ident
tether-prune), under systemd to the journal, or to --log-file/prune.log_file
(/var/log/tether/prune.log where no syslog socket exists).

\b
EXIT STATUS:
  0  done: dry run, or every stray was killed (or none was found)
  1  a stray could not be killed (survived the policy, or permission denied)
  2  bad input or configuration, unknown user, or a job list could not be
     read (nothing was killed)
"""

_EPILOG_EPILOG = """\
Slurm (Epilog=): reads SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_USER from the
environment. Torque/PBS (mom_priv/epilogue): give the epilogue's arguments
after --, as in `exec tether epilog -- "$@"` (job id, user, group, job name,
session id, ...). The environment may be empty and PATH unset.

When the user has no other job on this node (as far as every job source
says; a job whose owner cannot be told counts as theirs), every process of
that user is killed, as slurm.epilog.clean does; otherwise only the ended
job's strays: processes in its cgroup or session, or carrying its
SLURM_JOB_ID/PBS_JOBID. Legitimate processes (other jobs, live tether jobs,
interactive sessions unless --include-ssh) and processes with a uid below the
floor are never touched. --min-age defaults to 0 here (the job is over);
prune.min_age is tether prune's and is not read. --batch none would hide the
user's other running jobs (and so kill their processes): it is refused unless
--force is given.

Decisions go to syslog (ident tether-prune), or to --log-file/prune.log_file,
or to /var/log/tether/prune.log where no syslog socket exists: slurmd discards
a successful Epilog's output.

\b
EXIT STATUS (a non-zero epilog status drains a Slurm node):
  0  done, nothing to do, or a harmless failure: bad environment or
     arguments, unknown user, bad configuration, a job list that could not
     be read, or an unexpected error. The failure is logged at error level
     and nothing is killed.
  1  a process of the ended job's user could not be killed: the node keeps
     a stray (e.g. stuck in D state), so draining it is deliberate
  2  only with --strict: what exits 0 above as a harmless failure
"""


def _common_options() -> list[Any]:
    import click

    return [
        click.option("--policy", "policy_text", metavar="SEQ",
                     help="Termination policy (default: prune.policy, else TERM,10s,KILL)."),
        click.option("--min-uid", metavar="UID", type=int,
                     help="The uid floor (default: prune.min_uid, else UID_MIN of /etc/login.defs, "
                          "else 1000)."),
        click.option("--min-age", metavar="DURATION",
                     help="Never touch processes younger than this (default: prune.min_age, else "
                          "60s for prune, 0s for epilog)."),
        click.option("--exclude-user", "exclude_users", metavar="USER", multiple=True,
                     help="Never touch this user's processes (name or uid; repeatable)."),
        click.option("--exclude-comm", metavar="REGEX", multiple=True,
                     help="Never touch processes whose name (comm) matches (repeatable)."),
        click.option("--include-ssh", is_flag=True, default=None,
                     help="Interactive (ssh, console) sessions are not exempt."),
        click.option("--batch", type=click.Choice(["auto", "slurm", "torque", "none"]),
                     default="auto", show_default=True,
                     help="Which batch system's job list to read."),
        click.option("--sessions-file", "sessions_files", metavar="FILE", multiple=True,
                     help='File of running jobs\' session ids, "SID [JOBID [USER]]" per line.'),
        click.option("--sessions-command", "sessions_commands", metavar="CMD", multiple=True,
                     help="Command printing running jobs' session ids, in the same format."),
        click.option("--slurm-cgroup-root", "slurm_cgroup_roots", metavar="DIR", multiple=True,
                     help="Look for Slurm job cgroups below DIR (default: the cgroup mounts)."),
        click.option("--config", "config_file", metavar="FILE",
                     help="Read this tether.toml (its [prune] table) instead of TETHER_CONFIG."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON (stable keys) on stdout."),
        click.option("-v", "--verbose", is_flag=True,
                     help="Also list the user processes left alone, and why."),
        click.option("--syslog-facility", default="authpriv", show_default=True, metavar="NAME",
                     help="Syslog facility for the decision log."),
        click.option("--syslog-socket", metavar="PATH",
                     help="Syslog socket (default $TETHER_SYSLOG_SOCKET, else /dev/log)."),
        click.option("--log-file", metavar="PATH",
                     help="Append decisions to PATH instead of syslog (default: prune.log_file)."),
        click.option("--no-syslog", is_flag=True, help="Do not log decisions."),
    ]  # fmt: skip


def _with_common(f: Any) -> Any:
    for option in reversed(_common_options()):
        f = option(f)
    return f


@dataclass(frozen=True)
class _Common:
    policy_text: str | None
    min_uid: int | None
    min_age: str | None
    exclude_users: tuple[str, ...]
    exclude_comm: tuple[str, ...]
    include_ssh: bool | None
    batch: str
    sessions_files: tuple[str, ...]
    sessions_commands: tuple[str, ...]
    slurm_cgroup_roots: tuple[str, ...]
    config_file: str | None
    as_json: bool
    verbose: bool
    syslog_facility: str
    syslog_socket: str | None
    log_file: str | None
    no_syslog: bool


def _uid(user: str, what: str) -> int:
    from tether.prune.sources import uid_of

    uid = uid_of(user.strip())
    if uid is None:
        raise UsageError(f"{what}: unknown user {user!r}")
    return uid


def _options(
    c: _Common,
    *,
    default_min_age: float,
    extra: Mapping[str, Any],
    min_age_setting: bool = True,
    flags: Mapping[str, object] | None = None,
) -> tuple[Any, Policy, EffectiveConfig]:
    """PruneOptions, the policy and the configuration, from flags over the files.

    ``flags``: a command's own flags that are settings, beyond the common ones.
    ``min_age_setting``: False for the epilog, which only takes --min-age (the
    job is over: prune.min_age is for sweeps of a node with jobs starting).
    """
    from tether.config import Flag
    from tether.prune.classify import PruneOptions
    from tether.prune.scan import uid_min

    config = configured(
        {
            "prune.policy": Flag(c.policy_text, "--policy"),
            "prune.min_uid": c.min_uid,
            "prune.min_age": c.min_age,
            "prune.exclude_users": Flag(c.exclude_users, "--exclude-user"),
            "prune.exclude_comm": c.exclude_comm,
            "prune.include_ssh": c.include_ssh,
            "prune.log_file": c.log_file,
            **(flags or {}),
        },
        config_file=c.config_file,
    )

    def configured_value(key: str) -> Any:
        # None when neither a flag nor a file set it: the command's own default applies.
        setting = config.setting(key)
        return None if setting.source.kind == "default" else setting.value

    floor = configured_value("prune.min_uid")
    if floor is None:
        floor = uid_min()
    if floor < 1:
        raise UsageError(f"--min-uid {floor}: the floor must be at least 1 (root is never pruned)")
    min_age = configured_value("prune.min_age")
    if not min_age_setting and config.setting("prune.min_age").source.kind != "flag":
        min_age = None
    if min_age is None:
        min_age = default_min_age
    exclude = {
        _uid(u, "--exclude-user" if u in c.exclude_users else "prune.exclude_users")
        for u in config["prune.exclude_users"]
    }
    # Checked by the configuration (files and --exclude-comm alike): they compile.
    import re

    comm = tuple(re.compile(p) for p in config["prune.exclude_comm"])
    options = PruneOptions(
        min_uid=floor,
        min_age=min_age,
        exclude_users=frozenset(exclude),
        exclude_comm=comm,
        include_ssh=config["prune.include_ssh"],
        **extra,
    )
    return options, config.policy_for_prune(), config


def _sources(c: _Common) -> list[Any]:
    from tether.prune.sources import default_sources

    commands = []
    if c.sessions_commands:
        import shlex  # only for job-list commands
    for text in c.sessions_commands:
        argv = shlex.split(text)
        if not argv:
            raise UsageError("--sessions-command: empty command")
        commands.append(argv)
    return default_sources(
        c.batch,
        sessions_files=c.sessions_files,
        sessions_commands=commands,
        slurm_cgroup_roots=c.slurm_cgroup_roots or None,
    )


def _log(c: _Common, log_file: str | None = None) -> Any:
    from tether.prune.log import FACILITIES, DecisionLog

    if c.syslog_facility not in FACILITIES:
        raise UsageError(
            f"--syslog-facility: unknown facility {c.syslog_facility!r} "
            f"(one of {', '.join(sorted(FACILITIES))})"
        )
    return DecisionLog(
        facility=c.syslog_facility,
        socket_path=c.syslog_socket,
        enabled=not c.no_syslog,
        file_path=(c.log_file or log_file) or None,
    )


def _echo(message: str, *, err: bool = False) -> None:
    """``click.echo``, with or without click loaded: the line, then a flush (a
    closed pipe raises here, inside the command, as it does under click)."""
    if err:
        echo_err(message)
        return
    echo_out(message)
    if sys.stdout is not None:
        sys.stdout.flush()


def _show(outcome: Any, c: _Common) -> None:
    if c.as_json:
        _echo(outcome.to_json())
    else:
        _echo(outcome.render_text(verbose=c.verbose))
    if outcome.log_problem and c.as_json:
        _echo(f"tether: warning: decisions not logged: {outcome.log_problem}", err=True)


def __getattr__(name: str) -> object:
    # The common forms of `tether prune` run prune() without click.
    makers = {"prune_command": _prune_command, "epilog_command": _epilog_command}
    return built_on_first_use(__name__, globals(), makers, name)


def _prune_command() -> click.Command:
    import click

    @click.command(
        "prune", epilog=_PRUNE_EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
    )
    @click.option("--kill", is_flag=True,
                  help="Kill the strays (default: a dry run, nothing is sent).")  # fmt: skip
    @_with_common
    @click.option("--older-than", metavar="DURATION", help="Only processes at least this old.")
    @click.option("--min-cputime", metavar="DURATION",
                  help="Only processes that used this much CPU.")  # fmt: skip
    @click.option(
        "--orphans-only",
        is_flag=True,
        default=None,
        help="Only processes whose tree of user processes hangs from init or a subreaper.",
    )
    @click.option("--user", "users", metavar="USER", multiple=True,
                  help="Only this user's processes (name or uid; repeatable).")  # fmt: skip
    @click.option(
        "--gid",
        type=int,
        metavar="GID",
        help="Only processes carrying supplementary group GID (see --tag-gid).",
    )
    def prune_command(**params: Any) -> None:
        """Find (and with --kill, terminate) stray user processes: those outside
        every live job, batch job and interactive session on this node.
        """
        prune(**params)

    return prune_command


#: What :func:`parse_fast` reads, option -> parameter. Flags:
_FAST_FLAGS = {
    "--kill": "kill", "--include-ssh": "include_ssh", "--json": "as_json", "-v": "verbose",
    "--verbose": "verbose", "--no-syslog": "no_syslog", "--orphans-only": "orphans_only",
}  # fmt: skip
#: options with one value (the last one given wins, as in click):
_FAST_VALUES = {
    "--policy": "policy_text", "--min-age": "min_age", "--config": "config_file",
    "--syslog-facility": "syslog_facility", "--syslog-socket": "syslog_socket",
    "--log-file": "log_file", "--older-than": "older_than", "--min-cputime": "min_cputime",
    "--min-uid": "min_uid", "--gid": "gid", "--batch": "batch",
}  # fmt: skip
#: repeatable options (a tuple of every value, in order):
_FAST_MULTIPLE = {
    "--exclude-user": "exclude_users", "--exclude-comm": "exclude_comm",
    "--sessions-file": "sessions_files", "--sessions-command": "sessions_commands",
    "--slurm-cgroup-root": "slurm_cgroup_roots", "--user": "users",
}  # fmt: skip
_INTEGER = frozenset({"min_uid", "gid"})
_BATCH = frozenset({"auto", "slurm", "torque", "none"})
FAST_OPTIONS = frozenset([*_FAST_FLAGS, *_FAST_VALUES, *_FAST_MULTIPLE])


def parse_fast(args: Sequence[str]) -> dict[str, Any] | None:
    """prune's parameters, as click would pass them, when ``args`` are only
    prune's own options, spelled out ("--min-age 5m", not "--min-age=5m"),
    each value a separate word that does not start with "-", integers as
    plain digits and --batch one of its choices; None for anything else
    (--help, operands, bundled or unknown options, a value click would
    convert or refuse), which the click command parses or rejects."""
    params: dict[str, Any] = {
        "kill": False, "policy_text": None, "min_uid": None, "min_age": None,
        "exclude_users": (), "exclude_comm": (), "include_ssh": None, "batch": "auto",
        "sessions_files": (), "sessions_commands": (), "slurm_cgroup_roots": (),
        "config_file": None, "as_json": False, "verbose": False,
        "syslog_facility": "authpriv", "syslog_socket": None, "log_file": None,
        "no_syslog": False, "older_than": None, "min_cputime": None, "orphans_only": None,
        "users": (), "gid": None,
    }  # fmt: skip
    i = 0
    while i < len(args):
        arg = args[i]
        flag = _FAST_FLAGS.get(arg)
        if flag is not None:
            params[flag] = True
            i += 1
            continue
        name = _FAST_VALUES.get(arg) or _FAST_MULTIPLE.get(arg)
        if name is None or i + 1 >= len(args) or args[i + 1].startswith("-"):
            return None
        value: Any = args[i + 1]
        if name in _INTEGER:
            # click's int() also takes " 7", "+7", "1_000": those go to click.
            if not (value.isascii() and value.isdigit() and len(value) <= 18):
                return None
            value = int(value)
        elif name == "batch" and value not in _BATCH:
            return None
        if arg in _FAST_MULTIPLE:
            params[name] = (*params[name], value)
        else:
            params[name] = value
        i += 2
    return params


def prune(
    *,
    kill: bool,
    older_than: str | None,
    min_cputime: str | None,
    orphans_only: bool | None,
    users: tuple[str, ...],
    gid: int | None,
    **common: Any,
) -> None:
    """``tether prune``'s body (click's command and the fast path's).

    The cyclic collector is off from the start (:func:`tether.cli.main`):
    the scan makes a record per process and the listing tens of thousands of
    objects, none in reference cycles. A kill turns it back on before the
    termination engine runs (:func:`gc_back_on`).
    """
    import time

    from tether.prune.scan import scan_started

    # The /proc scan (~50 ms, nearly all in the kernel) goes on in a thread
    # while the rest of the pruner, the policy and the configuration are
    # imported and read; plan() takes its table when it is complete, and
    # reads the job lists after it, as it does when it scans itself.
    scan_began = time.perf_counter()
    scanner = scan_started()
    from tether.policy import parse_duration
    from tether.prune.classify import plan
    from tether.prune.outcome import execute

    c = _Common(**common)
    extra: dict[str, Any] = {
        "older_than": parse_duration(older_than) if older_than is not None else 0.0,
        "min_cputime": parse_duration(min_cputime) if min_cputime is not None else 0.0,
        "users": frozenset(_uid(u, "--user") for u in users),
        "gid": gid,
    }
    if gid is not None and gid < 0:
        raise UsageError(f"--gid {gid}: not a group id")
    options, policy, config = _options(
        c, default_min_age=60.0, extra=extra, flags={"prune.orphans_only": orphans_only}
    )
    options = replace(options, orphans_only=config["prune.orphans_only"])
    sources = _sources(c)
    log = _log(c, config["prune.log_file"])
    try:
        try:
            p = plan(options, sources, verbose=c.verbose, scanner=scanner, scan_began=scan_began)
        except TetherError as err:
            log.error(f"event=error error={str(err)!r} action=nothing killed")
            raise UsageError(f"{err} (nothing was killed)") from None
        if kill:
            gc_back_on()
        outcome = execute(p, kill=kill, policy=policy, log=log)
    finally:
        log.close()
    _show(outcome, c)
    sys.exit(EXIT_OK if outcome.complete else EXIT_INCOMPLETE)


# -- epilog ------------------------------------------------------------------------


@dataclass(frozen=True)
class _JobContext:
    kind: str  # "slurm" or "torque"
    job_id: str
    uid: int
    sids: frozenset[int]
    env: tuple[bytes, ...]


def job_context(argv: Sequence[str], env: Mapping[str, str]) -> _JobContext:
    """The ended job from Torque's epilogue arguments, else Slurm's environment.

    Raises:
        UsageError: neither is there, or they do not make sense.
    """
    from tether.prune.sources import uid_of

    if argv:
        if len(argv) < 2 or not argv[0].strip():
            raise UsageError(
                "Torque epilogue arguments: expected JOBID USER [GROUP JOBNAME SESSION ...], "
                f"got {list(argv)!r}"
            )
        job_id, user = argv[0].strip(), argv[1].strip()
        uid = uid_of(user)
        if uid is None:
            raise UsageError(f"Torque epilogue: unknown user {user!r}")
        sids: set[int] = set()
        if len(argv) >= 5 and argv[4].strip():
            text = argv[4].strip()
            sid = _small_number(text)
            if sid is None:
                raise UsageError(f"Torque epilogue: session id {text[:40]!r} is not a number")
            if sid > 1:
                sids.add(sid)
        return _JobContext(
            "torque", job_id, uid, frozenset(sids), (f"PBS_JOBID={job_id}".encode(),)
        )
    return _slurm_context(env)


def _small_number(text: str) -> int | None:
    """TEXT as a uid or session id: at most 10 ASCII digits, else None
    ('¹'.isdigit() is true and int() refuses it; int() also refuses more
    than 4300 digits)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None


def _slurm_context(env: Mapping[str, str]) -> _JobContext:
    from tether.prune.sources import uid_of

    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    uid_text = env.get("SLURM_JOB_UID") or env.get("SLURM_UID")
    if not job_id:
        raise UsageError(
            "no job: give Torque's epilogue arguments after --, or run under Slurm "
            "(SLURM_JOB_ID, SLURM_JOB_UID)"
        )
    if not (job_id.isascii() and job_id.isdigit()):
        raise UsageError(f"SLURM_JOB_ID={job_id!r} is not a job id")
    name = env.get("SLURM_JOB_USER")
    resolved = uid_of(name) if name is not None else None
    number = None if uid_text is None else _small_number(uid_text)
    if number is None:
        if name is None:
            raise UsageError("SLURM_JOB_UID is missing or not a number, and SLURM_JOB_USER unset")
        if resolved is None:
            raise UsageError(f"SLURM_JOB_USER={name!r}: unknown user, and no SLURM_JOB_UID")
        uid = resolved
    else:
        uid = number
        if resolved is not None and resolved != uid:
            raise UsageError(f"SLURM_JOB_USER={name!r} is uid {resolved}, but SLURM_JOB_UID={uid}")
    markers = (f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_JOBID={job_id}".encode())
    return _JobContext("slurm", job_id, uid, frozenset(), markers)


def _epilog_command() -> click.Command:
    import click

    @click.command(
        "epilog", epilog=_EPILOG_EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
    )
    @click.option("--dry-run", is_flag=True, help="Only report and log what would be killed.")
    @click.option(
        "--strict",
        is_flag=True,
        help="Exit 2 on bad input, configuration or job lists, instead of 0.",
    )
    @click.option("--force", is_flag=True,
                  help="Allow --batch none (the user's other jobs are then not seen).")  # fmt: skip
    @_with_common
    @click.argument("torque_args", nargs=-1, metavar="[-- JOBID USER GROUP JOBNAME SESSION ...]")
    def epilog_command(**params: Any) -> None:
        """Kill what an ended batch job left behind on this node (a Slurm Epilog,
        or a Torque/PBS epilogue)."""
        epilog(**params)

    return epilog_command


def epilog(
    *, dry_run: bool, strict: bool, force: bool, torque_args: tuple[str, ...], **common: Any
) -> None:
    """``tether epilog``'s body."""
    from tether.prune.log import DecisionLog
    from tether.sanitize import visible

    c = _Common(**common)
    try:
        log = _log(c)
    except UsageError as err:
        _echo(f"tether: {err}", err=True)
        log = DecisionLog()
    try:
        status = _epilog(c, log, dry_run=dry_run, strict=strict, force=force, argv=torque_args)
    except Exception as err:  # an epilog must not drain a node by a traceback
        # Bad input, a job list that could not be read, or a bug: nothing
        # was killed, so the node has nothing left behind by us to drain for.
        why = err if isinstance(err, TetherError | ValueError) else f"{type(err).__name__}: {err}"
        text = visible(str(why))
        log.error(f'event=error command=epilog error={text!r} action="nothing killed"')
        _echo(f"tether: epilog: {text} (nothing was killed)", err=True)
        status = EXIT_BAD_INPUT if strict else EXIT_OK
    finally:
        log.close()
    sys.exit(status)


def _epilog(
    c: _Common, log: Any, *, dry_run: bool, strict: bool, force: bool, argv: Sequence[str]
) -> int:
    """One epilog run; its exit status. Raises on anything that killed nothing."""
    from tether.prune.classify import EndedJob, plan
    from tether.prune.outcome import execute

    ctx = job_context(argv, os.environ)
    options, policy, config = _options(c, default_min_age=0.0, extra={}, min_age_setting=False)
    if c.batch == "none" and not force:
        raise UsageError(
            "--batch none: the user's other running jobs would not be seen and their "
            "processes would be killed; give --force if that is meant"
        )
    if not c.log_file and config["prune.log_file"] and not c.no_syslog:
        log.to_file(config["prune.log_file"])
    sources = _sources(c)
    ended = EndedJob(uid=ctx.uid, job_id=ctx.job_id, sids=ctx.sids, env=ctx.env)
    if ctx.uid < options.min_uid:
        log.info(
            f"event=skip command=epilog job={ctx.job_id} uid={ctx.uid} "
            f'reason="uid below the floor {options.min_uid}"'
        )
        if c.as_json:
            # Scripts still get their document: a plan that may kill nothing.
            _show(
                execute(plan(options, sources, ended=ended), kill=False, policy=policy, log=log), c
            )
        else:
            _echo(
                f"tether epilog: job {ctx.job_id}: uid {ctx.uid} is below the floor "
                f"{options.min_uid}: nothing to do"
            )
        return EXIT_OK
    # A job list that cannot be read raises SourceError: which other jobs run
    # here is then unknown, and neither the ended job's cgroup (gone by now
    # under Slurm) nor its session (Slurm gives none) can stand in for it.
    p = plan(options, sources, ended=ended, verbose=c.verbose)
    outcome = execute(p, kill=not dry_run, policy=policy, log=log)
    _show(outcome, c)
    return EXIT_OK if outcome.complete else EXIT_INCOMPLETE
