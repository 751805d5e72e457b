"""The OCSP responder of a CA system: status from the issuance store, signed answers, cache.

One responder answers for every CA of the system; the request's issuerNameHash and
issuerKeyHash choose the CA (pki.ocsp.IssuerIndex), anything else is ``unauthorized``.
A root that rolled its key over (`ca rollover`) is answered for under each of its keys: a
CertID naming an earlier key is signed by the responder certificate that key issued before
it was deleted (casystem.rollover_ocsp), with the status from the same issuance store
(``unknown`` for a certificate that key did not sign: the store keeps one list per CA).

Signing: by default each CA has a delegated responder (id-kp-OCSPSigning, ocsp-nocheck,
7 days) whose key, of the CA key's own algorithm and size (an RSA-3072 CA's responder signs
with RSA-3072, a P-256 CA's with P-256), is generated at start and lives only in memory, never
on disk; the running service renews it two days before it expires, as it does its TLS certificate
(server_identity). ``signer="ca"`` signs with the CA key itself instead (no extra
certificate for clients to check, at the price of the CA key signing every answer).

Cache: answers to requests without a nonce are signed once per (CA, serial) and served as
they are until the CA's ``revocation_version`` moves or half their validity has passed
(RFC 5019 pre-produced responses). A request with a nonce is signed for itself, so a cached
answer can never be replayed to it. Time comes from the caller.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from cryptography import x509

from ztpki.errors import PayloadTooLarge, Unavailable
from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.keys import generate_private_key, key_spec_of
from ztpki.pki.ocsp import (
    INTERNAL_ERROR,
    MALFORMED_REQUEST,
    TRY_LATER,
    UNAUTHORIZED,
    CertID,
    CertStatus,
    IssuerIndex,
    MalformedOCSPRequest,
    ResponseSigner,
    StatusAnswer,
    StatusRequest,
    build_response,
    issue_responder_certificate,
    parse_request,
)
from ztpki.pki.pem import serial_hex
from ztpki.pki.rollover import issued_by
from ztpki.store.records import IssuedCertificate, Revocation
from ztpki.throttle import LogThrottle

log = logging.getLogger(__name__)
# Anyone may send garbage or ask about a foreign CA, at no cost: such lines are rate-bounded.
_REFUSALS = LogThrottle(log)

DEFAULT_NEXT_UPDATE = timedelta(hours=24)
# Renew the delegated responder when fewer than 2 of its 7 days are left: an answer's
# nextUpdate never outlives its signer (pki.ocsp clamps it), so a 24 h answer signed just
# before renewal still has a day of valid signer behind it.
RESPONDER_RENEW_BEFORE = timedelta(days=2)
# Bound on pre-signed answers kept (unknown serials included): a client asking for random
# serials costs at most this much memory, then the oldest answers are signed again.
CACHE_ENTRIES = 200_000


class RevocationSource(Protocol):
    """What the responder reads of the issuance store (IssuanceStore satisfies it)."""

    def certificate(self, ca_name: str, serial: str) -> IssuedCertificate | None: ...

    def revocation(self, ca_name: str, serial: str) -> Revocation | None: ...

    def revocation_version(self, ca_name: str) -> int: ...


class SignerPolicy(StrEnum):
    DELEGATED = "delegated"  # a responder certificate per CA, key in memory (the default)
    CA = "ca"  # the CA key signs every answer


@dataclass(frozen=True)
class OCSPAnswer:
    """Bytes for the HTTP adapter, and how long an HTTP cache may keep them."""

    body: bytes
    max_age: int | None = None  # seconds; only for pre-signed answers (RFC 5019 6.2)
    this_update: datetime | None = None
    next_update: datetime | None = None


@dataclass(frozen=True)
class _Cached:
    version: int
    refresh_at: datetime
    answer: OCSPAnswer
    status: StatusAnswer


class _CASigner:
    """One CA's signer: the CA itself, or its delegated responder, renewed when due."""

    def __init__(
        self, authority: CertificateAuthority, policy: SignerPolicy, *, now: datetime
    ) -> None:
        self.authority = authority
        self.policy = policy
        self.signer = self._new_signer(now)

    def _new_signer(self, now: datetime) -> ResponseSigner:
        ca = self.authority
        if self.policy is SignerPolicy.CA:  # a token's key signs every answer itself
            return ResponseSigner(ca.certificate, ca.certificate, ca.key)
        # The CA's own algorithm: a relying party that accepts the CA's signatures accepts the
        # responder's, and the responder is never the weaker key of the two. An RSA key takes
        # 0.1-2 s to generate (4096 bits the most): at start, and at each renewal (every 5
        # days), that pauses the service's event loop that long.
        key = generate_private_key(key_spec_of(ca.certificate.public_key()))
        certificate = issue_responder_certificate(ca.certificate, ca.key, key, now=now)
        log.info(
            "issued the OCSP responder certificate of CA %s: serial=%s valid until %s",
            ca.name,
            serial_hex(certificate),
            certificate.not_valid_after_utc.isoformat(timespec="seconds"),
        )
        return ResponseSigner(ca.certificate, certificate, key)

    def renew_if_due(self, now: datetime) -> bool:
        if self.policy is SignerPolicy.CA:
            return False
        if self.signer.certificate.not_valid_after_utc - now > RESPONDER_RENEW_BEFORE:
            return False
        self.signer = self._new_signer(now)
        return True


# Which of a CA's keys a CertID names: 0 its current key, 1.. its earlier keys in the order
# given (``previous``).
CURRENT_KEY = 0


class OCSPResponder:
    """Answers DER OCSP requests for every CA of a system."""

    def __init__(
        self,
        authorities: Mapping[str, CertificateAuthority],
        source: RevocationSource,
        *,
        now: datetime,
        signer: SignerPolicy = SignerPolicy.DELEGATED,
        next_update: Mapping[str, timedelta] | None = None,
        cache_entries: int = CACHE_ENTRIES,
        previous: Mapping[str, Sequence[ResponseSigner]] | None = None,
    ) -> None:
        """``previous``: per CA, the responders of its earlier keys (a rolled-over root's),
        each issued by that key (``ResponseSigner.issuer`` names the key); they are fixed
        certificates that nothing can renew, so one that has expired answers nothing."""
        self._source = source
        self._previous = {
            (n, k): s
            for n, signers in (previous or {}).items()
            for k, s in enumerate(signers, CURRENT_KEY + 1)
        }
        issuers = {(n, CURRENT_KEY): a.certificate for n, a in authorities.items()}
        self._index = IssuerIndex(
            {**issuers, **{label: s.issuer for label, s in self._previous.items()}}
        )
        self._signers = {n: _CASigner(a, signer, now=now) for n, a in authorities.items()}
        self._next_update = dict(next_update or {})
        # CA certificates are not in the issuance store, yet a relying party checking a whole
        # chain asks about them: a CA of this system issued by another CA of this system is
        # known to its issuer (and cannot be revoked here, so it is good).
        by_subject = {a.certificate.subject: n for n, a in authorities.items()}
        self._ca_certificates = {
            (by_subject[a.certificate.issuer], a.certificate.serial_number): a.certificate
            for a in authorities.values()
            if a.certificate.issuer in by_subject
        }
        self._cache: OrderedDict[tuple[str, int, str, int], _Cached] = OrderedDict()
        self._cache_entries = cache_entries
        self._turn: object | None = None
        self._turn_versions: dict[str, int] = {}

    def signer_of(self, ca_name: str) -> ResponseSigner:
        return self._signers[ca_name].signer

    def renew_if_due(self, now: datetime) -> list[str]:
        """Renew every delegated responder close to expiry; the CAs renewed."""
        renewed = [name for name, s in self._signers.items() if s.renew_if_due(now)]
        if renewed:
            # Answers signed by the old responder stay valid where they are; new ones come
            # from the new responder.
            self._cache = OrderedDict(
                (k, v) for k, v in self._cache.items() if k[0] not in renewed or k[1] != CURRENT_KEY
            )
        return renewed

    def answer(self, der: bytes, *, now: datetime, turn: object | None = None) -> OCSPAnswer:
        """One request's answer; bad input becomes an OCSP error status, never an exception.

        ``turn``: requests answered with the same token (the HTTP server's: those it read in
        one turn of its event loop, answered one after the other with no wait between) share
        one read of each CA's revocation version. That read is a third of a pre-signed answer's
        server CPU (~35 of ~105 us under load: a read transaction on the store), and the answers
        stay as current as the turn: none waits for another's I/O in between. None: read
        for this request alone.
        """
        try:
            request = parse_request(der)
        except (MalformedOCSPRequest, PayloadTooLarge) as exc:
            _REFUSALS.log(logging.INFO, "malformed", "OCSP malformedRequest: %s", exc.message)
            return OCSPAnswer(MALFORMED_REQUEST)
        issuer = self._index.issuer_of(request.cert_id)
        earlier = None if issuer is None or issuer[1] == CURRENT_KEY else self._previous[issuer]
        if issuer is None or (earlier is not None and earlier.not_after <= now):
            _REFUSALS.log(
                logging.INFO,
                "unauthorized",
                "OCSP unauthorized: no CA of this system matches the %s issuer hashes%s",
                request.cert_id.hash_name,
                "" if earlier is None else " with a responder still valid (an earlier key's)",
            )
            return OCSPAnswer(UNAUTHORIZED)
        ca_name, key_index = issuer
        try:
            return self._status_answer(ca_name, key_index, request, now, turn)
        except Unavailable as exc:
            # The store is busy or gone for a moment: RFC 6960's tryLater, not a guess.
            log.warning("OCSP tryLater for CA %s: %s", ca_name, exc.message)
            return OCSPAnswer(TRY_LATER)
        except Exception:
            log.exception("OCSP internal error for CA %s", ca_name)
            return OCSPAnswer(INTERNAL_ERROR)

    def _signer(self, ca_name: str, key_index: int) -> ResponseSigner:
        if key_index == CURRENT_KEY:
            return self._signers[ca_name].signer
        return self._previous[(ca_name, key_index)]

    def _status_answer(
        self,
        ca_name: str,
        key_index: int,
        request: StatusRequest,
        now: datetime,
        turn: object | None,
    ) -> OCSPAnswer:
        # The version is read before the status: a revocation landing in between is cached
        # under the older version, so the next request signs again (never the reverse).
        version = self._version(ca_name, turn)
        cert_id = request.cert_id
        # The answer repeats the request's CertID, so its hash algorithm is part of the key.
        key = (ca_name, key_index, cert_id.hash_name, cert_id.serial_number)
        cached = self._cache.get(key)
        if cached is not None and cached.version != version:
            cached = None
        if request.nonce is None and cached is not None and now < cached.refresh_at:
            self._cache.move_to_end(key)
            return _with_max_age(cached.answer, now)
        # The status of a fresh cache entry is still current; only the signature is new.
        if cached is not None:
            status = cached.status
        elif key_index == CURRENT_KEY:
            status = self._status(ca_name, cert_id)
        else:
            status = self._earlier_key_status(ca_name, key_index, cert_id)
        answer = self.sign(ca_name, request, status, now=now, key_index=key_index)
        if request.nonce is not None:
            return answer  # signed for this nonce alone: never cached, never max-age
        refresh_at = refresh_time(answer)
        self._cache[key] = _Cached(version, refresh_at, answer, status)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return _with_max_age(answer, now)

    def _version(self, ca_name: str, turn: object | None) -> int:
        if turn is None:
            return self._source.revocation_version(ca_name)
        if turn is not self._turn:
            self._turn, self._turn_versions = turn, {}
        version = self._turn_versions.get(ca_name)
        if version is None:
            version = self._turn_versions[ca_name] = self._source.revocation_version(ca_name)
        return version

    def sign(
        self,
        ca_name: str,
        request: StatusRequest,
        status: StatusAnswer,
        *,
        now: datetime,
        key_index: int = CURRENT_KEY,
    ) -> OCSPAnswer:
        """A freshly signed answer saying ``status`` (the caller read it from the store), by
        the responder of the CA's key ``key_index`` names."""
        this_update = now.replace(microsecond=0)
        validity = self._next_update.get(ca_name, DEFAULT_NEXT_UPDATE)
        signer = self._signer(ca_name, key_index)
        next_update = min(this_update + validity, signer.not_after)
        body = build_response(
            request, status, signer, this_update=this_update, next_update=next_update
        )
        return OCSPAnswer(body, this_update=this_update, next_update=next_update)

    def _earlier_key_status(self, ca_name: str, key_index: int, cert_id: CertID) -> StatusAnswer:
        """The status of a certificate asked for under an earlier key of the CA: unknown
        unless that key signed it (the store keeps one list per CA, whatever key signed)."""
        issuer = self._previous[(ca_name, key_index)].issuer
        record = self._source.certificate(ca_name, cert_id.serial_hex)
        if record is None:
            certificate = self._ca_certificates.get((ca_name, cert_id.serial_number))
        else:
            certificate = x509.load_der_x509_certificate(record.certificate_der)
        if certificate is None or not issued_by(certificate, issuer):
            return StatusAnswer(CertStatus.UNKNOWN)
        return status_of(self._source.revocation(ca_name, cert_id.serial_hex))

    def _status(self, ca_name: str, cert_id: CertID) -> StatusAnswer:
        serial = cert_id.serial_hex
        revocation = self._source.revocation(ca_name, serial)
        if revocation is not None:
            return status_of(revocation)
        if self._source.certificate(ca_name, serial) is None:
            if (ca_name, cert_id.serial_number) in self._ca_certificates:
                return StatusAnswer(CertStatus.GOOD)
            return StatusAnswer(CertStatus.UNKNOWN)
        return StatusAnswer(CertStatus.GOOD)


def status_of(revocation: Revocation | None) -> StatusAnswer:
    """What OCSP says of a recorded certificate: revoked (time, reason) or good."""
    if revocation is None:
        return StatusAnswer(CertStatus.GOOD)
    return StatusAnswer(
        CertStatus.REVOKED,
        revoked_at=revocation.revoked_at,
        reason=x509.ReasonFlags(revocation.reason.value),
    )


def refresh_time(answer: OCSPAnswer) -> datetime:
    """When a pre-signed answer is signed again: half its validity (RFC 5019 6.2)."""
    assert answer.this_update is not None and answer.next_update is not None
    return answer.this_update + (answer.next_update - answer.this_update) / 2


def _with_max_age(answer: OCSPAnswer, now: datetime) -> OCSPAnswer:
    assert answer.next_update is not None
    # RFC 5019 6.2: max-age ends before nextUpdate. The status may change before that; a
    # relying party that must know at once asks with a nonce, which no cache answers.
    left = int((answer.next_update - now).total_seconds())
    return OCSPAnswer(answer.body, max(left, 0), answer.this_update, answer.next_update)


__all__ = [
    "CURRENT_KEY",
    "DEFAULT_NEXT_UPDATE",
    "OCSPAnswer",
    "OCSPResponder",
    "RevocationSource",
    "SignerPolicy",
    "refresh_time",
    "status_of",
]
