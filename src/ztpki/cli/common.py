"""What every command group shares: error display, passphrase options, output helpers."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.text import Text

from ztpki.errors import ConfigurationError, ZtpkiError
from ztpki.secretfiles import MIN_PASSPHRASE, resolve_passphrase
from ztpki.untrusted import displayable

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
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
        # The message may hold node or user text such as "https://HOST:PORT[/label]": never
        # read it as rich markup.
        err_console.print("[bold red]error:[/]", end=" ", markup=True, highlight=False)
        err_console.print(plain(exc.message), highlight=False, soft_wrap=True)
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


def plain(value: object | None) -> Text:
    """A value from a register, audit trail, manifest, CA store or peer, ready to print.

    Such text may hold what a device, a client or a factory chose: it is never read as rich
    markup (``[/bold]`` would stop the command), and its control, format and separator
    characters are shown escaped instead of reaching the terminal (an OSC sequence could
    retitle the window, a CSI one rewrite what is on screen). Use it for every table cell.
    """
    return Text("" if value is None else displayable(value))


def passphrase_options(
    env_var: str, what: str, *, insecure_help: str | None = None
) -> Callable[[F], F]:
    """--passphrase-file and --insecure-no-passphrase, resolved into a `passphrase` argument."""

    def decorate(func: F) -> F:
        func = click.option(
            "--insecure-no-passphrase",
            is_flag=True,
            help=insecure_help or f"Store {what} unencrypted. For demos only; never in production.",
        )(func)
        func = click.option(
            "--passphrase-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help=f"File holding the passphrase of {what} (default: ${env_var}).",
        )(func)
        return func

    return decorate


def refuse_insecure_with_passphrase(
    insecure: bool,
    passphrase_file: Path | None,
    env_var: str,
    *,
    insecure_option: str = "--insecure-no-passphrase",
    file_option: str = "--passphrase-file",
) -> None:
    """A usage error when the insecure flag meets a passphrase: one of them would be ignored
    silently (the passphrase wins), and the operator would not get what they asked for."""
    if not insecure:
        return
    if passphrase_file is not None:
        raise click.UsageError(
            f"{insecure_option} and {file_option} contradict each other; give one of them"
        )
    if os.environ.get(env_var):
        raise click.UsageError(
            f"{insecure_option} was given but {env_var} is set: unset {env_var} to store the "
            f"key unencrypted, or drop {insecure_option} to use the passphrase"
        )


def passphrase(
    passphrase_file: Path | None,
    insecure: bool,
    env_var: str,
    what: str,
    *,
    minimum: int = MIN_PASSPHRASE,
) -> bytes | None:
    refuse_insecure_with_passphrase(insecure, passphrase_file, env_var)
    return resolve_passphrase(
        passphrase_file=passphrase_file,
        env_var=env_var,
        insecure_no_passphrase=insecure,
        what=what,
        minimum=minimum,
    )


def refuse_existing_output(out: Path, *, force: bool) -> None:
    """Refuse to write into an existing non-empty --out unless --force: it may hold another
    client's credential, which would be overwritten silently."""
    if force or not out.exists():
        return
    if out.is_dir():
        if not any(out.iterdir()):
            return
        what = "is a directory that is not empty"
    else:
        what = "exists already"
    raise ConfigurationError(
        f"--out {out} {what}; choose another --out, or give --force to overwrite it"
    )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_json_array(items: Iterable[Any]) -> None:
    """A JSON array written item by item as they come, one item per line: a listing may hold
    a million rows, which are never all in memory (and json's C encoder only runs unindented)."""
    write = sys.stdout.write
    opening = "[\n"
    for item in items:
        write(opening + json.dumps(item, sort_keys=True, default=str))
        opening = ",\n"
    write("[]\n" if opening == "[\n" else "\n]\n")


def pages(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), at least one list."""
    page: list[T] = []
    full = False
    for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page, full = [], True
    if page or not full:
        yield page


def _switch_log_format(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    from ztpki.logs import configure_logging

    root = ctx.find_root().obj or {}
    configure_logging(str(root.get("log_level", "info")), value)


# On each service command too (`ztpki node serve --log-format json`), where operators look for
# it; the same as `ztpki --log-format json node serve` or ZTPKI_LOG_FORMAT.
log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    expose_value=False,
    callback=_switch_log_format,
    help="text (default), or json: one JSON object a line with device_id, serial, request_id.",
)
