"""The node's manufacturers: whom the customer buys devices from, and what each may do.

A manufacturer (``[manufacturer.NAME]`` in node.toml) is a name, as its manifests give it; its
factory trust bundle, to which its devices' temporary certificates and its manifest signers
chain; the device ids it may list (a namespace, disjoint from every other manufacturer's); and
optionally the pinned fingerprints of its manifest signers; and where its factory CAs' CRLs
are, how often to fetch them, and whether a certificate no current CRL speaks for passes
(``fail_open``). The node turns them into the
manifest trust of ``ztpki.protocol.manifest`` and the factory trust of authentication.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.pki.device_ids import DeviceIdNamespace
from ztpki.pki.pem import parse_sha256_fingerprint
from ztpki.protocol.manifest import ManufacturerTrust, check_manufacturer_name
from ztpki.revocation_source import check_location

DEFAULT_CRL_REFRESH_MINUTES = 60.0


@dataclass(frozen=True)
class ManufacturerConfig:
    """One manufacturer: the factory trust bundle its devices and manifests chain to, the
    device ids it may list, and the manifest signers it signs with (empty: any documentSigning
    certificate under its bundle)."""

    name: str
    trust: Path
    device_ids: DeviceIdNamespace
    manifest_signers: tuple[str, ...] = ()
    # Where its factory CAs' CRLs are (http:// URLs or files); the CRL distribution points in
    # its temporary certificates are fetched as well (ztpki.node.factory_crls).
    crl: tuple[str, ...] = ()
    crl_refresh_minutes: float = DEFAULT_CRL_REFRESH_MINUTES
    # A temporary certificate whose status no current CRL tells: refused (false), or let
    # through with a warning (true).
    fail_open: bool = False

    def __post_init__(self) -> None:
        if not self.crl_refresh_minutes > 0:
            raise ConfigurationError(
                f"manufacturer {self.name}: crl_refresh_minutes must be positive"
            )
        for location in self.crl:
            try:
                check_location(location)
            except ConfigurationError as exc:
                raise ConfigurationError(f"manufacturer {self.name}: {exc.message}") from None
        try:
            check_manufacturer_name(self.name)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"manufacturer name: {exc}") from None
        pins = []
        for pin in self.manifest_signers:
            try:
                pins.append(parse_sha256_fingerprint(pin))
            except MalformedInput as exc:
                raise ConfigurationError(
                    f"manifest signer of manufacturer {self.name}: {exc.message}"
                ) from None
        object.__setattr__(self, "manifest_signers", tuple(dict.fromkeys(pins)))

    def to_toml(self) -> dict[str, Any]:
        table: dict[str, Any] = {"trust": str(self.trust), "device_ids": self.device_ids.texts()}
        if self.manifest_signers:
            table["manifest_signers"] = list(self.manifest_signers)
        if self.crl:
            table["crl"] = list(self.crl)
        if self.crl_refresh_minutes != DEFAULT_CRL_REFRESH_MINUTES:
            table["crl_refresh_minutes"] = self.crl_refresh_minutes
        if self.fail_open:
            table["fail_open"] = True
        return table

    @classmethod
    def from_toml(cls, name: str, table: dict[str, Any]) -> ManufacturerConfig:
        where = f"[manufacturer.{name!r}]"
        unknown = set(table) - {
            "trust",
            "device_ids",
            "manifest_signers",
            "crl",
            "crl_refresh_minutes",
            "fail_open",
        }
        if unknown:
            raise ConfigurationError(f"{where} has unknown setting {sorted(unknown)[0]!r}")
        if "trust" not in table:
            raise ConfigurationError(f"{where} needs trust = FILE (its factory trust bundle)")
        ids, pins = table.get("device_ids"), table.get("manifest_signers", [])
        if not isinstance(ids, list) or not ids:
            raise ConfigurationError(
                f'{where} needs device_ids = ["PATTERN", ...]: the device ids it may list, '
                'e.g. ["ACME-*"]'
            )
        if not isinstance(pins, list):
            raise ConfigurationError(f"{where} manifest_signers must be a list of fingerprints")
        crl, refresh, fail_open = (
            table.get("crl", []),
            table.get("crl_refresh_minutes", DEFAULT_CRL_REFRESH_MINUTES),
            table.get("fail_open", False),
        )
        if isinstance(crl, str):
            crl = [crl]
        if not isinstance(crl, list):
            raise ConfigurationError(f"{where} crl must be a URL or file, or a list of them")
        if not isinstance(fail_open, bool):
            raise ConfigurationError(f"{where} fail_open must be true or false")
        if not isinstance(refresh, int | float) or isinstance(refresh, bool):
            raise ConfigurationError(f"{where} crl_refresh_minutes must be a number")
        return cls(
            name=name,
            trust=Path(str(table["trust"])),
            device_ids=DeviceIdNamespace.parse(str(i) for i in ids),
            manifest_signers=tuple(str(p) for p in pins),
            crl=tuple(str(c) for c in crl),
            crl_refresh_minutes=float(refresh),
            fail_open=fail_open,
        )


def check_manufacturers(manufacturers: tuple[ManufacturerConfig, ...]) -> None:
    """Names unique, namespaces disjoint: every device id belongs to one manufacturer."""
    for index, first in enumerate(manufacturers):
        for second in manufacturers[index + 1 :]:
            if first.name == second.name:
                raise ConfigurationError(f"manufacturer {first.name} is declared twice")
            shared = first.device_ids.overlap(second.device_ids)
            if shared is not None:
                raise ConfigurationError(
                    f"the device ids of manufacturers {first.name} ({first.device_ids}) and "
                    f"{second.name} ({second.device_ids}) overlap (both hold e.g. {shared}): "
                    "each device id must belong to one manufacturer"
                )


@dataclass(frozen=True)
class LoadedManufacturer:
    """A manufacturer with its trust bundle read."""

    config: ManufacturerConfig
    bundle: tuple[x509.Certificate, ...]

    @property
    def name(self) -> str:
        return self.config.name

    def manifest_trust(self) -> ManufacturerTrust:
        return ManufacturerTrust(
            name=self.config.name,
            anchors=self.bundle,
            device_ids=self.config.device_ids,
            signer_fingerprints=frozenset(self.config.manifest_signers),
        )


def manifest_trusts(loaded: Sequence[LoadedManufacturer]) -> list[ManufacturerTrust]:
    return [maker.manifest_trust() for maker in loaded]


def check_distinct_trust(loaded: Sequence[LoadedManufacturer]) -> None:
    """No certificate in two manufacturers' bundles: a factory CA trusted for one manufacturer
    would otherwise act for the other's devices (its namespace, its manifests)."""
    owner: dict[x509.Certificate, str] = {}
    for maker in loaded:
        for cert in maker.bundle:
            first = owner.setdefault(cert, maker.name)
            if first != maker.name:
                raise ConfigurationError(
                    f"the trust bundle of manufacturer {maker.name} holds "
                    f"{cert.subject.rfc4514_string()!r}, a trust anchor of manufacturer "
                    f"{first}: each manufacturer needs its own factory CA (a CA trusted for "
                    "two could act for the devices of both)"
                )
