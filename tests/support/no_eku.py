"""A device certificate with no extendedKeyUsage extension at all (as some manufacturers' birth
certificates are): otherwise what ztpki's device profile writes."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ztpki.pki.keys import PrivateKey, PublicKey
from ztpki.pki.profiles import CertificateProfile, profile_extensions


def certificate_without_eku(
    *,
    subject: x509.Name,
    public_key: PublicKey,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    # The device profile's own extensions (basic constraints, key usage), minus the EKU.
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension, critical in profile_extensions(CertificateProfile.DEVICE, public_key):
        if not isinstance(extension, x509.ExtendedKeyUsage):
            builder = builder.add_extension(extension, critical=critical)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return (
        builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
