"""``tether cancel --host``: cancel a remote job over a new connection (out of band).

Exit status: 0 the remote tree is gone (or the job had already ended); 1
members survived; 2 bad input; 125 the host could not be reached or the agent
failed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from tether.cli._common import EXIT_BAD_INPUT, EXIT_FAILED, fail, json_options, json_target
from tether.cli._remote import ssh_client, write_hosts_json

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_JOB_ID_CHARS = frozenset("0123456789abcdef")

_policy_opts: list[Callable[[Any], Any]] = [
    click.option("--policy", "policy_text", metavar="SEQ",
                 help="Termination policy (default: the one the job was started with)."),
    click.option("-o", "--ssh-option", "ssh_options", multiple=True, metavar="OPTION",
                 help="Passed to ssh as -o OPTION."),
    click.option("-F", "--ssh-config", "ssh_config", metavar="FILE",
                 help="ssh configuration file (ssh -F)."),
    *json_options("the result"),
    click.option("-q", "--quiet", is_flag=True, help="Do not print the report."),
]  # fmt: skip


@click.command(
    "cancel",
    epilog="\b\nEXIT STATUS:\n"
    "  0  the remote tree is gone (or the job had ended)\n"
    "  1  members survived the policy\n"
    "  2  bad input\n"
    "  125  the host could not be reached or its agent failed\n",
)
@click.option("--host", "host", required=True, metavar="[USER@]HOST[:PORT]",
              help="The host the job runs on.")  # fmt: skip
@_policy_opts[0]
@_policy_opts[1]
@_policy_opts[2]
@_policy_opts[3]
@_policy_opts[4]
@_policy_opts[5]
@click.argument("job_id")
def cancel_command(
    host: str,
    job_id: str,
    policy_text: str | None,
    ssh_options: tuple[str, ...],
    ssh_config: str | None,
    json_stdout: bool,
    json_file: str | None,
    quiet: bool,
) -> None:
    """Cancel remote job JOB_ID over a new connection (out of band).

    The host's journal is searched for the job; its old supervisor and
    watchdog are stopped, and what is left of its tree is terminated with the
    policy there. Works when the connection that started the job is gone or
    hung.
    """
    from tether.policy import Policy
    from tether.remote.client import cancel_job, render_host_report
    from tether.remote.hostlist import parse_target

    json_file = json_target(json_stdout, json_file)
    if not (8 <= len(job_id) <= 64) or not set(job_id) <= _JOB_ID_CHARS:
        fail(f"bad job id {job_id!r} (expected the hex id tether printed)", EXIT_BAD_INPUT)
    target = parse_target(host)
    ssh = ssh_client(ssh_options, ssh_config)
    policy = Policy.parse(policy_text) if policy_text is not None else None
    result = cancel_job(target, job_id, ssh, policy=policy)
    write_hosts_json(json_file, [result])
    if result.error is not None:
        fail(f"{target.label}: {result.error}", EXIT_FAILED)
    if not quiet and json_file != "-":
        text = render_host_report(result, prefix=False)
        if text:
            click.echo(text)
    sys.exit(result.exit_status)
