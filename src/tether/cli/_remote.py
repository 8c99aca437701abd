"""``tether run --host/-w``: the remote options, and the fan-out's output and exit status.

The fan-out itself is :func:`tether.remote.fanout.fan_out` (no click there).
Exit status of a remote ``tether run``: each host's status follows ``tether
run`` (124 timed out; 125 tether failed: unreachable host, authentication or
host key failure, no usable python3, lost connection, or members survived;
126/127 command not executable/not found there; 128+N the leader was killed by
signal N; otherwise the command's status), and the overall status is the
largest of them (as ``pdsh -S``).

Kept import-light at module level: ``tether run`` declares these options on
every start, local or not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from tether.cli._common import EXIT_FAILED, fail, write_json

if TYPE_CHECKING:
    from tether.config import EffectiveConfig
    from tether.remote.client import HostResult, SshOptions
    from tether.spec import JobSpec

#: The schema of ``--json`` for remote runs and ``tether cancel``.
JSON_SCHEMA = 1

_options: list[Callable[[Any], Any]] = [
    click.option("--host", "remote_hosts", multiple=True, metavar="[USER@]HOST[:PORT]",
                 help="Run the job on HOST over ssh, contained there (repeatable)."),
    click.option("-w", "--hosts", "remote_host_lists", multiple=True, metavar="HOSTLIST",
                 help="Run on every host of a pdsh-style list, e.g. node[01-64],gpu[1-4]; "
                      "output is prefixed with the host."),
    click.option("-x", "--exclude", "remote_excludes", multiple=True, metavar="HOSTLIST",
                 help="Leave these hosts out of -w/--host."),
    click.option("-f", "--fanout", "remote_fanout", type=click.IntRange(min=1),
                 help="Hosts run at once; the others wait for a free slot (as pdsh -f). "
                      "Default: remote.fanout in tether.toml, else 32."),
    click.option("-o", "--ssh-option", "remote_ssh_options", multiple=True, metavar="OPTION",
                 help="Passed to ssh as -o OPTION (e.g. ConnectTimeout=5); wins over "
                      "remote.ssh_options in tether.toml."),
    click.option("-F", "--ssh-config", "remote_ssh_config", metavar="FILE",
                 help="ssh configuration file (ssh -F)."),
    click.option("-n", "--no-stdin", "remote_no_stdin", is_flag=True,
                 help="Give a remote job /dev/null as stdin (as ssh -n). By default a "
                      "single host's job reads tether's stdin; with several hosts none does."),
    click.option("--remote-engine", "remote_engine",
                 type=click.Choice(["auto", "python", "sh"]),
                 help="What supervises the job there: the Python engine (needs python3 >= "
                      "3.11 on the host; shipped if tether is not installed), the POSIX-shell "
                      "agent (weaker: no cgroup, pidfd or watchdog; the report says so), or "
                      "auto: Python if the host can run it, else the shell agent. Default: "
                      "remote.engine in tether.toml, else auto."),
    click.option("--cancel-timeout", "remote_cancel_timeout", metavar="DURATION", default="5s",
                 show_default=True,
                 help="A host that does not acknowledge a cancel within this long is "
                      "cancelled over a new connection."),
]  # fmt: skip


def with_remote_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the remote options to a click command (they arrive as ``remote_*``)."""
    for option in reversed(_options):
        f = option(f)
    return f


def wants_remote(options: dict[str, Any]) -> bool:
    """Did the user ask for remote hosts?"""
    return bool(options.get("remote_hosts") or options.get("remote_host_lists"))


def remote_flags(options: dict[str, Any]) -> dict[str, object]:
    """Take the remote options that are settings out of ``options``, for the config merge.

    ``-o`` comes first in the result (ssh takes the first value of an option;
    see ``remote.ssh_options`` in :mod:`tether.config`).
    """
    from tether.config import Flag

    return {
        "remote.fanout": options.pop("remote_fanout", None),
        "remote.engine": options.pop("remote_engine", None),
        "remote.ssh_options": Flag(options.pop("remote_ssh_options", ()), "--ssh-option"),
    }


def ssh_client(options: Sequence[str], config: str | None, engine: str = "auto") -> SshOptions:
    """How to run the ssh client: ``-o`` options, ``-F`` file, the remote engine; checked."""
    import os

    from tether.remote.client import SshOptions
    from tether.remote.hostlist import HostListError

    for opt in options:
        if not opt or "\n" in opt or "\0" in opt:
            raise HostListError(f"bad ssh option {opt!r}")
    if config is not None and not os.path.isfile(config):
        raise HostListError(f"ssh config file {config!r} does not exist")
    return SshOptions(tuple(options), config, engine=engine)


def write_hosts_json(target: str | None, results: list[HostResult]) -> None:
    """``--json FILE``: ``{"schema": 1, "hosts": [...]}``."""
    import json

    document = {"schema": JSON_SCHEMA, "hosts": [r.to_dict() for r in results]}
    write_json(target, json.dumps(document, indent=2))


def run_remote(
    spec: JobSpec,
    *,
    config: EffectiveConfig,
    json_file: str | None,
    quiet: bool,
    verbose: bool,
    outlive_caller: bool = True,
    remote_hosts: tuple[str, ...] = (),
    remote_host_lists: tuple[str, ...] = (),
    remote_excludes: tuple[str, ...] = (),
    remote_ssh_config: str | None = None,
    remote_cancel_timeout: str = "5s",
    remote_no_stdin: bool = False,
) -> NoReturn:
    """Run ``spec`` on every target; exit with the largest host status.

    ``config`` carries the merged remote settings (``remote.fanout``,
    ``remote.engine``, ``remote.ssh_options``: see :func:`remote_flags`).
    """
    import contextlib
    import sys

    from tether.policy import parse_duration
    from tether.remote.client import OutputSink, render_host_report, worst
    from tether.remote.fanout import fan_out
    from tether.remote.hostlist import resolve_targets

    if spec.leftovers == "wait":
        fail("--wait-leftovers is not supported with --host/-w", EXIT_FAILED)
    targets = resolve_targets(remote_hosts, remote_host_lists, remote_excludes)
    if not targets:
        fail("no hosts left to run on (every host was excluded)", EXIT_FAILED)
    ssh = ssh_client(config["remote.ssh_options"], remote_ssh_config, config["remote.engine"])
    ack_timeout = parse_duration(remote_cancel_timeout)
    prefix = len(targets) > 1 or bool(remote_host_lists)
    # One host reads our stdin, as with ssh; a fan-out does not (as pdsh).
    stdin_fd = None if remote_no_stdin or prefix else sys.stdin.fileno()
    results = fan_out(
        targets,
        spec,
        ssh,
        # --json: the document is stdout, so the hosts' stdout goes to stderr.
        OutputSink(prefix, stdout=sys.stderr.buffer if json_file == "-" else None),
        stdin_fd=stdin_fd,
        fanout=config["remote.fanout"],
        cancel_timeout=ack_timeout,
        outlive_caller=outlive_caller,
    )
    write_hosts_json(json_file, results)
    for result in results:
        if result.error is not None:
            click.echo(f"tether: {result.target.label}: {result.error}", err=True)
        report = result.report
        if report is None or quiet:
            continue
        terminated = (
            bool([m for m in report.get("members", ()) if m.get("outcome") == "killed"])
            or result.timed_out
            or result.cancelled is not None
            or not report.get("complete", False)
        )
        if verbose or terminated:
            click.echo(render_host_report(result, prefix), err=True)
        if not report.get("complete", False):
            survivors = report.get("survivors", [])
            click.echo(
                f"tether: {result.target.label}: {len(survivors)} remote member(s) survived the "
                "policy: " + ", ".join(f"pid {s['pid']} ({s['state']})" for s in survivors),
                err=True,
            )
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(worst([r.exit_status for r in results]))
