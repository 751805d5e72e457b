"""The `ztpki` command: a thin layer over the Python API. Each role has its own group."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from ztpki import __version__
from ztpki.cli.common import run_command
from ztpki.errors import ZtpkiError


@click.group()
@click.version_option(__version__, prog_name="ztpki")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="ZTPKI_LOG_LEVEL",
)
def cli(log_level: str) -> None:
    """Zero-touch device PKI: factory birth identities swapped for customer identities."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _register() -> None:
    from ztpki.cli import ca

    cli.add_command(ca.ca)
    for module_name in ("factory", "device", "node", "demo"):
        try:
            module = __import__(f"ztpki.cli.{module_name}", fromlist=[module_name])
        except ModuleNotFoundError as exc:
            if exc.name != f"ztpki.cli.{module_name}":
                raise
            continue
        cli.add_command(getattr(module, module_name))
    # Commands that extend a group defined elsewhere register themselves on import.
    for extension in ("device_agent",):
        try:
            __import__(f"ztpki.cli.{extension}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ztpki.cli.{extension}":
                raise


_register()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status instead of exiting (testable in-process)."""
    return run_command(cli, argv)


__all__ = ["ZtpkiError", "cli", "main"]
