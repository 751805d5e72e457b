"""Checking a CA system's answer before a device stores it (patent Fig. 3, B45-B46).

An answer is accepted only when it is the identity that was asked for: the certificate names
the device, the private key belongs to the certificate, and the certificate chains to the
factory trust anchor. Otherwise nothing is stored and the error names the device and why.
Sans-I/O: the clock comes in as ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from ztpki.errors import MalformedInput, UnsupportedParameter, VerificationFailed
from ztpki.pki.chain import verify_client_chain, verify_signer_chain
from ztpki.pki.keys import PrivateKey, decode_pkcs8, keys_match
from ztpki.pki.names import device_id_of
from ztpki.pki.pem import load_certificate_der
from ztpki.protocol.enrollment import EnrollmentAnswer


@dataclass(frozen=True)
class AcceptedIdentity:
    """A verified key + certificate for one device, and the anchors its chain verified to."""

    device_id: str
    private_key: PrivateKey = field(repr=False)
    certificate: x509.Certificate
    ca_certificates: tuple[x509.Certificate, ...]
    trust_anchors: tuple[x509.Certificate, ...]

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """The CA certificates without self-issued roots: what a TLS client or x5c sends."""
        return tuple(c for c in self.ca_certificates if not _self_issued(c))


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def answer_root(ca_certificates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The self-issued root at the end of a CA chain, if the chain carries one."""
    return ca_certificates[-1] if ca_certificates and _self_issued(ca_certificates[-1]) else None


def _answer_key(who: str, answer: EnrollmentAnswer, key_passphrase: bytes | None) -> PrivateKey:
    if answer.private_key_der is None:
        raise VerificationFailed(f"{who}: the CA answer carries no private key; not stored")
    if answer.private_key_encrypted != (key_passphrase is not None):
        raise VerificationFailed(
            f"{who}: the CA answer's private key encryption is not what was asked; not stored"
        )
    try:
        return decode_pkcs8(answer.private_key_der, passphrase=key_passphrase)
    except (MalformedInput, UnsupportedParameter):
        raise MalformedInput(f"{who}: the CA answer's private key does not load") from None


def accept_answer(
    answer: EnrollmentAnswer,
    *,
    device_id: str,
    anchors: Sequence[x509.Certificate] | None,
    now: datetime,
    key_passphrase: bytes | None = None,
    document_signer: bool = False,
    device_key: PrivateKey | None = None,
) -> AcceptedIdentity:
    """The identity in answer, once it verifies for device_id.

    anchors: the configured factory trust; None trusts the root the answer carries (the
    answer came over TLS from the authenticated CA system). document_signer: check for a
    manifest-signing certificate instead of a TLS client (device) certificate.
    device_key: the key the request sent the public key of (made in the device's token); the
    answer then carries no key.
    Raises VerificationFailed or MalformedInput; the message starts with the device id.
    """
    who = f"device {device_id}"
    try:
        certificate = load_certificate_der(answer.certificate_der)
        ca_certificates = tuple(load_certificate_der(d) for d in answer.ca_certificates_der)
    except MalformedInput as exc:
        raise MalformedInput(f"{who}: the CA answer is damaged: {exc.message}") from None
    named = device_id_of(certificate)
    if named != device_id:
        raise VerificationFailed(
            f"{who}: the CA answer's certificate names {named!r}, not this device; not stored"
        )
    if device_key is not None:
        if answer.private_key_der is not None:
            raise VerificationFailed(
                f"{who}: the CA answer carries a private key, but the key was made in the "
                "device; not stored"
            )
        private_key = device_key
    else:
        private_key = _answer_key(who, answer, key_passphrase)
    if not keys_match(private_key, certificate.public_key()):
        raise VerificationFailed(
            f"{who}: the CA answer's private key does not match its certificate; not stored"
        )
    trust = _anchors(who, anchors, ca_certificates)
    verify = verify_signer_chain if document_signer else verify_client_chain
    try:
        verify(certificate, ca_certificates, trust, now=now)
    except VerificationFailed as exc:
        raise VerificationFailed(
            f"{who}: the CA answer's certificate does not chain to the factory trust anchor "
            f"({exc.message}); not stored"
        ) from None
    return AcceptedIdentity(device_id, private_key, certificate, ca_certificates, trust)


def _anchors(
    who: str,
    anchors: Sequence[x509.Certificate] | None,
    ca_certificates: Sequence[x509.Certificate],
) -> tuple[x509.Certificate, ...]:
    if anchors is not None:
        if not anchors:
            raise VerificationFailed(f"{who}: the factory trust bundle is empty")
        return tuple(anchors)
    root = answer_root(ca_certificates)
    if root is None:
        raise VerificationFailed(
            f"{who}: the CA answer carries no root CA certificate; give the factory trust "
            "bundle (--trust) to verify it"
        )
    return (root,)
