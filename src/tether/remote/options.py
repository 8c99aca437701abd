"""The ``tether run`` options that send a job to remote hosts (kept import-light)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

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
