"""The DER of a signed BasicOCSPResponse (RFC 6960 4.2.1), written directly.

cryptography's OCSPResponseBuilder spends about four times the signature's own cost on
each answer (it re-reads the responder certificate and re-checks every field per call); a
responder that signs per nonce pays that on every request. Here the parts that never change
for a signer (responder id, signature algorithm, its certificate) are encoded once, and each
answer is a few concatenations and one signature. cryptography still reads every answer in
the tests, and openssl verifies them end to end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ztpki.pki.der import integer, oid_body, read_tlv, tlv
from ztpki.pki.keys import PrivateKey

_SEQUENCE, _OCTETS, _OID, _NULL, _ENUMERATED, _BITS = 0x30, 0x04, 0x06, 0x05, 0x0A, 0x03
ID_PKIX_OCSP_BASIC = "1.3.6.1.5.5.7.48.1.1"
ID_PKIX_OCSP_NONCE = "1.3.6.1.5.5.7.48.1.2"
HASH_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
# RFC 5280 5.3.1 CRLReason codes (7 is not used).
REASON_CODES = {
    x509.ReasonFlags.unspecified: 0,
    x509.ReasonFlags.key_compromise: 1,
    x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3,
    x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5,
    x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8,
    x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}
_GOOD = tlv(0x80, b"")  # [0] IMPLICIT NULL
_UNKNOWN = tlv(0x82, b"")  # [2] IMPLICIT NULL


def _oid(dotted: str) -> bytes:
    return tlv(_OID, oid_body(dotted))


def _algorithm(dotted: str, *, null: bool) -> bytes:
    return tlv(_SEQUENCE, _oid(dotted) + (tlv(_NULL, b"") if null else b""))


# Encoded once: the CertID hash AlgorithmIdentifiers (with NULL parameters, as openssl and
# cryptography write them), the nonce extension's OID, the responseType, the reason fields.
_HASH_ALGORITHMS = {name: _algorithm(dotted, null=True) for name, dotted in HASH_OIDS.items()}
_NONCE_OID = _oid(ID_PKIX_OCSP_NONCE)
_BASIC_OID = _oid(ID_PKIX_OCSP_BASIC)
_REASONS = {
    reason: tlv(0xA0, tlv(_ENUMERATED, bytes([code]))) for reason, code in REASON_CODES.items()
}
_SUCCESSFUL = tlv(_ENUMERATED, b"\x00")


def generalized_time(when: datetime) -> bytes:
    """GeneralizedTime in UTC, whole seconds (RFC 5280 4.1.2.5.2)."""
    if when.utcoffset():
        raise ValueError("OCSP times are given in UTC")
    text = (
        f"{when.year:04d}{when.month:02d}{when.day:02d}"
        f"{when.hour:02d}{when.minute:02d}{when.second:02d}Z"
    )
    return b"\x18\x0f" + text.encode("ascii")  # 15 characters, a one-octet length


def public_key_bits(certificate: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's value, which issuerKeyHash hashes (RFC 6960 4.1.1)."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    outer, _ = read_tlv(spki, 0)
    _algorithm, after = read_tlv(spki, outer.start, stop=outer.end)
    bits, _ = read_tlv(spki, after, stop=outer.end)
    return spki[bits.start + 1 : bits.end]  # skip the unused-bits octet


@dataclass(frozen=True)
class SignerParts:
    """What every answer of one signer repeats, encoded once."""

    responder_id: bytes  # [2] byKey: SHA-1 of the signer's public key (RFC 6960 4.2.1)
    signature_algorithm: bytes
    certs: bytes  # [0] EXPLICIT SEQUENCE OF Certificate, or b"" when the CA signs itself

    @classmethod
    def of(cls, key: PrivateKey, certificate: x509.Certificate, *, delegated: bool) -> SignerParts:
        key_hash = hashlib.sha1(public_key_bits(certificate), usedforsecurity=False).digest()
        if isinstance(key, ec.EllipticCurvePrivateKey):
            dotted = "1.2.840.10045.4.3.3" if key.curve.key_size > 256 else "1.2.840.10045.4.3.2"
            algorithm = _algorithm(dotted, null=False)
        elif isinstance(key, rsa.RSAPrivateKey):
            algorithm = _algorithm("1.2.840.113549.1.1.11", null=True)  # sha256WithRSA
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            algorithm = _algorithm("1.3.101.112", null=False)
        else:  # pragma: no cover - keys.PrivateKey has no other kind
            raise TypeError(f"cannot sign OCSP answers with a {type(key).__name__}")
        certs = b""
        if delegated:
            der = certificate.public_bytes(serialization.Encoding.DER)
            certs = tlv(0xA0, tlv(_SEQUENCE, der))
        return cls(tlv(0xA2, tlv(_OCTETS, key_hash)), algorithm, certs)


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
        return key.sign(data, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign(data)


def encode_response(
    *,
    key: PrivateKey,
    parts: SignerParts,
    hash_name: str,
    issuer_name_hash: bytes,
    issuer_key_hash: bytes,
    serial_number: int,
    revoked_at: datetime | None,
    reason: x509.ReasonFlags | None,
    unknown: bool,
    produced_at: datetime,
    this_update: datetime,
    next_update: datetime,
    nonce: bytes | None,
) -> bytes:
    """A successful OCSPResponse carrying one signed SingleResponse (DER)."""
    cert_id = tlv(
        _SEQUENCE,
        _HASH_ALGORITHMS[hash_name]
        + tlv(_OCTETS, issuer_name_hash)
        + tlv(_OCTETS, issuer_key_hash)
        + integer(serial_number),
    )
    if revoked_at is not None:
        revoked = generalized_time(revoked_at)
        if reason is not None:
            revoked += _REASONS[reason]
        status = tlv(0xA1, revoked)  # [1] IMPLICIT RevokedInfo
    else:
        status = _UNKNOWN if unknown else _GOOD
    single = tlv(
        _SEQUENCE,
        cert_id + status + generalized_time(this_update) + tlv(0xA0, generalized_time(next_update)),
    )
    extensions = b""
    if nonce is not None:
        nonce_extension = tlv(_SEQUENCE, _NONCE_OID + tlv(_OCTETS, tlv(_OCTETS, nonce)))
        extensions = tlv(0xA1, tlv(_SEQUENCE, nonce_extension))
    tbs = tlv(
        _SEQUENCE,
        parts.responder_id + generalized_time(produced_at) + tlv(_SEQUENCE, single) + extensions,
    )
    signature = tlv(_BITS, b"\x00" + _sign(key, tbs))
    basic = tlv(_SEQUENCE, tbs + parts.signature_algorithm + signature + parts.certs)
    response_bytes = tlv(_SEQUENCE, _BASIC_OID + tlv(_OCTETS, basic))
    return tlv(_SEQUENCE, _SUCCESSFUL + tlv(0xA0, response_bytes))


__all__ = [
    "HASH_OIDS",
    "REASON_CODES",
    "SignerParts",
    "encode_response",
    "generalized_time",
    "public_key_bits",
]
