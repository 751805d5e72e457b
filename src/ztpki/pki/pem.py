"""PEM, DER and PKCS#7 certs-only helpers, and fingerprints."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from ztpki.errors import MalformedInput


def base64_lines(der: bytes, *, newline: bytes = b"\n") -> bytes:
    """Base64 in lines of 64 characters, each ended by newline (RFC 7468, RFC 7030 bodies)."""
    text = base64.b64encode(der)
    return b"".join(text[i : i + 64] + newline for i in range(0, len(text), 64))


def pem_armor(label: str, der: bytes) -> bytes:
    """RFC 7468 text encoding of der under label, for structures cryptography cannot write."""
    boundary = label.encode("ascii")
    return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (boundary, base64_lines(der), boundary)


def certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certificates_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(certificate_pem(c) for c in certs)


# What cryptography raises for a certificate part that does not decode.
# What cryptography raises for bytes that are not a valid certificate. Names decode lazily, and
# an attribute of the wrong ASN.1 type raises TypeError from inside the library.
_NOT_X509 = (ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension)


def _decoded(cert: x509.Certificate) -> x509.Certificate:
    # cryptography decodes names and extensions only when first read: read them now, so a
    # malformed one is refused at the boundary (MalformedInput), not as a ValueError from
    # deep inside a later check (a client certificate would have become an HTTP 500).
    _ = cert.subject, cert.issuer, cert.extensions
    if cert.serial_number <= 0:
        # RFC 5280 4.1.2.2; cryptography only warns about it today.
        raise ValueError("certificate serial number is not positive")
    return cert


def load_certificate_der(data: bytes) -> x509.Certificate:
    try:
        return _decoded(x509.load_der_x509_certificate(data))
    except _NOT_X509:
        raise MalformedInput("certificate is not valid DER X.509") from None


def load_certificates_pem(data: bytes) -> list[x509.Certificate]:
    """All certificates in a PEM bundle; MalformedInput when there are none or one is bad."""
    try:
        certs = [_decoded(c) for c in x509.load_pem_x509_certificates(data)]
    except _NOT_X509:
        raise MalformedInput("PEM bundle holds no valid certificate") from None
    return certs


def load_certificate_pem(data: bytes) -> x509.Certificate:
    return load_certificates_pem(data)[0]


def pkcs7_certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """A degenerate (certs-only) PKCS#7 SignedData in DER, as EST returns it."""
    return pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER)


def load_pkcs7_certs(data: bytes) -> list[x509.Certificate]:
    try:
        certs = [_decoded(c) for c in pkcs7.load_der_pkcs7_certificates(data)]
    except _NOT_X509:
        raise MalformedInput("body is not a DER PKCS#7 certs-only structure") from None
    if not certs:
        raise MalformedInput("PKCS#7 structure holds no certificate")
    return certs


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 over the DER certificate (what `openssl x509 -fingerprint` hashes)."""
    return cert.fingerprint(hashes.SHA256()).hex()


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SHA256_FINGERPRINT_FORMS = (
    "64 hex digits, as sha256:HEX, HEX or AB:CD:... "
    "(openssl x509 -noout -fingerprint -sha256 prints it)"
)


def parse_sha256_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint in any usual spelling -> 64 lower-case hex digits.

    Accepted, in any case: ``sha256:HEX``, bare ``HEX``, and openssl's colon form
    (``AB:CD:...``), with or without ``sha256:`` or openssl's ``sha256 Fingerprint=`` in
    front. The inverse of :func:`fingerprint_sha256`.
    """
    value = text.strip().lower()
    for prefix in ("sha256 fingerprint=", "sha256:"):
        if value.startswith(prefix):
            value = value[len(prefix) :].strip()
            break
    digits = value.replace(":", "")
    if not _SHA256_HEX.fullmatch(digits):
        raise MalformedInput(
            f"{text[:100]!r} is not a SHA-256 fingerprint: give {SHA256_FINGERPRINT_FORMS}"
        )
    return digits


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")
