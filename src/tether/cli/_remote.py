"""``tether run --host/-w``: the remote options, and the fan-out's output and exit status.

The fan-out itself is :func:`tether.remote.fanout.fan_out` (no click there).
Exit status of a remote ``tether run``: each host's status follows ``tether
run`` (124 timed out; 125 tether failed: unreachable host, authentication or
host key failure, no usable python3, lost connection, or members survived;
126/127 command not executable/not found there; 128+N the leader was killed by
signal N; otherwise the command's status), and the overall status is the
largest of them (as ``pdsh -S``). In a fan-out each failing host also gets one
line on stderr naming its status as it ends (``tether: h01: exited with exit
code 3``, as pdsh's ``ssh exited with exit code 3``).

Kept import-light at module level, click included: ``tether run`` declares
these options on every start, local or not, and a click-free path can call
:func:`run_remote` (click's options are built by :func:`with_remote_options`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tether._collector import gc_back_on
from tether.cli._common import EXIT_FAILED, echo_err, fail, write_json

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from tether.config import EffectiveConfig
    from tether.remote.client import HostResult, SshOptions
    from tether.spec import JobSpec

#: The schema of ``--json`` for remote runs and ``tether cancel``.
JSON_SCHEMA = 1


def _click_options() -> list[Callable[[Any], Any]]:
    import click

    return [
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
        click.option("-l", "--login", "remote_login", metavar="USER",
                     help="Log in as USER on every host that names no USER@ (as pdsh/clush -l)."),
        click.option("-N", "--no-host-prefix", "remote_no_prefix", is_flag=True,
                     help="Fan-out output without the 'host: ' prefix; lines stay whole "
                          "(as pdsh -N)."),
        click.option("-b", "--gather", "remote_gather", is_flag=True,
                     help="Gather each host's stdout and print identical outputs once, under "
                          "a header naming their hosts, e.g. node[01-03] (as clush -b, "
                          "dshbak -c)."),
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
    for option in reversed(_click_options()):
        f = option(f)
    return f


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


def ssh_client(
    options: Sequence[str], config: str | None, engine: str = "auto", login: str | None = None
) -> SshOptions:
    """How to run the ssh client: ``-o`` options, ``-F`` file, the remote engine,
    ``-l`` user; checked."""
    import os

    from tether.remote.client import SshOptions
    from tether.remote.hostlist import HostListError, parse_target

    for opt in options:
        if not opt or "\n" in opt or "\0" in opt:
            raise HostListError(f"bad ssh option {opt!r}")
    if config is not None and not os.path.isfile(config):
        raise HostListError(f"ssh config file {config!r} does not exist")
    if login is not None:
        # The same rule as USER@ in a target: ssh reads it as an argument.
        parse_target(f"{login}@host")
    return SshOptions(tuple(options), config, engine=engine, login_user=login)


def status_line(result: HostResult, fan_out: bool) -> str | None:
    """The one stderr line for a host that failed (None if it did not).

    A single host says only what went wrong (its status is tether's); a
    fan-out names each failing host's status too.
    """
    import signal

    from tether.sanitize import visible

    status = result.exit_status
    label = visible(result.target.label)
    if result.error is not None:
        what = visible(result.error)
    elif result.report is not None and not result.report.get("complete", False):
        survivors = result.report.get("survivors", [])
        what = f"{len(survivors)} remote member(s) survived the policy: " + ", ".join(
            visible(f"pid {s.get('pid')} ({s.get('state')})") for s in survivors
        )
    elif not fan_out or status == 0:
        return None
    elif result.timed_out:
        what = "timed out"
    elif isinstance(result.returncode, int) and result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name.removeprefix("SIG")
        except ValueError:
            name = str(-result.returncode)
        what = f"killed by signal {name}"
    else:
        # As pdsh: "ssh exited with exit code 3".
        return f"tether: {label}: exited with exit code {status}"
    return f"tether: {label}: {what}" + (f" (exit code {status})" if fan_out else "")


def write_gathered(stream: Any, outputs: dict[str, bytes], labels: bool) -> None:
    """clush -b: each distinct output once, after a header naming its hosts (in
    the order the hosts were given)."""
    from tether.remote.hostlist import compress
    from tether.sanitize import visible

    groups: dict[bytes, list[str]] = {}
    for label, data in outputs.items():
        if data:
            groups.setdefault(data, []).append(label)
    for data, hosts in groups.items():
        if labels:
            rule = b"-" * 15 + b"\n"
            head = f"{visible(compress(hosts))} ({len(hosts)})\n".encode()
            stream.write(rule + head + rule)
        stream.write(data if data.endswith(b"\n") else data + b"\n")
    stream.flush()


def write_hosts_json(target: str | None, results: list[HostResult]) -> None:
    """``--json FILE``: ``{"schema": 1, "hosts": [...]}``."""
    if target is None:
        return  # no --json: nothing to build
    from tether.sanitize import json_dumps

    document = {"schema": JSON_SCHEMA, "hosts": [r.to_dict() for r in results]}
    # A host's HELLO and report are its own bytes: a NaN there would make the
    # file not JSON (jq refuses bare NaN), a lone surrogate not UTF-8.
    write_json(target, json_dumps(document, indent=2, non_finite_as_null=True))


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
    remote_login: str | None = None,
    remote_no_prefix: bool = False,
    remote_gather: bool = False,
) -> NoReturn:
    """Run ``spec`` on every target; exit with the largest host status.

    ``config`` carries the merged remote settings (``remote.fanout``,
    ``remote.engine``, ``remote.ssh_options``: see :func:`remote_flags`).
    """
    import contextlib
    import sys

    from tether.policy import parse_duration
    from tether.remote.client import GATHER_LIMIT, OutputSink, render_host_report, worst
    from tether.remote.fanout import fan_out
    from tether.remote.hostlist import resolve_targets

    if spec.leftovers == "wait":
        fail("--wait-leftovers is not supported with --host/-w", EXIT_FAILED)
    targets = resolve_targets(remote_hosts, remote_host_lists, remote_excludes)
    if not targets:
        fail("no hosts left to run on (every host was excluded)", EXIT_FAILED)
    ssh = ssh_client(
        config["remote.ssh_options"], remote_ssh_config, config["remote.engine"], remote_login
    )
    ack_timeout = parse_duration(remote_cancel_timeout)
    prefix = len(targets) > 1 or bool(remote_host_lists)
    # One host reads our stdin, as with ssh; a fan-out does not (as pdsh).
    stdin_fd = None if remote_no_stdin or prefix else sys.stdin.fileno()
    # --json: the document is stdout, so the hosts' stdout goes to stderr.
    stdout = sys.stderr.buffer if json_file == "-" else sys.stdout.buffer
    sink = OutputSink(prefix, stdout=stdout, labels=not remote_no_prefix, gather=remote_gather)
    gc_back_on()  # the hosts' jobs may run for long

    def report_status(result: HostResult) -> None:
        line = status_line(result, prefix)
        if line is not None:
            echo_err(line)

    results = fan_out(
        targets,
        spec,
        ssh,
        sink,
        stdin_fd=stdin_fd,
        fanout=config["remote.fanout"],
        cancel_timeout=ack_timeout,
        outlive_caller=outlive_caller,
        # Gathered output comes at the end: so do the status lines (as clush -b).
        on_done=None if remote_gather else report_status,
    )
    if remote_gather:
        outputs = sink.gathered()
        write_gathered(
            stdout,
            {r.target.label: outputs.get(r.target.label, b"") for r in results},
            labels=not remote_no_prefix,
        )
        for label in sink.truncated:
            echo_err(
                f"tether: {label}: output cut: -b keeps at most "
                f"{GATHER_LIMIT >> 20} MiB for all hosts together"
            )
        for result in results:
            report_status(result)
    write_hosts_json(json_file, results)
    for result in results:
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
            echo_err(render_host_report(result, prefix))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(worst([r.exit_status for r in results]))
