"""``tether schema``: the JSON Schemas of every ``--json`` output, as installed."""

from __future__ import annotations

from importlib import resources

import click

from tether.errors import UsageError

_SUFFIX = ".schema.json"

_EPILOG = """\
Each schema has an $id (https://tether.invalid/schemas/NAME.schema.json,
a name, not fetched) and refers to the others by file name, so a validator
resolves them next to each other: e.g. save every one with
`for s in $(tether schema); do tether schema $s > $s.schema.json; done`.

\b
EXIT STATUS:
  0  the schema (or the list) was printed
  2  no schema has that NAME
"""


def schema_names() -> list[str]:
    """The installed schemas' names (``run``, ``kill``, ``report``...)."""
    folder = resources.files("tether") / "schemas"
    return sorted(p.name[: -len(_SUFFIX)] for p in folder.iterdir() if p.name.endswith(_SUFFIX))


@click.command("schema", epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name", required=False, metavar="[NAME]")
def schema_command(name: str | None) -> None:
    """Print the JSON Schema of a --json output (run, kill, ps, reap,
    config, prune, epilog, cancel, and the report and remote parts they
    share); without NAME, list the names."""
    names = schema_names()
    if name is None:
        click.echo("\n".join(names))
        return
    name = name.removesuffix(_SUFFIX)
    if name not in names:
        raise UsageError(f"no schema named {name!r}; known: {', '.join(names)}")
    text = (resources.files("tether") / "schemas" / f"{name}{_SUFFIX}").read_text("utf-8")
    click.echo(text, nl=not text.endswith("\n"))
