"""Certificate path validation against trust anchors (RFC 5280, via cryptography's verifier)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ztpki.errors import VerificationFailed
from ztpki.pki.profiles import DOCUMENT_SIGNING, LEGACY_MANIFEST_SIGNING
from ztpki.untrusted import quote

# The verifier's messages name each certificate it tried; enough of it to act on.
DETAIL_LIMIT = 400


def _detail(exc: Exception) -> str:
    # The verifier's message quotes the certificates it saw, subjects and all: text the
    # certificate's maker chose, which must not reach a log line or a terminal raw.
    return quote(exc, limit=DETAIL_LIMIT)


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """Whether ``cert`` says it is a CA (basicConstraints cA); no extension means it is not."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _policy(anchors: Sequence[x509.Certificate], now: datetime) -> PolicyBuilder:
    if not anchors:
        raise VerificationFailed("no trust anchor is configured")
    return PolicyBuilder().store(Store(list(anchors))).time(now)


def _device_ee_policy() -> ExtensionPolicy:
    # Device identities are names in a register, not host names: a subjectAltName is optional
    # for TLS clients (the Web PKI defaults would demand one).
    return ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )


def verify_client_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime,
) -> list[x509.Certificate]:
    """The verified path leaf..anchor for a TLS client certificate (EKU clientAuth)."""
    verifier = (
        _policy(anchors, now)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_device_ee_policy()
        )
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, list(intermediates))
    except (VerificationError, ValueError) as exc:  # ValueError: a part does not decode
        raise VerificationFailed(f"client certificate does not verify: {_detail(exc)}") from None
    return list(verified.chain)


def verify_server_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    host: str,
    now: datetime,
) -> list[x509.Certificate]:
    """The verified path for a TLS server certificate naming host (DNS name or IP)."""
    try:
        name: x509.verification.Subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        name = x509.DNSName(host)
    verifier = _policy(anchors, now).build_server_verifier(name)
    try:
        return list(verifier.verify(leaf, list(intermediates)))
    except (VerificationError, ValueError) as exc:  # ValueError: a part does not decode
        raise VerificationFailed(f"server certificate does not verify: {_detail(exc)}") from None


def verify_signer_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime,
) -> list[x509.Certificate]:
    """The verified path for a document (manifest) signer: EKU id-kp-documentSigning, or the
    manifest-signer EKU of earlier ztpki versions (their signers stay valid)."""
    ee_policy = ExtensionPolicy.permit_all().require_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _require_document_signing
    )
    builder = _policy(anchors, now).extension_policies(
        ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
    )
    verifier = builder.build_client_verifier()
    try:
        return list(verifier.verify(leaf, list(intermediates)).chain)
    except (VerificationError, ValueError) as exc:  # ValueError: a part does not decode
        raise VerificationFailed(f"signer certificate does not verify: {_detail(exc)}") from None


def verify_cmp_signer_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime,
) -> list[x509.Certificate]:
    """The verified path for the signer of CMP messages (RFC 9483 section 3.2): any EE
    certificate with a signing key that chains to the anchors; its EKU (if any) is the CA's
    business, as openssl cmp also leaves it."""
    builder = _policy(anchors, now).extension_policies(
        ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
    )
    try:
        return list(builder.build_client_verifier().verify(leaf, list(intermediates)).chain)
    except (VerificationError, ValueError) as exc:  # ValueError: a part does not decode
        raise VerificationFailed(
            f"CMP signer certificate does not verify: {_detail(exc)}"
        ) from None


def _require_document_signing(
    policy: object, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    if eku is None or (DOCUMENT_SIGNING not in eku and LEGACY_MANIFEST_SIGNING not in eku):
        raise ValueError("certificate is not a document (manifest) signing certificate")
