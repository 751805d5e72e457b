"""OCSP (RFC 6960, RFC 5019 profile) without I/O: parse a request, find its issuer, build and
sign the answer, and the delegated responder certificate. The caller passes ``now`` in.

Decisions, each a reading of the RFCs:

* One certificate per request. RFC 6960 allows a requestList of several; the lightweight
  profile every relying party we know of speaks (RFC 5019 2.1.1) allows exactly one, and
  cryptography parses only that. A request with several is answered ``malformedRequest``.
* Request signatures (RFC 6960 4.1.2 optionalSignature) are not checked: the responder
  serves anyone, so a signature would authorise nothing.
* A nonce (RFC 8954) of 1 to 32 octets is echoed; an empty or longer one is
  ``malformedRequest``, as RFC 8954 section 2.1 requires. An unknown *critical* request
  extension is ``malformedRequest`` too (RFC 5280 4.2 semantics); unknown non-critical ones
  are ignored.
* The issuer is whoever matches both issuerNameHash and issuerKeyHash, in any of the hash
  algorithms below; a request for an issuer the system does not hold is ``unauthorized``
  (RFC 6960 2.3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from ztpki.errors import MalformedInput, PayloadTooLarge, UnsupportedParameter
from ztpki.pki.keys import PrivateKey
from ztpki.pki.ocsp_der import SignerParts, encode_response, public_key_bits
from ztpki.pki.profiles import digital_signature_only
from ztpki.pki.signer import SigningKey, sign_certificate

# RFC 6960 sets no size. One CertID with a SHA-512 hash, a 32-octet nonce and a few other
# extensions fits in 1 KiB; a signed request with its certificates in a few. 8 KiB refuses
# nothing real and keeps a parser fed by strangers small.
MAX_REQUEST_SIZE = 8192
MAX_NONCE = 32  # RFC 8954 section 2.1
CERT_ID_HASHES: tuple[hashes.HashAlgorithm, ...] = (
    # SHA-1 names the issuer here, it signs nothing: RFC 5019 clients (openssl's default)
    # send SHA-1 CertIDs.
    hashes.SHA1(),  # noqa: S303
    hashes.SHA256(),
    hashes.SHA384(),
    hashes.SHA512(),
)
_CERT_ID_HASH_NAMES = frozenset(a.name for a in CERT_ID_HASHES)
# The responder certificate lives a week: a stolen in-memory key is worth little for long,
# and the CA system renews it while it runs (casystem.ocsp_responder).
RESPONDER_LIFETIME = timedelta(days=7)
BACKDATE = timedelta(minutes=5)


class MalformedOCSPRequest(MalformedInput):
    """Bytes that are not one OCSP request this responder can answer: malformedRequest."""


class OCSPRequestTooLarge(PayloadTooLarge):
    """An OCSP request over MAX_REQUEST_SIZE octets."""


class CertStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CertID:
    """The request's CertID: which certificate of which issuer (RFC 6960 4.1.1)."""

    hash_name: str  # "sha1", "sha256", ...
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial_number: int

    @property
    def serial_hex(self) -> str:
        """The serial as the stores keep it."""
        return format(self.serial_number, "x")


@dataclass(frozen=True)
class StatusRequest:
    cert_id: CertID
    nonce: bytes | None = None


@dataclass(frozen=True)
class StatusAnswer:
    """What the responder says of one certificate."""

    status: CertStatus
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | None = None

    def __post_init__(self) -> None:
        if (self.status is CertStatus.REVOKED) != (self.revoked_at is not None):
            raise ValueError("a revocation time is given exactly when the status is revoked")


@dataclass(frozen=True)
class ResponseSigner:
    """Who signs answers for one CA: the CA itself, or its delegated responder."""

    issuer: x509.Certificate
    certificate: x509.Certificate
    key: SigningKey = field(repr=False)  # the CA's own may be in a token
    parts: SignerParts = field(init=False, repr=False, compare=False)
    # The certificate's notAfter, read once: cryptography builds a new datetime per access.
    not_after: datetime = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = SignerParts.of(self.key, self.certificate, delegated=self.delegated)
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "not_after", self.certificate.not_valid_after_utc)

    @property
    def delegated(self) -> bool:
        return self.certificate != self.issuer


def parse_request(der: bytes, *, max_size: int = MAX_REQUEST_SIZE) -> StatusRequest:
    """One DER OCSPRequest to a typed request; every failure is a typed error."""
    if len(der) > max_size:
        raise OCSPRequestTooLarge(
            f"the OCSP request is {len(der)} octets; this responder accepts at most {max_size}"
        )
    try:
        request = ocsp.load_der_ocsp_request(der)
    except NotImplementedError:
        raise MalformedOCSPRequest(
            "the OCSP request asks for several certificates; send one per request (RFC 5019)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise MalformedOCSPRequest("the body is not a DER OCSP request") from None
    try:
        algorithm = request.hash_algorithm
        extensions = request.extensions
    except (ValueError, UnsupportedAlgorithm):
        raise MalformedOCSPRequest(
            "the OCSP request uses an unknown hash algorithm or a malformed extension"
        ) from None
    nonce: bytes | None = None
    for extension in extensions:
        if isinstance(extension.value, x509.OCSPNonce):
            nonce = extension.value.nonce
            if not 1 <= len(nonce) <= MAX_NONCE:
                raise MalformedOCSPRequest(
                    f"the OCSP nonce is {len(nonce)} octets; RFC 8954 allows 1 to {MAX_NONCE}"
                )
        elif extension.critical:
            raise MalformedOCSPRequest(
                f"the OCSP request has a critical extension {extension.oid.dotted_string} "
                "this responder does not understand"
            )
    if algorithm.name not in _CERT_ID_HASH_NAMES:
        raise MalformedOCSPRequest(f"unsupported CertID hash algorithm {algorithm.name}")
    digest = algorithm.digest_size
    if len(request.issuer_name_hash) != digest or len(request.issuer_key_hash) != digest:
        raise MalformedOCSPRequest(f"the CertID hashes are not {algorithm.name} digests")
    if request.serial_number < 0:
        raise MalformedOCSPRequest("the certificate serial number is negative")
    cert_id = CertID(
        algorithm.name, request.issuer_name_hash, request.issuer_key_hash, request.serial_number
    )
    return StatusRequest(cert_id, nonce)


Label = TypeVar("Label", bound=Hashable)


class IssuerIndex(Generic[Label]):
    """Which issuer a CertID names, for every CA of a system and every supported hash.

    An issuer is a name and a key: a root that rolled its key over is two issuers with one
    name (RFC 6960 4.1.1 hashes both), each with its own label.
    """

    def __init__(self, issuers: Mapping[Label, x509.Certificate]) -> None:
        self._by_hashes: dict[tuple[str, bytes, bytes], Label] = {}
        for name, certificate in issuers.items():
            subject = certificate.subject.public_bytes()
            key = public_key_bits(certificate)
            for algorithm in CERT_ID_HASHES:
                name_hash = hashlib.new(algorithm.name, subject).digest()
                key_hash = hashlib.new(algorithm.name, key).digest()
                self._by_hashes[(algorithm.name, name_hash, key_hash)] = name

    def issuer_of(self, cert_id: CertID) -> Label | None:
        """The issuer's label, or None when no issuer matches both hashes."""
        return self._by_hashes.get(
            (cert_id.hash_name, cert_id.issuer_name_hash, cert_id.issuer_key_hash)
        )


def build_response(
    request: StatusRequest,
    answer: StatusAnswer,
    signer: ResponseSigner,
    *,
    this_update: datetime,
    next_update: datetime,
) -> bytes:
    """A signed, successful BasicOCSPResponse for the request's certificate (DER).

    The CertID is echoed as asked (same hash algorithm), the responder named by key hash
    (RFC 5019 2.2.3), and the delegated responder's certificate included so that a client
    can verify it against the CA. The nonce, when the request had one, is echoed.
    producedAt is thisUpdate: the answer is made when the status is read.
    """
    cert_id = request.cert_id
    # RFC 5280 5.3.1: unspecified is expressed by leaving the reason out.
    reason = answer.reason if answer.reason is not x509.ReasonFlags.unspecified else None
    return encode_response(
        key=signer.key,
        parts=signer.parts,
        hash_name=cert_id.hash_name,
        issuer_name_hash=cert_id.issuer_name_hash,
        issuer_key_hash=cert_id.issuer_key_hash,
        serial_number=cert_id.serial_number,
        revoked_at=answer.revoked_at,
        reason=reason,
        unknown=answer.status is CertStatus.UNKNOWN,
        produced_at=this_update,
        this_update=this_update,
        next_update=min(next_update, signer.not_after),
        nonce=request.nonce,
    )


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsigned error answer: malformedRequest, unauthorized, internalError, tryLater."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


MALFORMED_REQUEST = unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
UNAUTHORIZED = unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
INTERNAL_ERROR = unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
TRY_LATER = unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)


def issue_responder_certificate(
    ca_certificate: x509.Certificate,
    ca_key: SigningKey,
    responder_key: PrivateKey,
    *,
    now: datetime,
    lifetime: timedelta = RESPONDER_LIFETIME,
    serial_number: int | None = None,
) -> x509.Certificate:
    """A delegated OCSP responder certificate for one CA (RFC 6960 4.2.2.2).

    id-kp-OCSPSigning and nothing else, digitalSignature only, and id-pkix-ocsp-nocheck
    (4.2.2.2.1): clients trust it for its short life without asking about it, which is why
    it is short. Its validity stays inside the CA's.
    """
    common_name = ca_certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ca_label = str(common_name[0].value) if common_name else "CA"
    public_key = responder_key.public_key()
    ca_ski = ca_certificate.extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_KEY_IDENTIFIER
    ).value
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    not_before = max(now - BACKDATE, ca_certificate.not_valid_before_utc)
    not_after = min(now + lifetime, ca_certificate.not_valid_after_utc)
    if not_after <= not_before:
        raise UnsupportedParameter(
            f"CA {ca_label} is not valid now: no OCSP responder certificate can be issued "
            "under it; renew the CA certificate"
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ztpki OCSP responder"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{ca_label} OCSP responder"[:64]),
                ]
            )
        )
        .issuer_name(ca_certificate.subject)
        .public_key(public_key)
        .serial_number(serial_number or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(digital_signature_only(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    return sign_certificate(builder, ca_key)


__all__ = [
    "INTERNAL_ERROR",
    "MALFORMED_REQUEST",
    "MAX_NONCE",
    "MAX_REQUEST_SIZE",
    "RESPONDER_LIFETIME",
    "TRY_LATER",
    "UNAUTHORIZED",
    "CertID",
    "CertStatus",
    "IssuerIndex",
    "MalformedOCSPRequest",
    "OCSPRequestTooLarge",
    "ResponseSigner",
    "StatusAnswer",
    "StatusRequest",
    "build_response",
    "issue_responder_certificate",
    "parse_request",
    "public_key_bits",
    "unsuccessful",
]
