"""Document-signer certificates made outside ztpki's profiles (an earlier ztpki's manifest
signer, another purpose's signer under a manufacturer's CA), for acceptance and refusal tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.keys import PrivateKey
from ztpki.pki.profiles import DOCUMENT_SIGNING, LEGACY_MANIFEST_SIGNING

# What ztpki before id-kp-documentSigning alone put into manifest signers.
EARLIER_ZTPKI_SIGNER = (DOCUMENT_SIGNING, LEGACY_MANIFEST_SIGNING)


def document_signer(
    ca: CertificateAuthority,
    key: PrivateKey,
    subject: x509.Name,
    *,
    not_before: datetime,
    not_after: datetime,
    eku: Sequence[x509.ObjectIdentifier] = (DOCUMENT_SIGNING,),
) -> x509.Certificate:
    """A signing certificate from ca with the EKUs given (default: documentSigning only, what
    any other document-signing use of a manufacturer's CA issues)."""
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
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
