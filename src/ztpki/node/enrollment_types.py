"""What the enrollment service takes and hands back, apart from the service itself: a label with
its CA chain, the answer for a device, the key a device asks a certificate for (from an EST or
CMP p10cr CSR, or a CMP certificate template whose proof of possession the node verified),
and the small pure helpers the service decides with."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztpki.errors import Unavailable, ZtpkiError
from ztpki.node.authentication import ClientIdentity
from ztpki.node.config import CALabel
from ztpki.node.lease_holder import holder_gone
from ztpki.protocol.est import csr_device_id
from ztpki.store.records import AuditRecord, DeviceState, RegisteredDevice


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


def audit_record(
    endpoint: str,
    identity: ClientIdentity,
    decision: str,
    reason: str,
    *,
    at: datetime,
    serial: str | None = None,
) -> AuditRecord:
    """The audit record of one decision on a request of identity."""
    return AuditRecord(
        at=at,
        endpoint=endpoint,
        decision=decision,
        reason=reason,
        device_id=identity.device_id,
        client_fingerprint=identity.fingerprint,
        serial=serial,
    )


def lease_expired(device: RegisteredDevice | None, now: datetime) -> bool:
    return (  # ran out, or its holder (a worker of this machine) was killed
        device is not None
        and device.state is DeviceState.ISSUING
        and device.lease_expires is not None
        and (device.lease_expires < now or holder_gone(device.lease_token))
    )


def same_row(before: RegisteredDevice, decided_on: RegisteredDevice) -> bool:
    return (
        before.state is decided_on.state
        and before.issued_serial == decided_on.issued_serial
        and before.lease_token == decided_on.lease_token
    )


__all__ = [
    "Enrolled",
    "KeyRequest",
    "LoadedLabel",
    "audit_record",
    "decision_of",
    "lease_expired",
    "same_row",
]


def issued_label(device: RegisteredDevice | None, labels: Iterable[LoadedLabel]) -> str | None:
    """The label whose CA issued the device's current certificate (by its chain's first CA)."""
    if device is None or not device.issued_chain_der:
        return None
    issuing = device.issued_chain_der[0]
    for loaded in labels:
        if loaded.certificate.public_bytes(serialization.Encoding.DER) == issuing:
            return loaded.name
    return None
