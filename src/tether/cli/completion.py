"""``tether completion SHELL``: the shell completion script.

click's scripts, with two additions: where tether has nothing to offer (an
option's value such as ``--json-file PATH``, a pid) the shell completes file
names, as it would without any completion; and the job's command line of
``tether run [OPTIONS] [--] COMMAND ARGS...`` is handed to the shell's own
completion for COMMAND (bash-completion's ``_command_offset``, zsh's
``_normal``, fish's ``__fish_complete_subcommand``; without bash-completion,
command names, then files). The scripts ask ``tether completion SHELL
--complete`` for the words to offer (COMP_WORDS and COMP_CWORD in the
environment, as click's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import click
from click.shell_completion import (
    BashComplete,
    CompletionItem,
    FishComplete,
    ShellComplete,
    ZshComplete,
)

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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

# The type "command": VALUE is the index in the words (0: tether) where the
# job's command starts; the shell completes from there as a command line.
_BASH = r"""
%(complete_func)s() {
    local IFS=$'\n'
    local response cur="${COMP_WORDS[COMP_CWORD]}"

    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD \
        %(prog_name)s completion bash --complete)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'command' ]]; then
            if declare -F _comp_command_offset >/dev/null; then
                _comp_command_offset "$value"
            elif declare -F _command_offset >/dev/null; then
                _command_offset "$value"
            else
                # No bash-completion: command names, then files.
                COMPREPLY=()
                if (( COMP_CWORD == value )); then
                    COMPREPLY=($(compgen -c -- "$cur"))
                fi
                if (( ${#COMPREPLY[@]} == 0 )); then
                    COMPREPLY=($(compgen -f -- "$cur"))
                    compopt -o filenames 2>/dev/null
                fi
            fi
            return 0
        elif [[ $type == 'dir' ]]; then
            COMPREPLY+=($(compgen -d -- "$cur"))
            compopt -o filenames 2>/dev/null
        elif [[ $type == 'file' ]]; then
            COMPREPLY+=($(compgen -f -- "$cur"))
            compopt -o filenames 2>/dev/null
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=($value)
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""

_ZSH = r"""#compdef %(prog_name)s

%(complete_func)s() {
    local -a completions
    local -a completions_with_descriptions
    local -a response
    (( ! $+commands[%(prog_name)s] )) && return 1

    response=("${(@f)$(env COMP_WORDS="${words[*]}" COMP_CWORD=$((CURRENT-1)) \
        %(prog_name)s completion zsh --complete)}")

    for type key descr in ${response}; do
        if [[ "$type" == "command" ]]; then
            # The job's command line, completed as if typed on its own.
            words=("${(@)words[$((key + 1)),-1]}")
            (( CURRENT -= key ))
            _normal
            return
        elif [[ "$type" == "plain" ]]; then
            if [[ "$descr" == "_" ]]; then
                completions+=("$key")
            else
                completions_with_descriptions+=("$key":"$descr")
            fi
        elif [[ "$type" == "dir" ]]; then
            _path_files -/
        elif [[ "$type" == "file" ]]; then
            _path_files -f
        fi
    done

    if [ -n "$completions_with_descriptions" ]; then
        _describe -V unsorted completions_with_descriptions -U
    fi

    if [ -n "$completions" ]; then
        compadd -U -V unsorted -a completions
    fi
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    # autoload from fpath, call function directly
    %(complete_func)s "$@"
else
    # eval/source/. command, register function for later
    compdef %(complete_func)s %(prog_name)s
fi
"""

_FISH = r"""function %(complete_func)s;
    set -l response (env COMP_WORDS=(commandline -cp) COMP_CWORD=(commandline -t) \
        %(prog_name)s completion fish --complete);

    for completion in $response;
        set -l metadata (string split -m 2 \t -- $completion);

        if test $metadata[1] = "command";
            # The job's command line, completed as if typed on its own.
            set -l tokens (commandline -cop) (commandline -ct);
            __fish_complete_subcommand --commandline $tokens[(math $metadata[2] + 1)..-1];
            return;
        else if test $metadata[1] = "dir";
            __fish_complete_directories $metadata[2];
        else if test $metadata[1] = "file";
            __fish_complete_path $metadata[2];
        else if test $metadata[1] = "plain";
            if test -n "$metadata[3]";
                printf '%%s\t%%s\n' $metadata[2] $metadata[3];
            else;
                printf '%%s\n' $metadata[2];
            end;
        end;
    end;
end;

complete --no-files --command %(prog_name)s --arguments "(%(complete_func)s)";
"""


def job_command_start(args: Sequence[str], incomplete: str) -> int | None:
    """Where the job's command starts in ``args`` (the words after ``tether``)
    if the word being completed belongs to it (``tether run [OPTIONS] [--]
    COMMAND ARGS...``), else None.

    The index may be ``len(args)``: the word being completed is the command.
    """
    from tether.cli import _command_index, cli

    at = _command_index(args)
    if at is None or args[at] != "run":
        return None
    run = cli.get_command(click.Context(cli), "run")
    assert run is not None
    takes_value = {
        name
        for p in run.params
        if isinstance(p, click.Option) and not p.is_flag and not p.count
        for name in (*p.opts, *p.secondary_opts)
    }
    i = at + 1
    while i < len(args):
        word = args[i]
        if word == "--":
            return i + 1
        if not word.startswith("-") or word == "-":
            return i
        i += 2 if word in takes_value else 1
    if i > len(args) or incomplete.startswith("-"):
        return None  # completing an option, or an option's value
    return len(args)


class _Fallback(ShellComplete):
    """Files where click offers nothing; the job's command to the shell."""

    def get_completions(self, args: list[str], incomplete: str) -> list[CompletionItem]:
        start = job_command_start(args, incomplete)
        if start is not None:
            # +1: the shell counts ``tether`` itself.
            return [CompletionItem(str(start + 1), type="command")]
        items = super().get_completions(args, incomplete)
        if not items and not incomplete.startswith("-"):
            return [CompletionItem(incomplete, type="file")]
        return items


class _Bash(_Fallback, BashComplete):
    source_template = _BASH


class _Zsh(_Fallback, ZshComplete):
    source_template = _ZSH


class _Fish(_Fallback, FishComplete):
    source_template = _FISH

    def format_completion(self, item: CompletionItem) -> str:
        # One line per item (fish reads the output line by line): TYPE, VALUE
        # and HELP apart by tabs, none inside them.
        value, help_ = (
            " ".join(t.replace("\t", " ").splitlines()) for t in (item.value, item.help or "")
        )
        return f"{item.type}\t{value}\t{help_}"


_SHELLS: dict[str, type[ShellComplete]] = {"bash": _Bash, "zsh": _Zsh, "fish": _Fish}


@click.command(
    "completion", epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.argument("shell", type=click.Choice(list(_SHELLS)))
@click.option(
    "--complete",
    is_flag=True,
    hidden=True,
    help="(Called by the script) the words to offer for COMP_WORDS and COMP_CWORD.",
)
def completion_command(shell: str, complete: bool) -> None:
    """Print the completion script for SHELL.

    Besides tether's commands and options, the script completes file names
    where tether has nothing to offer (--json-file PATH), and the job's
    command line after `tether run [OPTIONS] [--]` as one of its own:
    command names, then that command's own completion (bash-completion's,
    zsh's or fish's), else files.
    """
    from tether.cli import cli

    ctx_args: dict[str, Any] = {}
    comp = _SHELLS[shell](cli, ctx_args, "tether", "_TETHER_COMPLETE")
    if complete:
        import os

        if "COMP_WORDS" not in os.environ or "COMP_CWORD" not in os.environ:
            raise click.UsageError("--complete needs COMP_WORDS and COMP_CWORD")
        # A bad COMP_CWORD, an unbalanced quote: nothing to offer.
        with contextlib.suppress(ValueError):
            click.echo(comp.complete())
        return
    click.echo(comp.source())
