"""The `ztpki` command: a thin layer over the Python API. Each role has its own group."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import click

from ztpki.cli.common import run_command
from ztpki.errors import ZtpkiError
from ztpki.logs import LOG_FORMATS, configure_logging

# Each role's commands live in their own module, imported only when that group is used:
# `ztpki device show` must not pay for loading the node's HTTP server.
_GROUPS = {
    "ca": "ztpki.cli.ca",
    "factory": "ztpki.cli.factory",
    "node": "ztpki.cli.node",
    "device": "ztpki.cli.device",
    "demo": "ztpki.cli.demo",
    "completion": "ztpki.cli.completion",
    "doctor": "ztpki.cli.doctor",
}
# Modules that add commands to a group defined elsewhere, imported with it.
_EXTENSIONS = {
    "ca": ("ztpki.cli.ca_clients", "ztpki.cli.ca_revocation"),
    "device": ("ztpki.cli.device_agent", "ztpki.cli.device_discover"),
    "factory": ("ztpki.cli.factory_batch", "ztpki.cli.factory_recall"),
    "node": (
        "ztpki.cli.node_register",
        "ztpki.cli.node_manufacturers",
        "ztpki.cli.node_serve",
        "ztpki.cli.node_console",
        "ztpki.cli.node_cmp_secret",
    ),
}


class RoleGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_GROUPS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _GROUPS:
            return super().get_command(ctx, cmd_name)
        module = importlib.import_module(_GROUPS[cmd_name])
        for extension in _EXTENSIONS.get(cmd_name, ()):
            importlib.import_module(extension)
        command = getattr(module, cmd_name)
        assert isinstance(command, click.Command)
        return command


def show_versions(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from ztpki.versions import version_report

    click.echo(version_report())
    ctx.exit()


@click.group(cls=RoleGroup)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=show_versions,
    help="Show the versions of ztpki, cryptography and OpenSSL, and exit.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="ZTPKI_LOG_LEVEL",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="ZTPKI_LOG_FORMAT",
    help="text, or json: one JSON object a line with device_id, serial and request_id fields.",
)
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """Zero-touch device PKI: factory birth identities swapped for customer identities."""
    ctx.obj = {"log_level": log_level}  # for a service's own --log-format
    configure_logging(log_level, log_format)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status instead of exiting (testable in-process)."""
    return run_command(cli, argv)


__all__ = ["ZtpkiError", "cli", "main"]
