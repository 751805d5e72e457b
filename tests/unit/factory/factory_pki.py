"""A small in-memory factory PKI for unit tests: root, factory CA, manifests CA, and leaves."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.profiles import CertificateProfile

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def name(cn: str, *, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def root_ca(cn: str, *, spec: KeySpec = KeySpec.EC_P256) -> CertificateAuthority:
    key = generate_private_key(spec)
    cert = create_self_signed_ca(
        key, name(cn), now=NOW - timedelta(days=1), validity=timedelta(days=3650)
    )
    return CertificateAuthority(name=cn, key=key, certificate=cert)


def sub_ca(parent: CertificateAuthority, cn: str) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=name(cn),
        profile=CertificateProfile.CA,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=3000),
    )
    cert = parent.issue(key.public_key(), grant)
    return CertificateAuthority(name=cn, key=key, certificate=cert, parents=parent.chain)


def leaf(
    ca: CertificateAuthority,
    cn: str,
    profile: CertificateProfile,
    *,
    spec: KeySpec = KeySpec.EC_P256,
    serial: str | None = None,
    days: int = 365,
) -> tuple[PrivateKey, tuple[x509.Certificate, ...]]:
    """A key and its chain (leaf first, then the CA chain up to the root)."""
    key = generate_private_key(spec)
    grant = IssuanceGrant(
        subject=name(cn, serial=serial),
        profile=profile,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=days),
    )
    return key, (ca.issue(key.public_key(), grant), *ca.chain)


@dataclass(frozen=True)
class FactoryPKI:
    root: CertificateAuthority
    factory: CertificateAuthority
    manifests: CertificateAuthority

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        return (self.root.certificate,)


def factory_pki() -> FactoryPKI:
    root = root_ca("Test Root")
    return FactoryPKI(
        root=root, factory=sub_ca(root, "Factory CA"), manifests=sub_ca(root, "Manifest CA")
    )
