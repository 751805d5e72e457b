"""Manifest-signer certificates that ztpki's own CAs would never issue, for refusal tests."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.keys import PrivateKey
from ztpki.pki.profiles import DOCUMENT_SIGNING


def unmarked_document_signer(
    ca: CertificateAuthority,
    key: PrivateKey,
    subject: x509.Name,
    *,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A documentSigning certificate from ca without ztpki's manifest-signing mark: what any
    other document-signing use of a manufacturer's CA (or an older ztpki) issues."""
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usage = x509.KeyUsage(True, True, False, False, False, False, False, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
