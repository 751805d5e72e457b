"""`ztpki completion SHELL`: the shell's completion script, written by click itself."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
# The variable the script sets when it asks `ztpki` for completions: the one click's main()
# listens for, which it derives from the program name (run_command passes "ztpki").
COMPLETE_VAR = "_ZTPKI_COMPLETE"


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash:  eval "$(ztpki completion bash)"   in ~/.bashrc
    zsh:   eval "$(ztpki completion zsh)"    in ~/.zshrc
    fish:  ztpki completion fish > ~/.config/fish/completions/ztpki.fish
    """
    root = ctx.find_root()
    complete = get_completion_class(shell)
    assert complete is not None  # every name in SHELLS is one click knows
    script = complete(root.command, {}, root.info_name or "ztpki", COMPLETE_VAR).source()
    click.echo(script, nl=not script.endswith("\n"))
