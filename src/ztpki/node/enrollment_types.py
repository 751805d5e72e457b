"""What the enrollment service takes and hands back, apart from the service itself: a label with
its CA chain, the answer for a device, the key a device asks a certificate for (from an EST or
CMP p10cr CSR, or a CMP certificate template whose proof of possession the node verified)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztpki.errors import Unavailable, ZtpkiError
from ztpki.node.config import CALabel
from ztpki.protocol.est import csr_device_id


@dataclass(frozen=True)
class LoadedLabel:
    """An EST label with its CA chain loaded (issuing CA first)."""

    config: CALabel
    chain: tuple[x509.Certificate, ...]

    @property
    def name(self) -> str:
        return self.config.label

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]


@dataclass(frozen=True)
class Enrolled:
    """What an enrollment hands the device."""

    outcome: str  # "issued" or "redelivered"
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key_der: bytes | None = field(default=None, repr=False)


def decision_of(exc: ZtpkiError) -> str:
    """The audit trail's word for a request that ended in exc."""
    return "deferred" if isinstance(exc, Unavailable) else "refused"


@dataclass(frozen=True)
class KeyRequest:
    """The public key a device asks a certificate for and the device id its request names.

    ``csr_der`` is the device's signed CSR when there is one (EST, CMP p10cr); without it the
    public key's possession was proven to the node itself (a CMP POPO signature), and the CA
    system is asked to certify ``public_key_der`` as it is.
    """

    public_key_der: bytes  # SubjectPublicKeyInfo
    named_device_id: str | None
    csr_der: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_csr(cls, csr: x509.CertificateSigningRequest) -> KeyRequest:
        return cls(
            csr.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            csr_device_id(csr),
            csr.public_bytes(serialization.Encoding.DER),
        )

    @property
    def spki_sha256(self) -> str:
        return hashlib.sha256(self.public_key_der).hexdigest()


__all__ = ["Enrolled", "KeyRequest", "LoadedLabel", "decision_of"]
