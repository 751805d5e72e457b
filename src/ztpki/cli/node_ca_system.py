"""`ztpki node set-ca-system`: which instance(s) of the customer CA system the node asks."""

from __future__ import annotations

from pathlib import Path

import click

from ztpki.cli.common import console
from ztpki.cli.node_options import dir_option


@click.command("set-ca-system")
@dir_option
@click.option(
    "--ca",
    "addresses",
    required=True,
    multiple=True,
    help="HOST:PORT of the customer CA system; repeat for several instances of it sharing one "
    "store, in order of preference (the node fails over to the next).",
)
def set_ca_system_command(directory: Path, addresses: tuple[str, ...]) -> None:
    """Replace the CA-system address(es) in node.toml. Restart `node serve` to apply."""
    from ztpki.node.setup import set_ca_systems

    updated = set_ca_systems(directory, addresses)
    console.print(f"CA system: {', '.join(updated.ca_systems)}", markup=False)
