"""What every command group shares: error display, passphrase options, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from ztpki.errors import ZtpkiError
from ztpki.secretfiles import resolve_passphrase

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_ERROR = 1
EXIT_USAGE = 2


def run_command(group: click.Group, argv: Sequence[str] | None) -> int:
    try:
        status = group.main(
            args=list(argv) if argv is not None else None, prog_name="ztpki", standalone_mode=False
        )
    except ZtpkiError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False)
        return EXIT_ERROR
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    return status if isinstance(status, int) else 0


def passphrase_options(env_var: str, what: str) -> Callable[[F], F]:
    """--passphrase-file and --insecure-no-passphrase, resolved into a `passphrase` argument."""

    def decorate(func: F) -> F:
        func = click.option(
            "--insecure-no-passphrase",
            is_flag=True,
            help=f"Store {what} unencrypted. For demos only; never in production.",
        )(func)
        func = click.option(
            "--passphrase-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help=f"File holding the passphrase of {what} (default: ${env_var}).",
        )(func)
        return func

    return decorate


def passphrase(
    passphrase_file: Path | None, insecure: bool, env_var: str, what: str
) -> bytes | None:
    return resolve_passphrase(
        passphrase_file=passphrase_file, env_var=env_var, insecure_no_passphrase=insecure, what=what
    )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
