"""``tether config``: the effective configuration and where each value came from."""

from __future__ import annotations

import json

import click

from tether.config import SETTINGS, SYSTEM_CONFIG_FILE, load_config
from tether.errors import UsageError

_EPILOG = f"""\
Files are read in this order, each overriding the ones before it key by key:
{SYSTEM_CONFIG_FILE}, $XDG_CONFIG_HOME/tether/tether.toml (else
~/.config/tether/tether.toml), then the file named by TETHER_CONFIG (which must
exist). Flags of the other commands override every file. The text output is
itself a valid tether.toml; see docs/configuration.md for every setting.

\b
EXIT STATUS:
  0  the configuration was printed
  2  a configuration file is malformed (tether: FILE:LINE: message),
     TETHER_CONFIG names a missing file, or an unknown KEY was asked for
"""


@click.command("config", epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: {schema, files, settings: [{key, value, source, ...}], effective_policy}.",
)
@click.argument("keys", nargs=-1, metavar="[KEY]...")
def config_command(as_json: bool, keys: tuple[str, ...]) -> None:
    """Print the effective configuration: every setting, its value, and where
    the value came from (default, FILE:LINE, or TETHER_CONFIG).

    With KEYs (e.g. termination.policy), print only those settings' values,
    one per line, as TOML values.
    """
    config = load_config()
    known = {s.key for s in SETTINGS}
    for key in keys:
        if key not in known:
            raise UsageError(f"unknown setting {key!r} (see tether config)")
    if as_json:
        out = config.to_dict()
        if keys:
            out["settings"] = [s for s in out["settings"] if s["key"] in keys]
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if keys:
        for key in keys:
            click.echo(config.setting(key).text)
        return
    read = [f"{f.path}{' (TETHER_CONFIG)' if f.via_env else ''}" for f in config.files if f.found]
    click.echo("# tether configuration: effective values; each comment says where it came from")
    click.echo(f"# files read: {', '.join(read) if read else 'none (built-in defaults)'}")
    click.echo(f"# effective termination policy: {config.policy_for_run()}")
    click.echo(config.render_toml(), nl=False)
