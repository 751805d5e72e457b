"""`ztpki node` commands on the manufacturers the node buys from: declare one, list them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from ztpki.cli.common import console, print_json
from ztpki.cli.node import node
from ztpki.cli.node_options import dir_option, manufacturer_config, manufacturer_options
from ztpki.node.config import NodeConfig
from ztpki.node.factory_crls import no_crl_warning
from ztpki.pki.pem import fingerprint_sha256

ANY_DOCUMENT_SIGNER = "any documentSigning certificate under its bundle"


def _certificates(certs: Sequence[x509.Certificate]) -> list[dict[str, str]]:
    return [{"subject": c.subject.rfc4514_string(), "sha256": fingerprint_sha256(c)} for c in certs]


def manufacturer_rows(config: NodeConfig) -> list[dict[str, Any]]:
    """One row per manufacturer, and one per bare trust bundle of an older node.toml."""
    from ztpki.node.material import factory_revocation, load_manufacturers, read_certificates

    rows: list[dict[str, Any]] = []
    makers = load_manufacturers(config)
    unconfigured = factory_revocation(config, makers).unconfigured()
    for maker in makers:
        rows.append(
            {
                "manufacturer": maker.name,
                "device_ids": maker.config.device_ids.texts(),
                "manifest_signers": [f"sha256:{p}" for p in maker.config.manifest_signers],
                "trust": str(config.path(maker.config.trust)),
                "trust_anchors": _certificates(maker.bundle),
                "crl": list(maker.config.crl),
                "crl_refresh_minutes": maker.config.crl_refresh_minutes,
                "fail_open": maker.config.fail_open,
                "crl_configured": maker.name not in unconfigured,
            }
        )
    for path in config.legacy_trust:
        certs = read_certificates(config.path(path), "factory trust bundle")
        rows.append(
            {
                "manufacturer": None,
                "device_ids": [],
                "manifest_signers": [],
                "trust": str(config.path(path)),
                "trust_anchors": _certificates(certs),
                "crl": [],
                "crl_refresh_minutes": None,
                "fail_open": False,
                "crl_configured": False,
            }
        )
    return rows


def print_manufacturers(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        if row["manufacturer"] is None:
            console.print(
                f"# bundle without a manufacturer: {row['trust']} (declare it with "
                "`ztpki node add-manufacturer`; the node does not start until then)",
                markup=False,
            )
            continue
        signers = ", ".join(row["manifest_signers"]) or ANY_DOCUMENT_SIGNER
        console.print(f"# manufacturer {row['manufacturer']}", markup=False, style="bold")
        console.print(f"  device ids = {', '.join(row['device_ids'])}", markup=False)
        console.print(f"  manifest signers = {signers}", markup=False)
        console.print(f"  trust = {row['trust']}", markup=False)
        for anchor in row["trust_anchors"]:
            console.print(f"    {anchor['subject']}  sha256:{anchor['sha256']}", markup=False)
        if not row["crl_configured"]:
            console.print(
                f"  factory CRLs = none configured: {no_crl_warning(row['manufacturer'])}",
                markup=False,
                style="yellow",
            )
            continue
        crls = ", ".join(row["crl"]) or "the CRL files given to `node init --crl`"
        console.print(
            f"  factory CRLs = {crls} (every {row['crl_refresh_minutes']:g} min; fail_open = "
            f"{'true' if row['fail_open'] else 'false'})",
            markup=False,
        )


@node.command("add-manufacturer")
@dir_option
@manufacturer_options
def add_manufacturer_command(directory: Path, **options: Any) -> None:
    """Declare a manufacturer: its trust bundle, the device ids it may list, its signers.

    Also migrates a node.toml of an older ztpki: each bare trust bundle it lists is declared
    this way (give the bundle's file); restart `node serve` afterwards.
    """
    from ztpki.node.material import crl_warnings
    from ztpki.node.setup import add_manufacturer

    maker = manufacturer_config(options)
    updated = add_manufacturer(directory, maker)
    console.print(
        f"added manufacturer {maker.name} (device ids {maker.device_ids}); restart "
        "`ztpki node serve` to accept its devices",
        markup=False,
    )
    for warning in crl_warnings(updated, only=maker.name):
        console.print(f"warning: {warning}", markup=False, style="yellow")
    if updated.legacy_trust:
        console.print(
            f"{len(updated.legacy_trust)} trust bundle(s) still lack a manufacturer: "
            + ", ".join(str(updated.path(p)) for p in updated.legacy_trust),
            markup=False,
        )


@node.command("manufacturers")
@dir_option
@click.option("--json", "as_json", is_flag=True)
def manufacturers_command(directory: Path, as_json: bool) -> None:
    """The manufacturers whose devices and manifests this node accepts."""
    rows = manufacturer_rows(NodeConfig.load(directory, migrating=True))
    if as_json:
        print_json(rows)
        return
    print_manufacturers(rows)
