"""``tether completion SHELL``: the shell completion script (click's own)."""

from __future__ import annotations

import click

_EPILOG = """\
\b
Install, for example:
  bash:  tether completion bash > /etc/bash_completion.d/tether
  zsh:   tether completion zsh > "${fpath[1]}/_tether"
  fish:  tether completion fish > ~/.config/fish/completions/tether.fish

\b
EXIT STATUS:
  0  the script was printed
  2  unknown shell
"""


@click.command(
    "completion", epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> None:
    """Print the completion script for SHELL."""
    from click.shell_completion import get_completion_class

    from tether.cli import cli

    cls = get_completion_class(shell)
    assert cls is not None
    comp = cls(cli, {}, "tether", "_TETHER_COMPLETE")
    click.echo(comp.source())
