"""The DER of a signed BasicOCSPResponse (RFC 6960 4.2.1): fixed parts encoded once by pyasn1,
each answer spliced around them.

Every part that never changes for a signer is encoded at setup with pyasn1 and the RFC 6960 /
RFC 5280 structures of pyasn1-alt-modules: the responder id, the signature algorithm, the
responder certificate, the CertID's hash algorithm and issuer hashes (one prefix per CA and
hash), the status choices, the reason codes, the nonce extension's OID, the responseType.

What changes per answer (the serial, the status and its times, the nonce, the signature) is
put between them by ``_tlv`` (a tag, a DER length, the content). Measured on this machine
(Python 3.11, a P-256 answer with a nonce): the splicing costs ~5 us and the signature
~23 us, where pyasn1 building and encoding the ResponseData alone costs ~320 us and
cryptography's OCSPResponseBuilder ~215 us for the whole answer (it re-reads the responder
certificate and re-checks every field per call); openssl's whole answer costs ~120 us.
cryptography still reads every answer in the tests, and openssl verifies them end to end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import tag, univ
from pyasn1_alt_modules import rfc5280, rfc6960

from ztpki.pki.asn1 import der_tlv
from ztpki.pki.keys import signature_hash
from ztpki.pki.signer import FILE_KEYS, SigningKey, algorithm_identifier

ID_PKIX_OCSP_BASIC = str(rfc6960.id_pkix_ocsp_basic)
ID_PKIX_OCSP_NONCE = str(rfc6960.id_pkix_ocsp_nonce)
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
_SIGNATURE_OIDS = {
    "ecdsa-with-SHA256": "1.2.840.10045.4.3.2",
    "ecdsa-with-SHA384": "1.2.840.10045.4.3.3",
    "sha256WithRSAEncryption": "1.2.840.113549.1.1.11",
    "Ed25519": "1.3.101.112",
}
_NULL = encoder.encode(univ.Null(""))
# Universal and context tags of what ``_tlv`` wraps per answer.
_SEQUENCE, _OCTETS, _INTEGER, _BITS = 0x30, 0x04, 0x02, 0x03
_EXPLICIT_0, _EXPLICIT_1, _REVOKED = 0xA0, 0xA1, 0xA1  # [0], [1] constructed


_tlv = der_tlv


def _algorithm(dotted: str, *, null: bool) -> bytes:
    algorithm = rfc5280.AlgorithmIdentifier()
    algorithm["algorithm"] = univ.ObjectIdentifier(dotted)
    if null:
        algorithm["parameters"] = univ.Any(_NULL)
    return bytes(encoder.encode(algorithm))


def _status(choice: str) -> bytes:
    """CertStatus good or unknown: an IMPLICIT NULL, with the RFC module's tagging."""
    status = rfc6960.CertStatus()
    status[choice] = status.componentType[choice].asn1Object.clone("")
    return bytes(encoder.encode(status))


def _reason(code: int) -> bytes:
    # RevokedInfo's revocationReason: [0] EXPLICIT CRLReason, with the RFC module's tagging.
    schema = rfc6960.RevokedInfo.componentType.getTypeByPosition(1)
    return bytes(encoder.encode(schema.clone(code)))


# Encoded once: the CertID hash AlgorithmIdentifiers (with NULL parameters, as openssl and
# cryptography write them), the status choices, the reason fields, the nonce's and the
# response type's OIDs, the response status.
_HASH_ALGORITHMS = {name: _algorithm(dotted, null=True) for name, dotted in HASH_OIDS.items()}
_GOOD = _status("good")
_UNKNOWN = _status("unknown")
_REASONS = {reason: _reason(code) for reason, code in REASON_CODES.items()}
_NONCE_OID = encoder.encode(rfc6960.id_pkix_ocsp_nonce)
_BASIC_OID = encoder.encode(rfc6960.id_pkix_ocsp_basic)
_SUCCESSFUL = encoder.encode(rfc6960.OCSPResponseStatus("successful"))


def generalized_time(when: datetime) -> bytes:
    """GeneralizedTime in UTC, whole seconds (RFC 5280 4.1.2.5.2)."""
    found = _TIMES.get(when)
    if found is not None:
        return found
    if when.utcoffset():
        raise ValueError("OCSP times are given in UTC")
    text = (
        f"{when.year:04d}{when.month:02d}{when.day:02d}"
        f"{when.hour:02d}{when.minute:02d}{when.second:02d}Z"
    )
    found = b"\x18\x0f" + text.encode("ascii")  # 15 characters, a one-octet length
    if len(_TIMES) >= 64:
        _TIMES.clear()
    _TIMES[when] = found
    return found


# The answers of one second share their thisUpdate and nextUpdate: each is formatted once.
_TIMES: dict[datetime, bytes] = {}


def public_key_bits(certificate: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's value, which issuerKeyHash hashes (RFC 6960 4.1.1)."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    decoded, _ = decoder.decode(spki, asn1Spec=rfc5280.SubjectPublicKeyInfo())
    return bytes(decoded["subjectPublicKey"].asOctets())


def _signature_algorithm(key: SigningKey) -> bytes:
    if not isinstance(key, FILE_KEYS):  # a token's key: pki.signer knows its algorithm
        return algorithm_identifier(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        name = "ecdsa-with-SHA384" if key.curve.key_size > 256 else "ecdsa-with-SHA256"
        return _algorithm(_SIGNATURE_OIDS[name], null=False)
    if isinstance(key, rsa.RSAPrivateKey):
        return _algorithm(_SIGNATURE_OIDS["sha256WithRSAEncryption"], null=True)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _algorithm(_SIGNATURE_OIDS["Ed25519"], null=False)
    raise TypeError(f"cannot sign OCSP answers with a {type(key).__name__}")  # pragma: no cover


def _responder_certs(certificate: x509.Certificate) -> bytes:
    """BasicOCSPResponse's certs: [0] EXPLICIT SEQUENCE OF Certificate, with this one."""
    certs = univ.SequenceOf(componentType=univ.Any()).subtype(
        explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, 0)
    )
    certs.append(univ.Any(certificate.public_bytes(serialization.Encoding.DER)))
    return bytes(encoder.encode(certs))


@dataclass(frozen=True)
class SignerParts:
    """What every answer of one signer repeats, encoded once."""

    responder_id: bytes  # [2] byKey: SHA-1 of the signer's public key (RFC 6960 4.2.1)
    signature_algorithm: bytes
    certs: bytes  # [0] EXPLICIT SEQUENCE OF Certificate, or b"" when the CA signs itself
    # The CertID up to its serial, per (hash, issuerNameHash, issuerKeyHash): a CA's answers
    # repeat the CA's own hashes, so a few entries per CA.
    _cert_ids: dict[tuple[str, bytes, bytes], bytes] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def of(cls, key: SigningKey, certificate: x509.Certificate, *, delegated: bool) -> SignerParts:
        key_hash = hashlib.sha1(public_key_bits(certificate), usedforsecurity=False).digest()
        responder_id = rfc6960.ResponderID()
        responder_id["byKey"] = key_hash
        certs = _responder_certs(certificate) if delegated else b""
        return cls(encoder.encode(responder_id), _signature_algorithm(key), certs)

    def cert_id_prefix(self, hash_name: str, name_hash: bytes, key_hash: bytes) -> bytes:
        found = self._cert_ids.get((hash_name, name_hash, key_hash))
        if found is None:
            found = _HASH_ALGORITHMS[hash_name] + _tlv(_OCTETS, name_hash) + _tlv(_OCTETS, key_hash)
            if len(self._cert_ids) < 64:  # the issuer index only lets a CA's own hashes here
                self._cert_ids[(hash_name, name_hash, key_hash)] = found
        return found


def _sign(key: SigningKey, data: bytes) -> bytes:
    if not isinstance(key, FILE_KEYS):  # the token signs; ECDSA comes back DER-encoded
        algorithm = signature_hash(key)
        assert algorithm is not None  # a token key is EC or RSA (pki.signer refuses others)
        return key.sign(data, algorithm)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
        return key.sign(data, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign(data)


def encode_response(
    *,
    key: SigningKey,
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
    # A non-negative INTEGER: a leading zero octet keeps the sign bit clear.
    serial = serial_number.to_bytes(serial_number.bit_length() // 8 + 1, "big")
    cert_id = _tlv(
        _SEQUENCE,
        parts.cert_id_prefix(hash_name, issuer_name_hash, issuer_key_hash) + _tlv(_INTEGER, serial),
    )
    if revoked_at is not None:
        revoked = generalized_time(revoked_at)
        if reason is not None:
            revoked += _REASONS[reason]
        status = _tlv(_REVOKED, revoked)  # [1] IMPLICIT RevokedInfo
    else:
        status = _UNKNOWN if unknown else _GOOD
    this = generalized_time(this_update)
    single = _tlv(
        _SEQUENCE, cert_id + status + this + _tlv(_EXPLICIT_0, generalized_time(next_update))
    )
    extensions = b""
    if nonce is not None:
        nonce_extension = _tlv(_SEQUENCE, _NONCE_OID + _tlv(_OCTETS, _tlv(_OCTETS, nonce)))
        extensions = _tlv(_EXPLICIT_1, _tlv(_SEQUENCE, nonce_extension))
    produced = this if produced_at == this_update else generalized_time(produced_at)
    tbs = _tlv(_SEQUENCE, parts.responder_id + produced + _tlv(_SEQUENCE, single) + extensions)
    signature = _tlv(_BITS, b"\x00" + _sign(key, tbs))
    basic = _tlv(_SEQUENCE, tbs + parts.signature_algorithm + signature + parts.certs)
    response_bytes = _tlv(_SEQUENCE, _BASIC_OID + _tlv(_OCTETS, basic))
    return _tlv(_SEQUENCE, _SUCCESSFUL + _tlv(_EXPLICIT_0, response_bytes))


__all__ = [
    "HASH_OIDS",
    "ID_PKIX_OCSP_BASIC",
    "ID_PKIX_OCSP_NONCE",
    "REASON_CODES",
    "SignerParts",
    "encode_response",
    "generalized_time",
    "public_key_bits",
]
