"""`ztpki factory`: the loading station, production batches, trust bundle and manifests."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from rich.markup import escape
from rich.table import Table

from ztpki.casystem.client import CAClient
from ztpki.cli.common import console, err_console, plain, print_json
from ztpki.credentials import Credential
from ztpki.errors import ConfigurationError
from ztpki.factory.configuration import PARAMETER_NAMES, CAClientConfig
from ztpki.factory.shipping import devices_manifest, factory_chain, load_trust_bundle
from ztpki.factory.signer import SIGNER_ENV, enroll_signer, verify_own_manifest, write_manifest
from ztpki.factory.station import LoadingStation
from ztpki.pki.pem import certificates_pem, fingerprint_sha256, serial_hex
from ztpki.pki.pkcs11_uri import Pkcs11Uri
from ztpki.protocol.manifest import Manifest, manifest_document
from ztpki.secretfiles import resolve_passphrase, write_public_file
from ztpki.untrusted import displayable

CLIENT_ENV = "ZTPKI_CLIENT_PASSPHRASE"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
F = TypeVar("F", bound=Callable[..., Any])


def say(text: str) -> None:
    """One message line: never wrapped, so serials and paths stay whole for copy and paste."""
    console.print(text, soft_wrap=True, highlight=False)


def passphrase(path: Path | None, env_var: str, what: str) -> bytes | None:
    """A passphrase from a file or the environment; None when neither is given."""
    if path is None and not os.environ.get(env_var):
        return None
    return resolve_passphrase(passphrase_file=path, env_var=env_var, what=what)


def client_credential(directory: Path, passphrase_file: Path | None) -> Credential:
    secret = passphrase(passphrase_file, CLIENT_ENV, "the CA-client key")
    return Credential.load(
        directory, passphrase=secret, passphrase_source=f"--client-passphrase-file or {CLIENT_ENV}"
    )


def ca_connection_options(func: F) -> F:
    """How a factory command reaches the CA system: its address and the CA-client to be."""
    options = [
        click.option("--ca", "ca_address", required=True, help="The CA system, HOST:PORT."),
        click.option(
            "--client-cred",
            required=True,
            type=click.Path(path_type=Path, file_okay=False, exists=True),
            help="CA-client credential directory (from `ztpki ca add-client`).",
        ),
        click.option(
            "--client-passphrase-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help=f"Passphrase of the CA-client key (default: ${CLIENT_ENV}).",
        ),
        click.option("--ca-name", help="CA inside the CA system (default: its default CA)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def ca_options(func: F) -> F:
    """The options every command that has the factory CA system issue shares."""
    func = click.option(
        "--trust",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Factory trust bundle (PEM); default: the root the CA system returns.",
    )(func)
    return ca_connection_options(func)


def request_options(func: F) -> F:
    options = [
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Optional request parameter; KEY is one of {', '.join(PARAMETER_NAMES)}.",
        ),
        click.option("--model", help="Device model, recorded in the device and the manifest."),
        click.option("--batch", help="Production batch name (A-Z a-z 0-9 . _ -)."),
        click.option(
            "--reissue",
            is_flag=True,
            help="Replace a temporary identity the device already has (the CA supersedes it).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def device_token(text: str) -> str:
    """The --token URI, checked to name a token (and no key object: the keys are made there)."""
    uri = Pkcs11Uri.parse(text)
    if uri.token is None and uri.serial is None and uri.slot_id is None:
        raise ConfigurationError("--token names no token: give pkcs11:token=LABEL")
    if uri.object is not None or uri.id is not None:
        raise ConfigurationError(
            "--token names a token, not a key: leave out object= and id= (the device's keys "
            "are generated in the token)"
        )
    return uri.text


def check_name(value: str | None, option: str) -> None:
    if value is not None and not _NAME.fullmatch(value):
        raise ConfigurationError(f"{option} {value[:64]!r} must be 1-64 of A-Z a-z 0-9 . _ -")


def trust_bundle(path: Path | None) -> tuple[x509.Certificate, ...]:
    return load_trust_bundle(path) if path is not None else ()


@click.group()
def factory() -> None:
    """The factory: loading station (4), first CA-client (3), batches and manifests."""


@factory.command("load")
@click.option(
    "--device",
    "device_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The device memory directory (created blank when absent).",
)
@click.option("--device-id", required=True, help="The device identity to load.")
@click.option(
    "--token",
    metavar="URI",
    help="The device's PKCS#11 token (pkcs11:token=LABEL): its keys are generated and kept "
    "there, never in a file (module and PIN: ZTPKI_PKCS11_MODULE, ZTPKI_PKCS11_PIN).",
)
@click.option(
    "--keygen",
    type=click.Choice(["ca", "device", "station"]),
    help="Who generates the temporary key: the factory CA (default without --token), the "
    "device's token (default with --token), or the loading station's token (--station-token), "
    "which wraps it into the device's token.",
)
@click.option(
    "--station-token",
    metavar="URI",
    help="The loading station's PKCS#11 token, for --keygen station (same module and PIN).",
)
@ca_options
@request_options
def load_command(
    device_dir: Path,
    device_id: str,
    token: str | None,
    keygen: str | None,
    station_token: str | None,
    ca_address: str,
    client_cred: Path,
    client_passphrase_file: Path | None,
    ca_name: str | None,
    trust: Path | None,
    params: tuple[str, ...],
    model: str | None,
    batch: str | None,
    reissue: bool,
) -> None:
    """Load one device and signal it to request its temporary identity."""
    check_name(batch, "--batch")
    if token is not None:
        token = device_token(token)
    keygen = keygen or ("device" if token else "ca")
    if (keygen == "ca") != (token is None):
        raise ConfigurationError(
            f"--keygen {keygen} " + ("takes no --token" if token else "needs --token URI")
        )
    if (keygen == "station") != (station_token is not None):
        raise ConfigurationError("--keygen station and --station-token URI go together")
    if station_token is not None:
        station_token = device_token(station_token)
        if station_token == token:
            raise ConfigurationError("--station-token must be another token than --token")
    station = LoadingStation(
        token=token,
        station_token=station_token,
        ca=CAClientConfig(ca_address, client_cred, ca_name, params),
        client_passphrase=passphrase(client_passphrase_file, CLIENT_ENV, "the CA-client key"),
        trust=trust_bundle(trust),
        model=model,
        batch=batch,
    )
    accepted = asyncio.run(station.load(device_dir, device_id, reissue=reissue))
    cert = accepted.certificate
    say(
        f"device [bold]{device_id}[/]: temporary identity stored in {device_dir}\n"
        f"  certificate {cert.subject.rfc4514_string()} serial {serial_hex(cert)}\n"
        f"  issued by {cert.issuer.rfc4514_string()}, valid until "
        f"{cert.not_valid_after_utc.isoformat(timespec='seconds')}\n"
        f"  sha256 {fingerprint_sha256(cert)}"
    )


def load_signer(directory: Path | None, passphrase_file: Path | None) -> Credential | None:
    if directory is None:
        return None
    secret = passphrase(passphrase_file, SIGNER_ENV, "the manifest signer key")
    return Credential.load(
        directory, passphrase=secret, passphrase_source=f"--signer-passphrase-file or {SIGNER_ENV}"
    )


def signed_manifest(
    devices: Path,
    signer: Credential,
    batch: str | None,
    order: str | None,
    manufacturer: str | None,
) -> tuple[Manifest, bytes]:
    manifest, signed, skipped = devices_manifest(
        devices, signer, batch=batch, order=order, manufacturer=manufacturer, now=datetime.now(UTC)
    )
    for item in skipped:
        err_console.print(f"not in manifest: {item.path}: {item.reason}", markup=False)
    return manifest, signed


@factory.command("signer")
@ca_options
@click.option("--name", "signer_id", required=True, help="Identity of the manifest signer.")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Credential directory to write (key.pem encrypted, cert.pem, ca.pem).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Passphrase for the signer key (default: ${SIGNER_ENV}).",
)
@click.option("--reissue", is_flag=True, help="Replace the signer's live certificate.")
def signer_command(
    ca_address: str,
    client_cred: Path,
    client_passphrase_file: Path | None,
    ca_name: str | None,
    trust: Path | None,
    signer_id: str,
    out: Path,
    passphrase_file: Path | None,
    reissue: bool,
) -> None:
    """Enroll a manifest-signing credential with a CA whose profile is manifest-signer."""
    if ca_name is None:
        raise ConfigurationError("give --ca-name: the CA whose profile is manifest-signer")
    secret = resolve_passphrase(
        passphrase_file=passphrase_file, env_var=SIGNER_ENV, what="the manifest signer key"
    )
    credential = client_credential(client_cred, client_passphrase_file)
    config = CAClientConfig(ca_address, client_cred, ca_name)

    async def run() -> Credential:
        client = CAClient(config.address, credential, pool_size=1)
        try:
            return await enroll_signer(
                client,
                signer_id=signer_id,
                ca_name=ca_name,
                trust=trust_bundle(trust),
                now=datetime.now(UTC),
                reissue=reissue,
            )
        finally:
            await client.close()

    signer = asyncio.run(run())
    signer.save(out, passphrase=secret)
    cert = signer.certificate
    say(
        f"manifest signer [bold]{signer_id}[/] saved in {out}: serial {serial_hex(cert)}, "
        f"valid until {cert.not_valid_after_utc.isoformat(timespec='seconds')}\n"
        f"  sha256:{fingerprint_sha256(cert)} (customers may pin it: `ztpki node "
        "add-manufacturer ... --manifest-signer-fingerprint`)"
    )


@factory.command("sign-manifest")
@click.option(
    "--devices",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Directory holding one device directory per device.",
)
@click.option(
    "--signer",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Manifest signer credential (from `factory signer`).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--order", help="Customer order the manifest is for.")
@click.option("--batch", help="Only devices of this batch.")
@click.option("--manufacturer", help="Manufacturer name (default: the signer's O).")
@click.option(
    "--signer-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Passphrase of the signer key (default: ${SIGNER_ENV}).",
)
def sign_manifest_command(
    devices: Path,
    signer: Path,
    out: Path,
    csv_path: Path | None,
    order: str | None,
    batch: str | None,
    manufacturer: str | None,
    signer_passphrase_file: Path | None,
) -> None:
    """Build and sign a shipping manifest from device directories.

    The JSON file is the signed manifest (a JWS). The CSV view is NOT signed: customers
    must import the JSON file.
    """
    credential = load_signer(signer, signer_passphrase_file)
    assert credential is not None
    manifest, signed = signed_manifest(devices, credential, batch, order, manufacturer)
    write_manifest(out, manifest, signed, csv_path=csv_path)
    say(f"signed manifest of {len(manifest.entries)} device(s): {out}")


@factory.command("verify-manifest")
@click.argument("manifest_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--trust",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The factory trust bundle (PEM) the signer must chain to.",
)
@click.option("--json", "as_json", is_flag=True)
def verify_manifest_command(manifest_file: Path, trust: Path, as_json: bool) -> None:
    """Check a signed manifest and list its devices; exit 1 when it does not verify."""
    try:
        data = manifest_file.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {manifest_file}: {exc.strerror}") from None
    verified = verify_own_manifest(data, anchors=load_trust_bundle(trust), now=datetime.now(UTC))
    m = verified.manifest
    if as_json:
        print_json({**manifest_document(m), "signer": verified.signer.subject.rfc4514_string()})
        return
    header = (
        f"manifest {m.manifest_id} from {m.manufacturer}, signed by "
        f"{verified.signer.subject.rfc4514_string()}; {len(m.entries)} device(s)"
    )
    say("[green]valid[/] " + escape(displayable(header)))  # the factory's text, as text
    table = Table("device id", "temporary certificate sha256", "model", "batch", "manufactured")
    for e in m.entries:
        table.add_row(
            plain(e.device_id),
            plain(e.temp_fingerprint),
            plain(e.model),
            plain(e.batch),
            plain(e.manufactured_at.isoformat(timespec="seconds")),
        )
    console.print(table)


@factory.command("export-trust")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="The factory CA-system directory.",
)
@click.option("--name", required=True, help="The factory CA (its chain up to the root).")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False))
def export_trust_command(directory: Path, name: str, out: Path) -> None:
    """Write the factory trust bundle: PEM of the CA certificate, intermediates and root."""
    chain = factory_chain(directory, name)
    write_public_file(out, certificates_pem(chain))
    for cert in chain:
        say(f"  {cert.subject.rfc4514_string()}  sha256 {fingerprint_sha256(cert)}")
    say(f"factory trust bundle of CA {name} ({len(chain)} certificates): {out}")


__all__ = ["factory"]
