"""ztpki's own CMP client (RFC 9483 Lightweight CMP, HTTP transfer RFC 6712): what the
activating client speaks when ``--protocol cmp`` is chosen, and a CMP client for tests.

Operations (each one transaction, ``ztpki.device.cmp_transaction`` checks every answer):

    enroll        ir / cr / kur with a key made on the device (signature POPO), then
    confirm       certConf with the certificate's hash -> pkiConf
    enroll_p10    p10cr with a PKCS#10 request
    ca_certificates   genm id-it-caCerts -> genp (RFC 9483 section 4.3.1)
    revoke        rr for one of the device's own certificates -> rp (section 4.2)

When the node cannot answer yet (its CA system is slow or away) it answers ``waiting``; the
client then polls (pollReq -> pollRep, section 4.4) after each checkAfter the node names,
at most ``max_polls`` times, instead of failing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280

from ztpki.device.cmp_transaction import (
    CMPRefused,
    CMPTransaction,
    Credentials,
    NodeTrust,
    refusal_if_rejected,
)
from ztpki.device.communication import NodeAddress, device_session, discovered_resolver
from ztpki.errors import MalformedInput, Unavailable, VerificationFailed
from ztpki.pki.asn1 import decode_der, encode_der
from ztpki.pki.enveloped import open_envelope
from ztpki.pki.key_package import ID_SIGNED_DATA, read_key_package
from ztpki.pki.keys import PrivateKey, keys_match, public_key_der
from ztpki.protocol.cmp import (
    CMP_CONTENT_TYPE,
    OLD_CERT_ID,
    PVNO_CMP2021,
    BodyType,
    CertConfBody,
    CertId,
    CertRepBody,
    CertReqBody,
    CertRequest,
    CertStatus,
    CMPError,
    GenMsgBody,
    InfoTypeAndValue,
    P10crBody,
    PKIMessage,
    PKIStatus,
    PollRepBody,
    PollReqBody,
    RevDetails,
    RevRepBody,
    RevReqBody,
    SigningKey,
    StatusInfo,
    certificate_hash,
    sign_cert_request,
)
from ztpki.protocol.cmp.bodies import encode_cert_id
from ztpki.protocol.cmp.central_keygen import delivered_keys

__all__ = ["CMPClient", "Enrollment"]

MAX_ANSWER = 256 * 1024
ID_IT_CA_CERTS = "1.3.6.1.5.5.7.4.17"
_CERT_RESPONSES = {
    BodyType.IR: BodyType.IP,
    BodyType.CR: BodyType.CP,
    BodyType.P10CR: BodyType.CP,
    BodyType.KUR: BodyType.KUP,
}


@dataclass(frozen=True)
class Enrollment:
    """A certificate the node issued in ``transaction``, not yet confirmed."""

    transaction: CMPTransaction
    cert_req_id: int
    certificate: x509.Certificate
    ca_pubs: tuple[x509.Certificate, ...]
    extra_certs: tuple[x509.Certificate, ...]
    # The key the CA generated (central key generation), opened and checked.
    private_key: PrivateKey | None = field(default=None, repr=False)


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _certificates(items: Sequence[bytes], what: str) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(x509.load_der_x509_certificate(c) for c in items)
    except ValueError:
        raise MalformedInput(f"a certificate in the node's {what} does not parse") from None


def _old_cert_id(certificate: x509.Certificate) -> InfoTypeAndValue:
    """kur's oldCertID control (RFC 4211 section 6.5), with the codec's CertId encoder."""
    cert_id = CertId(certificate.issuer, certificate.serial_number)
    return InfoTypeAndValue(OLD_CERT_ID, encode_der(encode_cert_id(cert_id)))


class CMPClient:
    """CMP requests to one node URL (``…/.well-known/cmp`` or ``…/cmp/p/<label>``) with one
    identity; use as ``async with``. ``context`` is the mutual-TLS context (None: plain
    HTTP, for a CMP server behind its own transport security)."""

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        trust: NodeTrust,
        *,
        context: ssl.SSLContext | None = None,
        recipient: x509.Name | None = None,
        timeout: float = 30.0,
        max_polls: int = 10,
        now: Callable[[], datetime] | None = None,
        wait: Callable[[float], Awaitable[None]] = asyncio.sleep,
        node: NodeAddress | None = None,
    ) -> None:
        self.url = url
        self._node = node  # a discovered node: connected to at the addresses it was found at
        self.credentials = credentials
        self._trust = trust
        self._context = context
        self._recipient = recipient if recipient is not None else x509.Name([])
        self._timeout = timeout
        self._max_polls = max_polls
        self._now = now or (lambda: datetime.now(UTC))
        self._wait = wait
        self._session: aiohttp.ClientSession | None = None
        self.polls = 0  # pollReq messages sent over this client's life (for reports)
        # The certificate the node signed its last checked answer with.
        self.node_certificate: x509.Certificate | None = None

    async def __aenter__(self) -> CMPClient:
        resolver = discovered_resolver(self._node)
        self._session = device_session(self._context, timeout=self._timeout, resolver=resolver)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transactions ------------------------------------------------------------------------

    def transaction(self, *, implicit_confirm: bool = False) -> CMPTransaction:
        return CMPTransaction(
            self.credentials,
            self._trust,
            recipient=self._recipient,
            implicit_confirm=implicit_confirm,
        )

    async def _exchange(
        self,
        transaction: CMPTransaction,
        body: CertReqBody | P10crBody | CertConfBody | GenMsgBody | RevReqBody | PollReqBody,
        expected: frozenset[BodyType],
    ) -> PKIMessage:
        request = transaction.request(body, now=self._now())
        data = await self._post(request)
        try:
            return transaction.answer(data, expected, now=self._now())
        finally:
            self.node_certificate = transaction.node_certificate or self.node_certificate

    async def _post(self, request: bytes) -> bytes:
        if self._session is None:
            raise RuntimeError("CMPClient is used outside 'async with'")
        headers = {"Content-Type": CMP_CONTENT_TYPE}
        try:
            async with self._session.post(self.url, data=request, headers=headers) as resp:
                media = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                body = await resp.content.read(MAX_ANSWER + 1)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unavailable(
                f"the CMP server at {self.url} cannot be reached: {type(exc).__name__}",
                retry_after=30,
            ) from None
        if len(body) > MAX_ANSWER:
            raise MalformedInput(f"the CMP answer is larger than {MAX_ANSWER} bytes")
        if media != CMP_CONTENT_TYPE:
            raise MalformedInput(
                f"the CMP server answered HTTP {status} with Content-Type {media[:60]!r}, "
                f"not {CMP_CONTENT_TYPE}"
            )
        # RFC 6712 section 3.3: an error body may come with a 4xx/5xx status; its
        # PKIStatusInfo says more than the HTTP status, so it is decoded either way.
        return body

    # -- enrollment --------------------------------------------------------------------------

    async def enroll(
        self,
        kind: BodyType,
        key: SigningKey,
        *,
        subject: x509.Name | None = None,
        updating: x509.Certificate | None = None,
        implicit_confirm: bool = False,
    ) -> Enrollment:
        """ir, cr or kur for ``key`` (made on the device), with its signature POPO.

        ``updating`` is the certificate a kur replaces (its oldCertID control); a kur is
        protected by that certificate, so the client's credentials must be it.
        """
        if kind not in (BodyType.IR, BodyType.CR, BodyType.KUR):
            raise ValueError(f"enroll sends ir, cr or kur, not {kind.value}")
        controls = (_old_cert_id(updating),) if updating is not None else ()
        request = sign_cert_request(
            CertRequest(
                cert_req_id=0,
                subject=subject if subject is not None else self.credentials.certificate.subject,
                public_key_der=public_key_der(key.public_key()),  # type: ignore[arg-type]
                controls=controls,
            ),
            key,
        )
        transaction = self.transaction(implicit_confirm=implicit_confirm)
        enrollment = await self._certificate(
            transaction, CertReqBody(kind, (request,)), _CERT_RESPONSES[kind]
        )
        if not keys_match(key, enrollment.certificate.public_key()):  # type: ignore[arg-type]
            raise VerificationFailed("the issued certificate does not carry the device's key")
        return enrollment

    async def enroll_central(
        self, kind: BodyType = BodyType.IR, *, subject: x509.Name | None = None
    ) -> Enrollment:
        """ir or cr leaving the key to the CA (RFC 9483 4.1.6): the answer carries it signed
        by the node and enveloped to this client's key, which alone opens it."""
        if kind not in (BodyType.IR, BodyType.CR):
            raise ValueError(f"central key generation is asked with ir or cr, not {kind.value}")
        request = CertRequest(
            cert_req_id=0,
            subject=subject if subject is not None else self.credentials.certificate.subject,
        )
        transaction = self.transaction()
        transaction.pvno = PVNO_CMP2021  # EnvelopedData in the answer (RFC 9483 4.1.6)
        enrollment = await self._certificate(
            transaction, CertReqBody(kind, (request,)), _CERT_RESPONSES[kind]
        )
        key = self._open_delivered_key(transaction, enrollment.cert_req_id)
        if not keys_match(key, enrollment.certificate.public_key()):
            raise VerificationFailed("the delivered key is not the issued certificate's key")
        return replace(enrollment, private_key=key)

    def _open_delivered_key(self, transaction: CMPTransaction, cert_req_id: int) -> PrivateKey:
        try:
            envelope = delivered_keys(transaction.last_answer).get(cert_req_id)
        except CMPError as exc:
            raise MalformedInput(f"the node's answer: {exc.message}") from None
        if envelope is None:
            raise MalformedInput("the node issued a certificate but delivered no key with it")
        credentials = self.credentials
        opened = open_envelope(envelope, credentials.key, credentials.certificate)  # type: ignore[arg-type]
        if opened.content_type != ID_SIGNED_DATA:
            raise MalformedInput("the delivered key is not signed (SignedData expected)")
        assert transaction.node_certificate is not None  # the answer was checked
        # Signed by the node that protected the answer, the key generation authority.
        return read_key_package(opened.content, signer=transaction.node_certificate)

    async def enroll_p10(self, csr: x509.CertificateSigningRequest) -> Enrollment:
        """p10cr: a PKCS#10 request, answered with cp."""
        body = P10crBody(csr.public_bytes(serialization.Encoding.DER))
        enrollment = await self._certificate(self.transaction(), body, BodyType.CP)
        if enrollment.certificate.public_key() != csr.public_key():
            raise VerificationFailed("the issued certificate does not carry the CSR's key")
        return enrollment

    async def _certificate(
        self, transaction: CMPTransaction, body: CertReqBody | P10crBody, answer: BodyType
    ) -> Enrollment:
        message = await self._exchange(transaction, body, frozenset({answer}))
        rep = message.body
        assert isinstance(rep, CertRepBody)
        polls = 0
        while True:
            if len(rep.responses) != 1:
                raise MalformedInput(
                    f"the node answered {len(rep.responses)} certificate responses; expected one"
                )
            response = rep.responses[0]
            if response.cert_req_id not in (0, -1):
                raise MalformedInput(f"the node answered certReqId {response.cert_req_id}")
            if response.status.status is not PKIStatus.WAITING:
                break
            # RFC 9483 4.4: waiting -> pollReq until the certificate (or a refusal) comes.
            polls += 1
            rep = await self._poll(transaction, response.cert_req_id, polls, answer)
        refusal_if_rejected(response.status)
        if response.certificate_der is None:
            raise MalformedInput("the node accepted the request but sent no certificate")
        (certificate,) = _certificates([response.certificate_der], "certificate response")
        return Enrollment(
            transaction=transaction,
            cert_req_id=response.cert_req_id,
            certificate=certificate,
            ca_pubs=_certificates(rep.ca_pubs, "caPubs"),
            extra_certs=_certificates(message.extra_certs[1:], "extraCerts"),
        )

    async def _poll(
        self, transaction: CMPTransaction, cert_req_id: int, polls: int, answer: BodyType
    ) -> CertRepBody:
        check_after = 0
        while True:
            if polls > self._max_polls:
                raise Unavailable(
                    f"the node was still waiting for its CA after {self._max_polls} polls",
                    retry_after=max(check_after, 1),
                )
            await self._wait(check_after)
            self.polls += 1
            message = await self._exchange(
                transaction,
                PollReqBody((cert_req_id,)),
                frozenset({BodyType.POLL_REP, answer}),
            )
            body = message.body
            if isinstance(body, CertRepBody):
                return body
            assert isinstance(body, PollRepBody)
            if len(body.entries) != 1 or body.entries[0].cert_req_id != cert_req_id:
                raise MalformedInput("the node's pollRep names another request")
            # Bounded: a node naming a day would stall the device; an hour is the ceiling.
            check_after = min(max(body.entries[0].check_after, 0), 3600)
            polls += 1

    async def confirm(self, enrollment: Enrollment, *, accept: bool = True) -> None:
        """certConf for the enrolled certificate (``accept`` False: the device rejects it)."""
        status = (
            StatusInfo.accepted()
            if accept
            else StatusInfo(PKIStatus.REJECTION, text=("the device refused the certificate",))
        )
        body = CertConfBody(
            (
                CertStatus(
                    cert_hash=certificate_hash(enrollment.certificate),
                    cert_req_id=enrollment.cert_req_id,
                    status=status,
                ),
            )
        )
        await self._exchange(enrollment.transaction, body, frozenset({BodyType.PKI_CONF}))

    # -- general messages and revocation -----------------------------------------------------

    async def general(self, items: Sequence[InfoTypeAndValue]) -> tuple[InfoTypeAndValue, ...]:
        """genm with ``items`` -> the genp's items."""
        message = await self._exchange(
            self.transaction(),
            GenMsgBody(BodyType.GENM, tuple(items)),
            frozenset({BodyType.GENP}),
        )
        body = message.body
        assert isinstance(body, GenMsgBody)
        return body.items

    async def ca_certificates(self) -> list[x509.Certificate]:
        """The CA certificates the node publishes (genm id-it-caCerts)."""
        items = await self.general([InfoTypeAndValue(ID_IT_CA_CERTS)])
        found = [i for i in items if i.oid == ID_IT_CA_CERTS]
        if len(found) != 1:
            raise MalformedInput("the node's genp does not answer id-it-caCerts")
        if found[0].value is None:
            return []
        sequence = univ.SequenceOf(componentType=rfc5280.Certificate())
        value = decode_der(found[0].value, sequence, what="id-it-caCerts value")
        return list(_certificates([encode_der(c) for c in value], "id-it-caCerts"))

    async def revoke(
        self, certificate: x509.Certificate, reason: x509.ReasonFlags | None = None
    ) -> None:
        """rr for ``certificate`` (one the device holds); CMPRefused when the node refuses."""
        details = RevDetails(certificate.issuer, certificate.serial_number, reason)
        message = await self._exchange(
            self.transaction(), RevReqBody((details,)), frozenset({BodyType.RP})
        )
        body = message.body
        assert isinstance(body, RevRepBody)
        if len(body.statuses) != 1:
            raise MalformedInput(f"the node's rp carries {len(body.statuses)} statuses")
        refusal_if_rejected(body.statuses[0])
        if body.statuses[0].status not in (
            PKIStatus.ACCEPTED,
            PKIStatus.GRANTED_WITH_MODS,
            PKIStatus.REVOCATION_NOTIFICATION,
        ):
            raise CMPRefused(
                f"the node did not revoke the certificate ({body.statuses[0].status.name})",
                status=body.statuses[0],
            )
