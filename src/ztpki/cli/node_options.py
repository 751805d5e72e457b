"""Options and values shared by the `ztpki node` commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ztpki.node.config import IssuingParameters
from ztpki.node.manufacturers import ManufacturerConfig
from ztpki.pki.device_ids import DeviceIdNamespace
from ztpki.pki.keys import KeySpec
from ztpki.secretfiles import resolve_passphrase

NODE_ENV = "ZTPKI_NODE_PASSPHRASE"
CLIENT_ENV = "ZTPKI_CLIENT_PASSPHRASE"
NODE_KEY = "the node's server key"
F = TypeVar("F", bound=Callable[..., Any])

dir_option = click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The node directory (holds node.toml and node.sqlite).",
)
client_passphrase_option = click.option(
    "--client-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Passphrase of the CA-client key (default: ${CLIENT_ENV}).",
)


allow_no_eku_option = click.option(
    "--allow-no-eku",
    is_flag=True,
    help="Accept device certificates with no extendedKeyUsage at all under this label "
    "(default: clientAuth must be in it).",
)


def policy_options(func: F) -> F:
    """The issuing parameters the node asks the customer CA system for, per EST label."""
    options = [
        click.option(
            "--key-algorithm",
            type=click.Choice([k.value for k in KeySpec]),
            help="Key algorithm for serverkeygen (default: the CA's policy).",
        ),
        click.option("--validity-days", type=int, help="Validity of operational certificates."),
        click.option("--org", help="Organization (O)."),
        click.option("--org-unit", help="Organizational unit (OU)."),
        click.option("--locality", help="Locality (L)."),
        click.option("--country", help="Two-letter country (C)."),
        click.option("--email", help="E-mail address (subjectAltName and subject)."),
        click.option(
            "--encrypt-key",
            is_flag=True,
            help="Have the CA system encrypt generated keys on the way to the node.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def issuing_parameters(kw: dict[str, Any]) -> IssuingParameters:
    key = kw.pop("key_algorithm")
    return IssuingParameters(
        key_algorithm=KeySpec(key) if key else None,
        validity_days=kw.pop("validity_days"),
        organization=kw.pop("org"),
        organizational_unit=kw.pop("org_unit"),
        locality=kw.pop("locality"),
        country=kw.pop("country"),
        email=kw.pop("email"),
        encrypt_key=kw.pop("encrypt_key"),
    )


CLIENT_KEY_OPTIONS = f"--client-passphrase-file or {CLIENT_ENV}"


def client_passphrase(passphrase_file: Path | None) -> bytes | None:
    return resolve_passphrase(
        passphrase_file=passphrase_file, env_var=CLIENT_ENV, what="the CA-client key"
    )


def manufacturer_options(func: F) -> F:
    """A manufacturer the node buys from (`node init`, `node add-manufacturer`)."""
    options = [
        click.option(
            "--manufacturer",
            "manufacturer_name",
            required=True,
            multiple=True,  # given twice is refused, not silently the last one
            metavar="NAME",
            help="The manufacturer's name, exactly as its manifests give it.",
        ),
        click.option(
            "--trust",
            required=True,
            multiple=True,
            type=click.Path(path_type=Path, dir_okay=False),
            help="Its factory trust bundle (PEM, `ztpki factory export-trust`).",
        ),
        click.option(
            "--device-ids",
            "device_ids",
            multiple=True,
            required=True,
            metavar="PATTERN",
            help="Device ids it may list, e.g. 'ACME-*' (* is any run of id characters); "
            "repeatable. No two manufacturers may share an id.",
        ),
        click.option(
            "--manifest-signer-fingerprint",
            "signer_fingerprints",
            multiple=True,
            metavar="SHA256",
            help="Accept manifests only from the signer with this certificate fingerprint "
            "(repeatable); default: any certificate with EKU documentSigning under its "
            "bundle.",
        ),
        click.option(
            "--crl-url",
            "crl_urls",
            multiple=True,
            metavar="URL|FILE",
            help="Where its factory CA's CRL is (http:// URL or a file, re-read): fetched at "
            "start, every --crl-refresh-minutes and before its nextUpdate (repeatable). The "
            "CRL distribution points of its temporary certificates are fetched as well.",
        ),
        click.option(
            "--crl-refresh-minutes",
            type=click.FloatRange(min=0, min_open=True),
            default=60.0,
            show_default=True,
            help="Fetch its CRLs again this often, whatever their nextUpdate.",
        ),
        click.option(
            "--crl-fail-open",
            is_flag=True,
            help="Let a temporary certificate through (with a warning) when no current CRL "
            "of its CA can be had; by default it is refused (503) until one is fetched.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def manufacturer_config(kw: dict[str, Any]) -> ManufacturerConfig:
    names, bundles = kw.pop("manufacturer_name"), kw.pop("trust")
    if len(names) != 1 or len(bundles) != 1:
        raise click.UsageError(
            "give one --manufacturer and its one --trust bundle; declare each further "
            "manufacturer with `ztpki node add-manufacturer`"
        )
    return ManufacturerConfig(
        name=names[0],
        trust=bundles[0],
        device_ids=DeviceIdNamespace.parse(kw.pop("device_ids")),
        manifest_signers=tuple(kw.pop("signer_fingerprints")),
        crl=tuple(kw.pop("crl_urls")),
        crl_refresh_minutes=float(kw.pop("crl_refresh_minutes")),
        fail_open=bool(kw.pop("crl_fail_open")),
    )
