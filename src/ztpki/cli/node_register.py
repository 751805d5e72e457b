"""`ztpki node` commands on the access-control register and its audit trail (patent Fig. 2,
19): import manifests, list devices by hand, block, unblock, audit."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.table import Column, Table

from ztpki.cli.common import console, pages, plain, print_json_array
from ztpki.cli.node import node
from ztpki.cli.node_options import dir_option
from ztpki.store.records import AuditEntry, DeviceState, RegisteredDevice, RevocationReason
from ztpki.store.revocation_records import (
    QueuedRevocation,
    QueueStatus,
    RevocationAction,
    RevocationOrder,
)


@node.command("import")
@dir_option
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def import_command(directory: Path, manifest: Path) -> None:
    """List the devices of a signed manifest (verified against the factory trust bundles)."""
    from ztpki.node.operations import import_manifest

    result = import_manifest(directory, manifest, now=datetime.now(UTC))
    if result.already_imported:
        console.print(
            f"manifest {manifest} was imported before; nothing changed (a manifest id counts "
            "once per manufacturer)",
            markup=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"listed {result.added} device(s); {result.unchanged} already listed, left unchanged"
    )


@node.command("add")
@dir_option
@click.argument("device_id")
@click.option(
    "--fingerprint",
    help="SHA-256 of the device's temporary certificate: 64 hex digits, optionally with a "
    "sha256: prefix and colons.",
)
@click.option(
    "--manufacturer",
    help="A configured manufacturer (`node manufacturers`) whose CA must have issued the "
    "device's temporary certificate; required without --fingerprint.",
)
@click.option("--model")
def add_command(
    directory: Path,
    device_id: str,
    fingerprint: str | None,
    manufacturer: str | None,
    model: str | None,
) -> None:
    """List one device by hand: pin its temporary certificate (--fingerprint), or name the
    manufacturer whose CA issued it (--manufacturer), or both."""
    from ztpki.node.operations import add_device

    add_device(
        directory,
        device_id,
        fingerprint=fingerprint,
        manufacturer=manufacturer,
        model=model,
        now=datetime.now(UTC),
    )
    console.print(f"listed device [bold]{device_id}[/]")


# A table is printed a page at a time (rich sizes its columns from the rows it holds), so a
# register of a million devices streams through in bounded memory.
TABLE_PAGE = 500


@node.command("devices")
@dir_option
@click.option("--state", type=click.Choice([s.value for s in DeviceState]))
@click.option("--json", "as_json", is_flag=True)
def devices_command(directory: Path, state: str | None, as_json: bool) -> None:
    """The access-control register, in device id order (streamed as it is read)."""
    from ztpki.node.operations import device_json, list_devices, pending_revocations

    pending = pending_revocations(directory)
    devices = list_devices(directory, state=DeviceState(state) if state else None)
    if as_json:
        print_json_array(device_json(d, pending.get(d.device_id)) for d in devices)
        return
    count = 0
    with_orders: list[str] = []
    for page in pages(devices, TABLE_PAGE):
        console.print(_device_table(page, pending))
        count += len(page)
        with_orders += [d.device_id for d in page if d.device_id in pending]
    console.print(f"{count} device(s)")
    # One line per order, never wrapped: the serial is what an operator copies.
    for device_id in with_orders:
        for order in pending[device_id]:
            console.print(
                f"revocation {device_id}: {order.describe()}", markup=False, soft_wrap=True
            )


def _device_table(
    devices: list[RegisteredDevice], pending: dict[str, list[QueuedRevocation]]
) -> Table:
    # The device id is what an operator copies into `node block ID`: never cut it short;
    # the long hex serial and the timestamp fold onto several lines instead.
    table = Table(
        Column(
            "device",
            no_wrap=True,
            overflow="fold",
            min_width=max((len(d.device_id) for d in devices), default=6),
        ),
        "state",
        "manufacturer",
        "model",
        "batch",
        Column("issued serial", overflow="fold"),
        Column("updated", overflow="fold"),
        Column("revocations", overflow="fold"),
    )
    for d in devices:
        table.add_row(
            plain(d.device_id),
            plain(d.state.value),
            plain(d.manufacturer),
            plain(d.model),
            plain(d.batch),
            plain(d.issued_serial),
            plain(d.updated_at.isoformat(timespec="seconds")),
            plain(_open_count(pending.get(d.device_id, []))),
        )
    return table


def _open_count(orders: list[QueuedRevocation]) -> str | None:
    if not orders:
        return None
    return ", ".join(
        f"{sum(1 for o in orders if o.status is status)} {status.value}"
        for status in QueueStatus
        if any(o.status is status for o in orders)
    )


def _set_blocked(directory: Path, device_id: str, *, blocked: bool) -> None:
    from ztpki.node.operations import set_blocked

    order = set_blocked(directory, device_id, blocked=blocked, now=datetime.now(UTC))
    console.print(f"{'blocked' if blocked else 'unblocked'} device {device_id}", markup=False)
    _print_queued(order)


def _print_queued(order: RevocationOrder | None) -> None:
    if order is None:
        console.print("no certificate of it to revoke at the CA system")
        return
    what = "release of the hold" if order.action is RevocationAction.RELEASE else order.reason
    console.print(
        f"queued for the CA system: {what} of certificate {order.serial} (`ztpki node serve` "
        "sends it; `ztpki node devices` shows it until it is done)",
        markup=False,
        soft_wrap=True,
    )


@node.command("block")
@dir_option
@click.argument("device_id")
def block_command(directory: Path, device_id: str) -> None:
    """Refuse every further request of a device (an issuance in flight is discarded)."""
    _set_blocked(directory, device_id, blocked=True)


@node.command("unblock")
@dir_option
@click.argument("device_id")
def unblock_command(directory: Path, device_id: str) -> None:
    """Return a blocked device to the state it was blocked from."""
    _set_blocked(directory, device_id, blocked=False)


_RETIRE_REASONS = [
    r.value
    for r in RevocationReason
    if r not in (RevocationReason.CERTIFICATE_HOLD, RevocationReason.SUPERSEDED)
]


@node.command("retire")
@dir_option
@click.argument("device_id")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(_RETIRE_REASONS),
    help="RFC 5280 reason the CA system records (keyCompromise for a stolen device).",
)
def retire_command(directory: Path, device_id: str, reason: str) -> None:
    """Retire a device for good: its certificate is revoked and it never enrolls again."""
    from ztpki.node.operations import retire_device

    order = retire_device(
        directory, device_id, reason=RevocationReason(reason), now=datetime.now(UTC)
    )
    console.print(f"retired device {device_id}: it is never enrolled again", markup=False)
    _print_queued(order)


@node.command("audit")
@dir_option
@click.option("--device", "device_id", help="Only this device's entries.")
@click.option("--limit", type=int, help="Only the newest N entries.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--verify", is_flag=True, help="Verify the hash chain; exit 1 if it is broken.")
def audit_command(
    directory: Path, device_id: str | None, limit: int | None, as_json: bool, verify: bool
) -> None:
    """The audit trail: every decision, hash-chained."""
    from ztpki.node.operations import audit_entries, entry_json, verify_audit

    if verify:
        started = time.perf_counter()
        summary, checked = verify_audit(directory)
        seconds = time.perf_counter() - started
        rate = f", {checked / seconds:,.0f} entries/s" if checked and seconds > 0 else ""
        console.print(f"audit trail OK: {summary} in {seconds:.1f} s{rate}")
        return
    entries = audit_entries(directory, device_id=device_id, limit=limit)
    if as_json:
        print_json_array(entry_json(e) for e in entries)
        return
    for page in pages(entries, TABLE_PAGE):
        console.print(_audit_table(page))


def _audit_table(entries: list[AuditEntry]) -> Table:
    # Ids and serials fold onto several lines instead of being cut: they are copied from here.
    table = Table(
        "seq",
        Column("time", overflow="fold"),
        Column("device", overflow="fold"),
        Column("endpoint", overflow="fold"),
        "decision",
        "reason",
        Column("serial", overflow="fold"),
    )
    for e in entries:
        table.add_row(
            plain(e.seq),
            plain(e.at.isoformat(timespec="seconds")),
            plain(e.device_id),
            plain(e.endpoint),
            plain(e.decision),
            plain(e.reason),
            plain(e.serial),
        )
    return table
