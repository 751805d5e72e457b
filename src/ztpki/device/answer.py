"""Checking the node's answer before the device trusts it with its identity (Fig. 3, B51).

Pure: certificates and a key in, an :class:`IssuedIdentity` or ``VerificationFailed`` out,
the clock passed in. Nothing here touches the device memory, so a bad answer can never
replace the identity the device has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from ztpki.errors import VerificationFailed
from ztpki.pki.chain import verify_client_chain
from ztpki.pki.keys import PrivateKey, keys_match
from ztpki.pki.names import device_id_of
from ztpki.pki.pem import fingerprint_sha256, serial_hex
from ztpki.untrusted import quote

__all__ = ["CLOCK_SKEW", "IssuedIdentity", "customer_anchors", "verify_answer"]

# A device clock a little behind the CA's must still accept a certificate issued just now.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedIdentity:
    """A verified new identity: key, certificate, and the CA certificates to keep with it."""

    private_key: PrivateKey = field(repr=False)
    certificate: x509.Certificate
    ca_certificates: tuple[x509.Certificate, ...]
    anchor: x509.Certificate

    @property
    def serial(self) -> str:
        return serial_hex(self.certificate)


def _is_self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def customer_anchors(cacerts: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The certificates to anchor the answer's chain in: the roots among ``cacerts``, or all
    of them when the node sends only issuing CAs."""
    roots = [c for c in cacerts if _is_self_issued(c)]
    return roots or list(cacerts)


def _unique(certs: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    seen: set[str] = set()
    kept = []
    for cert in certs:
        fingerprint = fingerprint_sha256(cert)
        if fingerprint not in seen:
            seen.add(fingerprint)
            kept.append(cert)
    return tuple(kept)


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {serial_hex(cert)}"


def verify_answer(
    *,
    device_id: str,
    private_key: PrivateKey,
    certificates: Sequence[x509.Certificate],
    cacerts: Sequence[x509.Certificate],
    now: datetime,
    previous: x509.Certificate | None = None,
) -> IssuedIdentity:
    """Accept the node's answer only if it is a current identity for this device and key.

    ``certificates`` is what the enrollment returned (the new certificate, perhaps with
    intermediates), ``cacerts`` what the node's cacerts returned. Checked, in this order: the
    certificate is for ``private_key``; it names ``device_id``; its validity covers ``now``;
    it chains (as a TLS client certificate) to the customer CA certificates; it is not the
    certificate being replaced.
    """
    if not certificates:
        raise VerificationFailed("the answer holds no certificate")
    if not cacerts:
        raise VerificationFailed("the node sent no CA certificate to verify the answer with")
    mine = [c for c in certificates if keys_match(private_key, c.public_key())]
    if not mine:
        raise VerificationFailed(
            "the certificate in the answer is for another key than the device's new private key"
        )
    leaf = mine[0]
    named = device_id_of(leaf)
    if named != device_id:
        raise VerificationFailed(
            f"the certificate in the answer names device {quote(str(named))}, not this device "
            f"{quote(device_id)}"
        )
    if now + CLOCK_SKEW < leaf.not_valid_before_utc:
        raise VerificationFailed(
            f"the certificate in the answer is not valid before "
            f"{leaf.not_valid_before_utc.isoformat()}; check the device clock ({now.isoformat()})"
        )
    if now >= leaf.not_valid_after_utc:
        raise VerificationFailed(
            f"the certificate in the answer expired at {leaf.not_valid_after_utc.isoformat()}"
        )
    intermediates = [c for c in (*certificates, *cacerts) if c is not leaf]
    anchors = customer_anchors(cacerts)
    # Tolerate the skew above for the chain too: verify at the later of now and notBefore.
    at = max(now, leaf.not_valid_before_utc)
    try:
        path = verify_client_chain(leaf, intermediates, anchors, now=at)
    except VerificationFailed as exc:
        roots = ", ".join(_describe(a) for a in anchors)
        raise VerificationFailed(
            f"the certificate in the answer does not chain to the customer CA certificates the "
            f"node sent ({roots}): {exc.message}"
        ) from None
    if previous is not None and fingerprint_sha256(previous) == fingerprint_sha256(leaf):
        raise VerificationFailed("the answer returned the certificate the device already has")
    return IssuedIdentity(
        private_key=private_key,
        certificate=leaf,
        ca_certificates=_unique([*path[1:], *cacerts]),
        anchor=path[-1],
    )
