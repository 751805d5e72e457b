"""The second CA-client (18): an authorized EST request becomes an XML request to the customer
CA system, and the answer is checked before anything reaches a device.

One transport (a ``FailoverCAClient`` over one or several CA-system instances, each with a
pool of kept-alive TLS connections) serves every request. A CA system that is down or slow
raises ``Unavailable`` (HTTP 503) within ``timeout`` seconds, queueing for a pooled connection
included; with several instances, within twice that (one may hang for ``timeout`` before the
next is asked), which the issuance lease outlasts (config.Limits).

A request keeps its id through every retry and failover: the CA system answers a request it
recorded already with the same certificate (and the same key, which is why a generated key
is always asked for encrypted under a one-time passphrase: the CA system keeps only that
encrypted copy, for the retry), never with a second one.

Nothing from a CSR but its public key reaches the certificate: the CA system builds the
subject from the device id and the label's policy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Protocol, overload

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ztpki.casystem.wire import LiveCertificateExists
from ztpki.errors import (
    MalformedInput,
    Unavailable,
    UnsupportedParameter,
    ZtpkiError,
)
from ztpki.node.config import CALabel
from ztpki.pki.keys import decode_pkcs8, encode_pkcs8, keys_match, public_key_der
from ztpki.pki.names import device_id_of
from ztpki.pki.pem import load_certificate_der
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest
from ztpki.protocol.revocation import RevocationAnswer, RevocationRequest
from ztpki.store.records import RevocationReason

log = logging.getLogger(__name__)

# A quick failure (refused connection, a pooled connection the CA system closed) is worth one
# immediate retry on a fresh connection; a timeout is not.
QUICK_FAILURE = 1.0


class UpstreamError(ZtpkiError):
    """The customer CA system refused or garbled a request the node had authorized (HTTP 502)."""

    code = "ca-system-error"


class EnrollmentTransport(Protocol):
    """What the node needs of ztpki.casystem.client.CAClient (a fake in unit tests)."""

    async def enroll(self, request: EnrollmentRequest) -> EnrollmentAnswer: ...

    async def revoke(self, request: RevocationRequest) -> RevocationAnswer: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Issued:
    """A checked answer: the certificate, the CA chain, and the plain PKCS#8 key if generated."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key_der: bytes | None = field(default=None, repr=False)
    superseded_undelivered: bool = False  # the CA held a live certificate nobody received
    seconds: float = 0.0
    # Certificates nobody held, revoked (superseded) at the CA before this one was issued.
    revoked: tuple[RevocationAnswer, ...] = ()


def _already_issued(exc: ZtpkiError) -> bool:
    # The CA system refuses a second live certificate unless asked to supersede.
    return isinstance(exc, LiveCertificateExists)


class SecondCAClient:
    def __init__(
        self,
        transport: EnrollmentTransport,
        *,
        timeout: float,
        retry_after: int = 5,
        failover: bool = False,
    ) -> None:
        self._transport = transport
        # One instance: ``timeout`` for the exchange. Several: one may take all of it
        # before the transport fails over, so the next gets as long again.
        self._timeout = timeout * (2 if failover else 1)
        self._retry_after = retry_after

    async def close(self) -> None:
        await self._transport.close()

    async def issue(
        self,
        *,
        device_id: str,
        ca: CALabel,
        ca_certificate: x509.Certificate,
        csr_der: bytes | None,
        reissue: bool,
        revoke_live_first: bool = False,
        public_key_der: bytes | None = None,
    ) -> Issued:
        """Ask for a certificate (and a key when csr_der is None) for device_id under ca.

        ``revoke_live_first``: the device's live certificate at that CA is one no device
        holds (an issuance taken over from a crashed node): revoke it before superseding it.
        """
        passphrase = None
        device_key = csr_der is not None or public_key_der is not None
        if not device_key:
            # Always, whatever encrypt_key says: a retry of this request (a lost answer, a
            # failover) gets the same key only if the CA system could keep it encrypted.
            passphrase = secrets.token_urlsafe(24).encode()
        params = ca.parameters.enrollment_parameters(encrypt_passphrase=passphrase)
        if device_key:
            params = replace(params, key_algorithm=None)  # the device's key decides
        request = EnrollmentRequest(
            request_id=f"node-{secrets.token_hex(12)}",
            device_id=device_id,
            ca=ca.ca_name,
            parameters=params,
            csr_der=csr_der,
            reissue=reissue,
            public_key_der=public_key_der,
        )
        started = time.monotonic()
        superseded = False
        revoked: list[RevocationAnswer] = []
        if revoke_live_first:
            revoked.extend(await self._revoke_undelivered(device_id, ca))
        try:
            answer = await self._exchange(request)
        except ZtpkiError as exc:
            if reissue or not _already_issued(exc):
                raise self._translated(exc) from None
            # The CA system holds a live certificate for this device that the register never
            # recorded: its answer was lost (timeout, crash) before delivery. Revoke and
            # supersede it.
            log.warning("device %s: superseding a certificate that was never delivered", device_id)
            superseded = True
            revoked.extend(await self._revoke_undelivered(device_id, ca))
            try:
                answer = await self._exchange(replace(request, reissue=True))
            except ZtpkiError as again:
                raise self._translated(again) from None
        issued = _check_answer(
            answer,
            device_id=device_id,
            ca_certificate=ca_certificate,
            csr_der=csr_der,
            passphrase=passphrase,
            proven_key_der=public_key_der,
        )
        return replace(
            issued,
            superseded_undelivered=superseded,
            seconds=time.monotonic() - started,
            revoked=tuple(revoked),
        )

    async def revoke(self, request: RevocationRequest) -> RevocationAnswer:
        """Send one revocation (or release of a hold); Unavailable, or the CA's refusal."""
        return await self._exchange(request)

    async def _revoke_undelivered(self, device_id: str, ca: CALabel) -> list[RevocationAnswer]:
        # By device id: the register never learnt this certificate's serial. Sent before the
        # reissue, while the live certificate is still the undelivered one; nothing live at
        # the CA (the crashed issuance never reached it) is a refusal, and nothing to do.
        request = RevocationRequest(
            request_id=f"node-{secrets.token_hex(12)}",
            ca=ca.ca_name,
            serial=None,
            device_id=device_id,
            reason=RevocationReason.SUPERSEDED,
        )
        try:
            return [await self._exchange(request)]
        except Unavailable:
            raise
        except ZtpkiError as exc:
            log.info("device %s: no undelivered certificate to revoke (%s)", device_id, exc.message)
            return []

    @overload
    async def _exchange(self, request: EnrollmentRequest) -> EnrollmentAnswer: ...

    @overload
    async def _exchange(self, request: RevocationRequest) -> RevocationAnswer: ...

    async def _exchange(
        self, request: EnrollmentRequest | RevocationRequest
    ) -> EnrollmentAnswer | RevocationAnswer:
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                async with asyncio.timeout(self._timeout):
                    if isinstance(request, RevocationRequest):
                        return await self._transport.revoke(request)
                    return await self._transport.enroll(request)
            except TimeoutError:
                raise Unavailable(
                    f"the customer CA system did not answer within {self._timeout:.0f} s",
                    retry_after=self._retry_after,
                ) from None
            except Unavailable as exc:
                if attempt == 2 or time.monotonic() - started > QUICK_FAILURE:
                    raise Unavailable(exc.message, retry_after=self._retry_after) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _translated(exc: ZtpkiError) -> ZtpkiError:
        if isinstance(exc, Unavailable | UnsupportedParameter):
            return exc  # 503, or a CSR the CA's policy does not accept (400)
        return UpstreamError(f"the customer CA system refused the request: {exc.message}")


def _check_answer(
    answer: EnrollmentAnswer,
    *,
    device_id: str,
    ca_certificate: x509.Certificate,
    csr_der: bytes | None,
    passphrase: bytes | None,
    proven_key_der: bytes | None = None,
) -> Issued:
    """The answer, after checking it is what the node asked for; UpstreamError otherwise."""
    try:
        certificate = load_certificate_der(answer.certificate_der)
        chain = tuple(_ca_certificate(der) for der in answer.ca_certificates_der)
        certificate.verify_directly_issued_by(ca_certificate)
    except (MalformedInput, ValueError, TypeError, InvalidSignature) as exc:
        raise UpstreamError(
            f"the customer CA system answered with a certificate not issued by "
            f"{ca_certificate.subject.rfc4514_string()}: {exc}"
        ) from None
    if device_id_of(certificate) != device_id:
        raise UpstreamError(
            f"the customer CA system issued a certificate for another device than {device_id}"
        )
    key_der = None
    if csr_der is not None:
        csr_key = x509.load_der_x509_csr(csr_der).public_key()
        if public_key_der(csr_key) != public_key_der(certificate.public_key()):  # type: ignore[arg-type]
            raise UpstreamError("the customer CA system certified another key than the CSR's")
    elif proven_key_der is not None:
        if public_key_der(certificate.public_key()) != proven_key_der:  # type: ignore[arg-type]
            raise UpstreamError("the customer CA system certified another key than the device's")
    else:
        key_der = _plain_key(answer, certificate, passphrase)
    return Issued(
        certificate=certificate, chain=chain or (ca_certificate,), private_key_der=key_der
    )


@functools.lru_cache(maxsize=64)
def _ca_certificate(der: bytes) -> x509.Certificate:
    # The CA chain in every answer is the same few certificates: parse each once.
    return load_certificate_der(der)


def _plain_key(
    answer: EnrollmentAnswer, certificate: x509.Certificate, passphrase: bytes | None
) -> bytes:
    if answer.private_key_der is None:
        raise UpstreamError("the customer CA system sent no private key for serverkeygen")
    try:
        key = decode_pkcs8(
            answer.private_key_der, passphrase=passphrase if answer.private_key_encrypted else None
        )
    except MalformedInput:
        raise UpstreamError("the private key from the customer CA system does not load") from None
    if not keys_match(key, certificate.public_key()):
        raise UpstreamError(
            "the private key from the customer CA system does not match its certificate"
        )
    return encode_pkcs8(key, passphrase=None)
