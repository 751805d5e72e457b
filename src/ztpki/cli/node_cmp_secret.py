"""`ztpki node set-cmp-secret`: a device's CMP shared secret for MAC-based protection."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from ztpki.cli.common import console
from ztpki.cli.node import node
from ztpki.cli.node_options import dir_option


@node.command("set-cmp-secret")
@dir_option
@click.argument("device_id")
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File (mode 0600) holding the secret, 16 bytes or more; the device gives it to "
    "`openssl cmp -secret`.",
)
@click.option(
    "--label",
    help="The one label the secret is good for (default: any label with cmp_mac_protection).",
)
@click.option("--clear", is_flag=True, help="Remove the device's secret instead.")
def set_cmp_secret_command(
    directory: Path, device_id: str, secret_file: Path | None, label: str | None, clear: bool
) -> None:
    """Let a device without a factory certificate enroll over CMP with a shared secret
    (MAC-based protection, RFC 9483 section 4.1.5), where its label's policy allows it."""
    from ztpki.node.cmp_secret_operations import (
        clear_cmp_secret,
        read_shared_secret,
        set_cmp_secret,
    )

    now = datetime.now(UTC)
    if clear == (secret_file is not None) or (clear and label is not None):
        raise click.UsageError("give --secret-file FILE (and optionally --label), or --clear")
    if clear:
        if clear_cmp_secret(directory, device_id, now=now):
            console.print(f"cleared the CMP shared secret of device {device_id}", markup=False)
        else:
            console.print(f"device {device_id} has no CMP shared secret", markup=False)
        return
    assert secret_file is not None
    set_cmp_secret(directory, device_id, read_shared_secret(secret_file), label=label, now=now)
    where = f"label {label}" if label else "any label with cmp_mac_protection = true"
    console.print(f"set the CMP shared secret of device {device_id} for {where}", markup=False)
