"""A relying party's revocation decision: is this certificate revoked, by its issuer's word?

Pure decisions, no I/O and no clock (``now`` is passed in): given a certificate, the issuer
that signed it and a CRL (RFC 5280 section 6.3), or an OCSP response (RFC 6960), say good,
revoked (with the reason and time) or unknown (with why: a CRL of another issuer, a bad
signature, one past its nextUpdate). What a relying party does with "unknown" is its policy
(fail open or closed), decided by the caller. Fetching and caching live at the edge
(``ztpki.revocation_source``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from ztpki.errors import MalformedInput

__all__ = [
    "RevocationStatus",
    "RevocationVerdict",
    "check_crl",
    "check_ocsp_response",
    "crl_signed_by",
    "crl_urls",
    "load_crl",
    "ocsp_request",
    "ocsp_urls",
]

# Clocks disagree a little: a CRL issued "in the future" by this much is still taken.
CLOCK_SKEW = timedelta(minutes=5)


class RevocationStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # no usable answer: the caller's policy decides


@dataclass(frozen=True)
class RevocationVerdict:
    status: RevocationStatus
    reason: str | None = None  # RFC 5280 reason of a revocation (e.g. keyCompromise)
    revoked_at: datetime | None = None
    detail: str = ""  # why the status is unknown, in a sentence
    next_update: datetime | None = None  # when the answer's source says to ask again

    @property
    def revoked(self) -> bool:
        return self.status is RevocationStatus.REVOKED


def _unknown(detail: str) -> RevocationVerdict:
    return RevocationVerdict(RevocationStatus.UNKNOWN, detail=detail)


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes, or MalformedInput."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise MalformedInput("the CRL is not a DER or PEM X.509 CRL") from None


def _may_sign_crls(issuer: x509.Certificate) -> bool:
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no keyUsage: any use (RFC 5280 section 4.2.1.3)
    return usage.crl_sign


def _name(name: x509.Name) -> str:
    return name.rfc4514_string()


def check_crl(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crl: x509.CertificateRevocationList,
    *,
    now: datetime,
    signature_verified: bool = False,
) -> RevocationVerdict:
    """The CRL's verdict on ``cert``: revoked if listed (whatever the CRL's age: a revocation
    is not undone by time), good only from a CRL that is current (thisUpdate .. nextUpdate),
    signed by ``issuer`` and about ``issuer``'s certificates; anything else is unknown.

    ``signature_verified``: the caller checked ``crl_signed_by(crl, issuer)`` for this very
    CRL object before (the signature of a large CRL costs milliseconds; a relying party
    asks the same CRL about many certificates)."""
    if cert.issuer != issuer.subject:
        return _unknown(f"the certificate is not issued by {_name(issuer.subject)}")
    if crl.issuer != issuer.subject:
        return _unknown(
            f"the CRL is {_name(crl.issuer)}'s, not the certificate's issuer "
            f"{_name(issuer.subject)}'s"
        )
    if not _may_sign_crls(issuer):
        return _unknown(f"the issuer {_name(issuer.subject)} may not sign CRLs")
    if not signature_verified and not crl_signed_by(crl, issuer):
        return _unknown(f"the CRL's signature is not {_name(issuer.subject)}'s")
    at = _utc(now)
    next_update = crl.next_update_utc
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None:
        return RevocationVerdict(
            RevocationStatus.REVOKED,
            reason=_entry_reason(entry),
            revoked_at=entry.revocation_date_utc,
            next_update=next_update,
        )
    if crl.last_update_utc > at + CLOCK_SKEW:
        return _unknown(f"the CRL of {_name(crl.issuer)} is not valid yet (thisUpdate ahead)")
    if next_update is None:
        return _unknown(f"the CRL of {_name(crl.issuer)} has no nextUpdate")
    if at > next_update:
        return _unknown(
            f"the CRL of {_name(crl.issuer)} is stale: its nextUpdate "
            f"{next_update.isoformat()} has passed"
        )
    return RevocationVerdict(RevocationStatus.GOOD, next_update=next_update)


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """The CRL bears ``issuer``'s name and its signature."""
    return crl.issuer == issuer.subject and crl.is_signature_valid(
        issuer.public_key()  # type: ignore[arg-type]
    )


def _entry_reason(entry: x509.RevokedCertificate) -> str:
    try:
        return str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value)
    except x509.ExtensionNotFound:
        return x509.ReasonFlags.unspecified.value


def _uris(names: Sequence[x509.GeneralName] | None) -> list[str]:
    return [n.value for n in names or () if isinstance(n, x509.UniformResourceIdentifier)]


def crl_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The http URLs of the certificate's CRL distribution points (full names only)."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return ()
    urls = [u for point in points for u in _uris(point.full_name)]
    return tuple(u for u in urls if u.lower().startswith("http://"))


def ocsp_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The http URLs of the certificate's OCSP responders (authorityInfoAccess)."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return ()
    urls = [
        d.access_location.value
        for d in access
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]
    return tuple(u for u in urls if u.lower().startswith("http://"))


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A DER OCSP request for ``cert`` (SHA-1 CertID, as RFC 5019 responders expect)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 (CertID hash, not a signature)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _verify_signature(signer: x509.Certificate, response: ocsp.OCSPResponse) -> bool:
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    data, signature = response.tbs_response_bytes, response.signature
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _responder(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime
) -> x509.Certificate | None:
    """The issuer itself, or a delegated responder it issued for OCSP signing (RFC 6960
    section 4.2.2.2) carried in the response, whichever signed it."""
    if _verify_signature(issuer, response):
        return issuer
    for candidate in response.certificates:
        if candidate.issuer != issuer.subject:
            continue
        try:
            candidate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            continue
        try:
            eku = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in eku and _verify_signature(candidate, response):
            return candidate
    return None


def check_ocsp_response(
    data: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    now: datetime,
) -> RevocationVerdict:
    """The verdict of a DER OCSP response about ``cert``, after checking who signed it, that
    it answers for this certificate, and that it is current."""
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError:
        return _unknown("the OCSP response is not DER")
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return _unknown(f"the OCSP responder answered {response.response_status.name}")
    at = _utc(now)
    if _responder(response, issuer, at) is None:
        return _unknown(f"the OCSP response is not signed for {_name(issuer.subject)}")
    if response.serial_number != cert.serial_number:
        return _unknown("the OCSP response answers for another certificate")
    expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, response.hash_algorithm)
    request = expected.build()
    if (
        request.issuer_key_hash != response.issuer_key_hash
        or request.issuer_name_hash != response.issuer_name_hash
    ):
        return _unknown("the OCSP response answers for another issuer")
    next_update = response.next_update_utc
    if response.certificate_status is ocsp.OCSPCertStatus.REVOKED:
        reason = response.revocation_reason
        return RevocationVerdict(
            RevocationStatus.REVOKED,
            reason=(reason or x509.ReasonFlags.unspecified).value,
            revoked_at=response.revocation_time_utc,
            next_update=next_update,
        )
    if response.this_update_utc > at + CLOCK_SKEW:
        return _unknown("the OCSP response is not valid yet (thisUpdate ahead)")
    if next_update is not None and at > next_update:
        return _unknown("the OCSP response is stale: its nextUpdate has passed")
    if response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN:
        return _unknown("the OCSP responder does not know the certificate")
    return RevocationVerdict(RevocationStatus.GOOD, next_update=next_update)


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
