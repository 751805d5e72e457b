"""`ztpki ca revoke | release-hold | crl | status`: revocation at the CA system.

Every change is durable in the store before the command reports it, and is on the CA's CRL
(``cas/NAME/crl.der``, re-signed at once) when the command returns. A running `ca serve`
re-signs the CRLs before their nextUpdate. How CA-clients revoke: docs/xml-enrollment.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from rich.table import Table

from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.revocation_operations import (
    RevocationDone,
    certificate_status,
    current_crl,
    parse_serial,
    release_hold,
    revoke_certificate,
)
from ztpki.cli.ca import CA_ENV, ca, ca_passphrase, dir_option
from ztpki.cli.common import (
    console,
    passphrase_options,
    plain,
    print_json,
    refuse_existing_output,
)
from ztpki.errors import ConfigurationError
from ztpki.secretfiles import write_public_file
from ztpki.store.records import RevocationReason

_KEY_OPTIONS = passphrase_options(
    CA_ENV,
    "the CA private key",
    insecure_help="The CA keys are stored unencrypted (`ca init --insecure-no-passphrase`): "
    "read them without a passphrase. For demos only; never in production.",
)
_name_option = click.option("--name", required=True, help="The CA.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"--invalidity-date {text[:64]!r} is not an ISO 8601 time such as 2026-12-07T09:30:00Z"
        ) from None
    if value.tzinfo is None:
        raise ConfigurationError(
            f"--invalidity-date {text[:64]!r} names no time zone; add Z for UTC"
        )
    return value.astimezone(UTC)


def _done_json(done: RevocationDone) -> dict[str, Any]:
    record = done.revocation
    return {
        "ca": done.certificate.ca_name,
        "serial": done.certificate.serial,
        "device_id": done.certificate.device_id,
        "status": "good" if record is None else "revoked",
        "reason": None if record is None else record.reason.value,
        "revoked_at": None if record is None else record.revoked_at.isoformat(),
        "invalidity_date": None
        if record is None or record.invalidity_date is None
        else record.invalidity_date.isoformat(),
        "crl_number": _crl_number(done.crl),
        "already_revoked": done.already,
    }


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


@ca.command("revoke")
@dir_option
@_name_option
@click.option("--serial", help="Serial number (hex) of the certificate to revoke.")
@click.option("--device-id", help="Revoke this device's live certificate of the CA.")
@click.option(
    "--reason",
    required=True,
    type=click.Choice([r.value for r in RevocationReason]),
    help="RFC 5280 reason; certificateHold suspends (undo with `ca release-hold`).",
)
@click.option(
    "--invalidity-date",
    help="Since when the key is not to be trusted (ISO 8601 with zone, e.g. 2026-12-07T09:30Z).",
)
@_KEY_OPTIONS
@_json_option
def revoke_command(
    directory: Path,
    name: str,
    serial: str | None,
    device_id: str | None,
    reason: str,
    invalidity_date: str | None,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
    as_json: bool,
) -> None:
    """Revoke a certificate and publish the CA's new CRL (cas/NAME/crl.der).

    Revoking again is harmless: the first revocation stands (a certificateHold may still be
    made a revocation for good).
    """
    if (serial is None) == (device_id is None):
        raise click.UsageError("give exactly one of --serial and --device-id")
    secret = ca_passphrase(directory, passphrase_file, insecure_no_passphrase)
    done = revoke_certificate(
        CASystemDirectory(directory),
        name,
        serial=None if serial is None else parse_serial(serial),
        device_id=device_id,
        reason=RevocationReason(reason),
        invalidity_date=_instant(invalidity_date),
        passphrase=secret,
        now=datetime.now(UTC),
    )
    if as_json:
        print_json(_done_json(done))
        return
    record = done.revocation
    assert record is not None
    if done.already:
        console.print(
            plain(
                f"certificate {record.serial} of device {done.certificate.device_id} at CA "
                f"{name} is already revoked at {record.revoked_at.isoformat()} "
                f"({record.reason.value}); nothing changed"
            )
        )
        return
    console.print(
        plain(
            f"revoked certificate {record.serial} of device {done.certificate.device_id} "
            f"at CA {name}: {record.reason.value} since {record.revoked_at.isoformat()}; "
            f"CRL number {_crl_number(done.crl)} published"
        )
    )


@ca.command("release-hold")
@dir_option
@_name_option
@click.option("--serial", required=True, help="Serial number (hex) of the held certificate.")
@_KEY_OPTIONS
@_json_option
def release_hold_command(
    directory: Path,
    name: str,
    serial: str,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
    as_json: bool,
) -> None:
    """Lift a certificateHold (the certificate is good again) and publish the new CRL."""
    secret = ca_passphrase(directory, passphrase_file, insecure_no_passphrase)
    done = release_hold(
        CASystemDirectory(directory),
        name,
        serial=parse_serial(serial),
        passphrase=secret,
        now=datetime.now(UTC),
    )
    if as_json:
        print_json(_done_json(done))
        return
    console.print(
        plain(
            f"released the hold on certificate {done.certificate.serial} of CA {name}; "
            f"CRL number {_crl_number(done.crl)} published"
        )
    )


@ca.command("crl")
@dir_option
@_name_option
@click.option(
    "--out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="CRL file."
)
@click.option("--pem", is_flag=True, help="Write PEM (default: DER).")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists already.")
@_KEY_OPTIONS
def crl_command(
    directory: Path,
    name: str,
    out: Path,
    pem: bool,
    force: bool,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
) -> None:
    """Write the CA's current CRL (the published one, or a new one signed when that is
    missing or due: only then is the CA passphrase needed)."""
    refuse_existing_output(out, force=force)
    crl = current_crl(
        CASystemDirectory(directory),
        name,
        passphrase=lambda: ca_passphrase(directory, passphrase_file, insecure_no_passphrase),
        now=datetime.now(UTC),
    )
    write_public_file(out, crl.public_bytes(Encoding.PEM if pem else Encoding.DER))
    console.print(
        plain(
            f"wrote CRL number {_crl_number(crl)} of CA {name} ({len(crl)} revoked, next "
            f"update {crl.next_update_utc}) to {out}"
        )
    )


@ca.command("status")
@dir_option
@_name_option
@click.option("--serial", required=True, help="Serial number (hex) of the certificate.")
@_json_option
def status_command(directory: Path, name: str, serial: str, as_json: bool) -> None:
    """Whether a certificate is good, revoked (reason and time) or unknown to the CA."""
    report = certificate_status(CASystemDirectory(directory), name, parse_serial(serial))
    record, certificate = report.revocation, report.certificate
    data: dict[str, Any] = {
        "ca": report.ca_name,
        "serial": report.serial,
        "status": report.status,
        "device_id": None if certificate is None else certificate.device_id,
        "reason": None if record is None else record.reason.value,
        "revoked_at": None if record is None else record.revoked_at.isoformat(),
        "invalidity_date": None
        if record is None or record.invalidity_date is None
        else record.invalidity_date.isoformat(),
    }
    if as_json:
        print_json(data)
        return
    table = Table("field", "value")
    for key, value in data.items():
        if value is not None:
            table.add_row(plain(key), plain(value))
    console.print(table, markup=False)
