"""The CMP HTTP adapter (RFC 6712, RFC 9811): POST application/pkixcmp at /.well-known/cmp and
/.well-known/cmp/p/<label>, on the node's listeners (direct and behind the proxy).

HTTP-level faults are answered in HTTP (415 wrong media type, 413 too large, 405 by aiohttp
for another method, 404 unknown label). Everything else is answered with a PKIMessage
(HTTP 200, as RFC 6712 clients expect): the handler's answer, or an ``error`` body whose
PKIFailureInfo bit is the one the refusal carries (``FAIL_TABLE``). Every answer is signed with
the node's own TLS server key and carries its chain in extraCerts, as EST's TLS does -- except
the answer to a request whose MAC verified with its device's shared secret, which is
MAC-protected with that secret (ztpki.node.cmp_mac, RFC 9483 section 4.1.5).

The request's protecting certificate is authenticated exactly as EST's TLS client
certificate is (AuthenticationModule, full chain verification), and when the request came over
a connection with a TLS client certificate (or a proxy forwarded one), the CMP signer must be
that same certificate: one request, one identity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztpki.errors import (
    MalformedInput,
    NotAuthenticated,
    NotAuthorized,
    PayloadTooLarge,
    Unavailable,
    UnsupportedParameter,
    ZtpkiError,
)
from ztpki.logs import bind
from ztpki.node.authentication import ClientIdentity, IdentityKind
from ztpki.node.authorization import Refused, RevocationUnknown, check_purpose, check_revocation
from ztpki.node.ca_client import UpstreamError
from ztpki.node.cmp_dispatch import HANDLERS
from ztpki.node.cmp_exchange import CmpExchange, CmpReply
from ztpki.node.cmp_keygen import deliver_key
from ztpki.node.cmp_mac import MacKey, authenticate_mac, check_secret_label
from ztpki.node.enrollment_types import LoadedLabel
from ztpki.node.strangers import UnauthenticatedReason
from ztpki.pki.keys import PrivateKey
from ztpki.protocol.cmp import (
    CMP_CONTENT_TYPE,
    PVNO_CMP2000,
    PVNO_CMP2021,
    BadMessageCheck,
    BadRequest,
    BadTime,
    CMPError,
    ErrorBody,
    FailInfo,
    Header,
    PKIMessage,
    StatusInfo,
    UnsupportedVersion,
    decode_message,
    protection_certificate,
    sign_message,
    verify_protection,
)
from ztpki.protocol.cmp.mac import fresh, is_mac, mac_message
from ztpki.protocol.est import UnsupportedMediaType, check_content_type
from ztpki.untrusted import quote

if TYPE_CHECKING:
    from ztpki.node.http import EstApplication

log = logging.getLogger(__name__)

WELL_KNOWN_CMP = "/.well-known/cmp"
# messageTime further than this from the node's clock is refused (badTime).
MAX_CLOCK_SKEW = timedelta(minutes=10)

# The one table from errors to PKIFailureInfo: first match wins (subclasses first).
FAIL_TABLE: tuple[tuple[type[ZtpkiError], FailInfo], ...] = (
    (NotAuthenticated, FailInfo.SIGNER_NOT_TRUSTED),
    (NotAuthorized, FailInfo.NOT_AUTHORIZED),
    (Unavailable, FailInfo.SYSTEM_UNAVAIL),
    (UpstreamError, FailInfo.SYSTEM_FAILURE),
    (MalformedInput, FailInfo.BAD_DATA_FORMAT),
    (UnsupportedParameter, FailInfo.BAD_REQUEST),
)


def fail_info_of(exc: ZtpkiError) -> FailInfo:
    if isinstance(exc, CMPError):
        return exc.fail_info
    for cls, fail in FAIL_TABLE:
        if isinstance(exc, cls):
            return fail
    return FailInfo.SYSTEM_FAILURE


@dataclass(frozen=True)
class CmpSigner:
    """The node's CMP identity: its TLS server key and chain (leaf first)."""

    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in self.chain)


class CmpEndpoint:
    """Serves CMP beside EST, with the EST application's service, checks and limits."""

    def __init__(self, est: EstApplication, signer: CmpSigner) -> None:
        self.est = est
        self.signer = signer
        self._chain_der = signer.chain_der

    def add_routes(self, app: web.Application) -> None:
        for path in (WELL_KNOWN_CMP, WELL_KNOWN_CMP + "/p/{label}"):
            app.router.add_post(path, self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        with self.est.in_flight.request():
            return await self._serve(request)

    async def _serve(self, request: web.Request) -> web.Response:
        from ztpki.node.http import error_response

        est = self.est
        try:
            label = est.service.label(request.match_info.get("label"))
            body = await self._read(request)
        except ZtpkiError as exc:  # answered in HTTP: not a CMP exchange
            response, outcome = error_response(exc)
            est.metrics.count_request("cmp", outcome)
            return response
        now, started = est.now(), time.monotonic()
        message: PKIMessage | None = None
        identity: ClientIdentity | None = None
        mac: MacKey | None = None
        try:
            message = decode_message(body)
            identity, signer, mac = await self._authenticate(request, message, label, now)
            bind(label=label.name, device_id=identity.device_id)
            handler = HANDLERS[message.body.type]
            exchange = CmpExchange(message, identity, label, est.service, now, signer)
            reply = await handler(exchange)
            outcome = reply.outcome
        except ZtpkiError as exc:
            reply, outcome = self._refusal(exc), _outcome_of(exc)
            if identity is not None and message is not None and isinstance(exc, CMPError):
                # The enrollment service audits its own refusals; the front end's are here.
                await est.service.record_refusal(_endpoint(label, message), identity, exc)
        except Exception:
            log.exception("internal error serving CMP %s", quote(request.path))
            reply = self._refusal(ZtpkiError("internal error in the customer node; see its log"))
            outcome = "internal"
        kind = message.body.type.value if message is not None else "undecoded"
        elapsed = time.monotonic() - started
        est.metrics.count_request(f"cmp-{kind}", outcome)
        est.metrics.observe_request(f"cmp-{kind}", elapsed)
        if outcome == "issued":
            est.metrics.observe_enrollment(f"cmp-{kind}", elapsed)
            est.metrics.count_issued(label.name)
        return self._response(message, reply, now, mac)

    async def _read(self, request: web.Request) -> bytes:
        limits = self.est.limits
        if request.content_length is not None and request.content_length > limits.max_body:
            raise PayloadTooLarge(
                f"the request body of {request.content_length} bytes is over the limit "
                f"of {limits.max_body}"
            )
        content_type = request.headers.get("Content-Type")
        if content_type is None:
            raise UnsupportedMediaType(f"a CMP request needs Content-Type: {CMP_CONTENT_TYPE}")
        check_content_type(content_type, CMP_CONTENT_TYPE)
        try:
            async with asyncio.timeout(limits.body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"the request body is over the limit of {limits.max_body} bytes"
            ) from None
        except TimeoutError:
            from ztpki.node.http import RequestTimeout

            raise RequestTimeout(
                f"the request body did not arrive within {limits.body_timeout:.0f} s"
            ) from None

    async def _authenticate(
        self, request: web.Request, message: PKIMessage, label: LoadedLabel, now: datetime
    ) -> tuple[ClientIdentity, x509.Certificate | None, MacKey | None]:
        """The identity that protected message, or a refusal: the signer (checked as EST's
        TLS client), or the device whose shared secret made its MAC (ztpki.node.cmp_mac)."""
        est, header = self.est, message.header
        if header.pvno not in (PVNO_CMP2000, PVNO_CMP2021):
            raise UnsupportedVersion(f"pvno {header.pvno} is not supported; use 2 or 3")
        if message.body.type not in HANDLERS:
            raise BadRequest(f"this node does not accept {message.body.type.value} requests")
        if header.protection_alg is None or message.protection is None:
            raise BadMessageCheck(
                "the message is not protected: sign it with the device's certificate and key"
            )
        if is_mac(header.protection_alg):
            identity, mac = await self._authenticate_mac(request, message, label, now)
            return identity, None, mac
        signer = protection_certificate(message)
        try:
            identity = est.authentication.authenticate(message.extra_certs[0], now=now)
        except NotAuthenticated as exc:
            endpoint = _endpoint(label, message)
            reason = UnauthenticatedReason.CERTIFICATE_REFUSED
            est.strangers.request(reason, endpoint, exc.message, peer=request.remote)
            raise
        try:
            verify_protection(message, signer)
        except CMPError as exc:  # the certificate without its key: still a stranger
            reason = UnauthenticatedReason.CERTIFICATE_REFUSED
            endpoint = _endpoint(label, message)
            est.strangers.request(reason, endpoint, exc.message, peer=request.remote)
            raise
        try:
            self._check(request, message, signer, now)
            allow = frozenset(n for n, ld in est.service.labels.items() if ld.config.allow_no_eku)
            check_purpose(identity, label=label.name, allow_no_eku=allow)
            if est.factory_crls is not None and identity.kind is IdentityKind.TEMPORARY:
                check_revocation(identity, await est.factory_crls.check(identity))
        except (CMPError, Refused, RevocationUnknown) as exc:
            await est.service.record_refusal(_endpoint(label, message), identity, exc)
            raise
        return identity, signer, None

    async def _authenticate_mac(
        self, request: web.Request, message: PKIMessage, label: LoadedLabel, now: datetime
    ) -> tuple[ClientIdentity, MacKey]:
        est = self.est
        tls = est.client_certificate(request) is not None
        try:
            identity, mac = await authenticate_mac(
                est.service.register, message, label, tls_certificate=tls
            )
        except CMPError as exc:  # no identity proven: a stranger, counted, not audited
            reason = UnauthenticatedReason.SHARED_SECRET_REFUSED
            endpoint = _endpoint(label, message)
            est.strangers.request(reason, endpoint, exc.message, peer=request.remote)
            raise
        try:
            check_secret_label(identity, label, mac)
            _check_time(message, now)
        except CMPError as exc:
            await est.service.record_refusal(_endpoint(label, message), identity, exc)
            raise
        return identity, mac

    def _check(
        self,
        request: web.Request,
        message: PKIMessage,
        signer: x509.Certificate,
        now: datetime,
    ) -> None:
        """One identity per request; a header that names it; a message of about now."""
        header = message.header
        tls = self.est.client_certificate(request)
        if tls is not None and tls != message.extra_certs[0]:
            raise CMPError(
                "the CMP message is signed with another certificate than the TLS client "
                "certificate of its connection: use one identity for both",
                fail_info=FailInfo.NOT_AUTHORIZED,
            )
        if header.sender != signer.subject:
            raise BadMessageCheck(
                "the header's sender is not the subject of the protecting certificate"
            )
        _check_time(message, now)

    def _refusal(self, exc: ZtpkiError) -> CmpReply:
        status = StatusInfo.rejection(fail_info_of(exc), exc.message)
        return CmpReply(ErrorBody(status))

    def _response(
        self, request: PKIMessage | None, reply: CmpReply, now: datetime, mac: MacKey | None
    ) -> web.Response:
        asked = request.header if request is not None else None
        header = Header(
            sender=self.signer.chain[0].subject,
            recipient=asked.sender if asked is not None else x509.Name([]),
            transaction_id=asked.transaction_id if asked is not None else os.urandom(16),
            sender_nonce=reply.sender_nonce or os.urandom(16),
            recip_nonce=asked.sender_nonce if asked is not None else None,
            pvno=asked.pvno if asked is not None and asked.pvno == PVNO_CMP2021 else PVNO_CMP2000,
            message_time=now,
            implicit_confirm=reply.implicit_confirm,
        )
        if mac is not None:
            # RFC 9483 4.1.5: the device may have no anchor for the node's signature, so the
            # answer is protected with the shared secret the request proved (a MAC is never
            # computed for a request that did not: mac is set only once it verified).
            body = mac_message(
                replace(header, sender_kid=mac.sender_kid),
                reply.body,
                fresh(mac.params),
                mac.secret,
                extra_certs=self._chain_der + reply.extra_certs,
            )
        elif reply.delivered_key is not None:
            body = deliver_key(header, reply, self.signer.key, self.signer.chain)
        else:
            body = sign_message(
                header,
                reply.body,
                self.signer.key,
                extra_certs=self._chain_der + reply.extra_certs,
            )
        response = web.Response(body=body)
        response.headers["Content-Type"] = CMP_CONTENT_TYPE
        response.headers["Cache-Control"] = "no-store"
        return response


def _check_time(message: PKIMessage, now: datetime) -> None:
    moment = message.header.message_time
    if moment is not None and abs(moment - now) > MAX_CLOCK_SKEW:
        raise BadTime(
            f"messageTime {moment:%Y-%m-%dT%H:%M:%SZ} is more than "
            f"{MAX_CLOCK_SKEW.seconds // 60} minutes from the node's clock"
        )


def _endpoint(label: LoadedLabel, message: PKIMessage) -> str:
    return f"cmp/{label.name}/{message.body.type.value}"


def _outcome_of(exc: ZtpkiError) -> str:
    if isinstance(exc, Refused):
        return f"refused-{exc.reason.value}"
    return f"refused-{fail_info_of(exc).wire_name}"
