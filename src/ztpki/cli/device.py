"""`ztpki device`: look into a device memory (93) and act as the device with other tools."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from rich.table import Table
from rich.text import Text

from ztpki.cli.common import (
    console,
    err_console,
    passphrase,
    passphrase_options,
    plain,
    print_json,
    refuse_existing_output,
)
from ztpki.device.customer_node import NODE_CA_CERT_KEY, NODE_CA_KEY, load_node_ca
from ztpki.device.key_store import refuse_token_export
from ztpki.device.memory import DeviceMemory
from ztpki.errors import ZtpkiError
from ztpki.pki.pem import fingerprint_sha256, serial_hex

EXPORT_ENV = "ZTPKI_EXPORT_PASSPHRASE"
F = TypeVar("F", bound=Callable[..., Any])

device_option = click.option(
    "--device",
    "device_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The device memory directory.",
)


def print_error(message: str) -> None:
    """``error: MESSAGE`` on stderr, the message as plain text: it holds URLs, paths and the
    node's words, where rich markup would misread ``[/label]`` and the like."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", plain(message)), highlight=False)


def plain_errors(func: F) -> F:
    """Report a ``ZtpkiError`` of a device command as plain text with exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ZtpkiError as exc:
            print_error(exc.message)
            # SystemExit, not click's Exit: run_command drops the status of the latter.
            raise SystemExit(1) from None

    return wrapper  # type: ignore[return-value]


def certificate_summary(cert: x509.Certificate) -> dict[str, str]:
    """The fields an operator checks first, as text."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial_hex(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": fingerprint_sha256(cert),
    }


def _pinned_node_ca(config: dict[str, Any]) -> dict[str, Any] | None:
    """The pinned node CA set-node stored: its fingerprint, and its certificate when given."""
    fingerprint = config.get(NODE_CA_KEY)
    if not fingerprint:
        return None
    try:
        pem = config.get(NODE_CA_CERT_KEY)
        cert = load_node_ca(pem.encode("ascii"), NODE_CA_CERT_KEY) if pem else None
    except ZtpkiError:
        cert = None  # activate says what is wrong with it; show shows what is there
    return {"fingerprint": fingerprint, "certificate": cert and certificate_summary(cert)}


def device_summary(memory: DeviceMemory) -> dict[str, Any]:
    """Identity, phase, certificates, trust anchors and configuration of a device."""
    identity = memory.identity()
    config = memory.config()
    return {
        "device_id": memory.device_id,
        "path": str(memory.path),
        "phase": identity.phase.value,
        "generation": identity.generation,
        "certificate": identity.certificate and certificate_summary(identity.certificate),
        "ca_certificates": [certificate_summary(c) for c in identity.ca_certificates],
        "trust_anchors": [certificate_summary(c) for c in memory.trust_anchors()],
        "pinned_node_ca": _pinned_node_ca(config),
        # The PEM is summarized in pinned_node_ca.
        "config": {k: v for k, v in config.items() if k != NODE_CA_CERT_KEY},
    }


@click.group()
def device() -> None:
    """The device (1): its memory, identity and trust anchors."""


@device.command("show")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@plain_errors
def show_command(device_dir: Path, as_json: bool) -> None:
    """Identity, phase, current certificate and trust anchors of a device."""
    summary = device_summary(DeviceMemory.open(device_dir))
    if as_json:
        print_json(summary)
        return
    table = Table(show_header=False, box=None)

    def add(label: str, value: object) -> None:
        table.add_row(plain(label), plain(value))

    add("device id", summary["device_id"])
    add("phase", f"{summary['phase']} (generation {summary['generation']})")
    cert = summary["certificate"]
    if cert is None:
        add("certificate", "none")
    else:
        add("certificate", cert["subject"])
        add("  issuer", cert["issuer"])
        add("  serial", cert["serial"])
        add("  not after", cert["not_after"])
        add("  sha256", cert["sha256"])
    for ca in summary["ca_certificates"]:
        add("CA certificate", ca["subject"])
    for anchor in summary["trust_anchors"]:
        add("trust anchor", f"{anchor['subject']} sha256 {anchor['sha256']}")
    if not summary["trust_anchors"]:
        add("trust anchor", "none")
    pinned = summary["pinned_node_ca"]
    if pinned is not None:
        given = pinned["certificate"]
        held = f"{given['subject']} " if given else "(certificate not given) "
        add("pinned node CA", held + pinned["fingerprint"])
    for key, value in sorted(summary["config"].items()):
        add(f"config {key}", value)
    console.print(table, highlight=False)


@device.command("export")
@device_option
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for key.pem, cert.pem, chain.pem and trust.pem (created 0700).",
)
@click.option(
    "--force", is_flag=True, help="Overwrite the files of an --out directory that is not empty."
)
@passphrase_options(EXPORT_ENV, "the exported private key")
@plain_errors
def export_command(
    device_dir: Path,
    out: Path,
    force: bool,
    passphrase_file: Path | None,
    insecure_no_passphrase: bool,
) -> None:
    """Write the device's key and certificates as PEM, so openssl or curl can act as it.

    key.pem (0600) is encrypted with the export passphrase; --insecure-no-passphrase writes
    it in clear for tools that cannot ask for one. An --out directory that is not empty is
    refused unless --force is given. A device whose key is in a PKCS#11 token (factory load
    --token) refuses: that key never leaves the token.
    """
    refuse_existing_output(out, force=force)
    memory = DeviceMemory.open(device_dir)
    refuse_token_export(memory)  # before asking for a passphrase that could not help
    secret = passphrase(passphrase_file, insecure_no_passphrase, EXPORT_ENV, "the exported key")
    paths = memory.export_pem(out, passphrase=secret)
    for name, path in paths.items():
        console.print(f"{name:6} {path}", markup=False, soft_wrap=True)


__all__ = ["certificate_summary", "device", "device_summary", "plain_errors", "print_error"]
