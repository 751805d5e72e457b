"""The EST HTTP adapter (RFC 7030) on aiohttp: routes, bodies, and the one error table.

Handlers are thin: resolve the label, authenticate the TLS client certificate (raw DER from
the transport's ssl_object), decode the body with ztpki.protocol.est, call the enrollment
service, encode the answer. Every ZtpkiError becomes an HTTP status in ``ERROR_TABLE`` and a
text/plain sentence; nothing else here knows about status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

from aiohttp import web
from cryptography import x509

from ztpki.errors import (
    MalformedInput,
    NotAuthenticated,
    NotAuthorized,
    PayloadTooLarge,
    Unavailable,
    UnknownCA,
    UnsupportedParameter,
    ZtpkiError,
)
from ztpki.logs import bind, log_fields
from ztpki.node.authentication import AuthenticationModule, ClientIdentity, IdentityKind
from ztpki.node.authorization import (
    InProgress,
    Operation,
    Refused,
    RevocationUnknown,
    check_purpose,
    check_revocation,
)
from ztpki.node.ca_client import UpstreamError
from ztpki.node.cmp_http import CmpEndpoint, CmpSigner
from ztpki.node.config import Limits
from ztpki.node.enrollment import EnrollmentService, LoadedLabel
from ztpki.node.factory_crls import FactoryRevocation
from ztpki.node.fleet_metrics import FleetMetrics
from ztpki.node.metrics import CONTENT_TYPE as METRICS_TYPE
from ztpki.node.metrics import Gauges, NodeMetrics
from ztpki.node.strangers import StrangerRefusals, UnauthenticatedReason
from ztpki.pki.keys import KeySpec
from ztpki.protocol.est import (
    CERTS_ONLY_TYPE,
    CSR_TYPE,
    CSRATTRS_TYPE,
    UnsupportedMediaType,
    check_content_type,
    decode_csr,
    encode_certs_only,
    encode_csrattrs,
    encode_serverkeygen,
)
from ztpki.untrusted import quote

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/est"


class RequestTimeout(ZtpkiError):
    """The client did not send its whole request body in time."""

    code = "request-timeout"


# The one table from errors to HTTP: (class, status, outcome for the metrics). First match wins,
# so subclasses come before their parents.
ERROR_TABLE: tuple[tuple[type[ZtpkiError], int, str], ...] = (
    (UnsupportedMediaType, 415, "unsupported-media-type"),
    (PayloadTooLarge, 413, "too-large"),
    (MalformedInput, 400, "malformed"),
    (UnsupportedParameter, 400, "unsupported-parameter"),
    (NotAuthenticated, 401, "unauthenticated"),
    (Refused, 403, "refused"),
    (NotAuthorized, 403, "refused"),
    (UnknownCA, 404, "unknown-label"),
    (RequestTimeout, 408, "timeout"),
    (UpstreamError, 502, "ca-system-error"),
    (InProgress, 503, "in-progress"),
    (Unavailable, 503, "unavailable"),
)
INTERNAL = (500, "internal")

# csrattrs (RFC 7030 section 4.5): the subject attribute the device id goes in, and the key
# the label's policy asks for, as OIDs.
_SERIAL_NUMBER = x509.ObjectIdentifier("2.5.4.5")
_KEY_HINTS: dict[KeySpec, tuple[list[str], list[tuple[str, list[str]]]]] = {
    KeySpec.EC_P256: (["1.2.840.10045.4.3.2"], [("1.2.840.10045.2.1", ["1.2.840.10045.3.1.7"])]),
    KeySpec.EC_P384: (["1.2.840.10045.4.3.3"], [("1.2.840.10045.2.1", ["1.3.132.0.34"])]),
    KeySpec.RSA_2048: (["1.2.840.113549.1.1.1", "1.2.840.113549.1.1.11"], []),
    KeySpec.RSA_3072: (["1.2.840.113549.1.1.1", "1.2.840.113549.1.1.11"], []),
    KeySpec.RSA_4096: (["1.2.840.113549.1.1.1", "1.2.840.113549.1.1.11"], []),
    KeySpec.ED25519: (["1.3.101.112"], []),
}


def status_of(exc: ZtpkiError) -> tuple[int, str]:
    for cls, status, outcome in ERROR_TABLE:
        if isinstance(exc, cls):
            return status, outcome
    return INTERNAL


def error_response(exc: ZtpkiError) -> tuple[web.Response, str]:
    status, outcome = status_of(exc)
    message = exc.message if status != 500 else "internal error in the customer node; see its log"
    response = web.Response(status=status, text=message.rstrip() + "\n", content_type="text/plain")
    if isinstance(exc, Unavailable):
        response.headers["Retry-After"] = str(max(1, exc.retry_after))
    if isinstance(exc, Refused):
        outcome = f"refused-{exc.reason.value}"
    return response, outcome


@functools.lru_cache(maxsize=16)
def _certs_only_body(chain: tuple[x509.Certificate, ...]) -> bytes:
    # A label's CA chain is the same on every cacerts request: encode it once.
    return encode_certs_only(chain)


def _base64_response(body: bytes, content_type: str) -> web.Response:
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    response.headers["Content-Transfer-Encoding"] = "base64"
    return response


# The answer depends on the key type alone and pyasn1 takes ~0.1 ms to encode it: once each.
@functools.cache
def csrattrs_body(key: KeySpec | None) -> bytes:
    oids, attributes = _KEY_HINTS.get(key, ([], [])) if key else ([], [])
    return encode_csrattrs(
        [_SERIAL_NUMBER, *(x509.ObjectIdentifier(o) for o in oids)],
        attributes=[
            (x509.ObjectIdentifier(t), [x509.ObjectIdentifier(v) for v in values])
            for t, values in attributes
        ],
    )


class InFlight:
    """Requests being handled now, so that a drain waits for them before closing connections
    (aiohttp stops reading a connection it closes, even mid-body)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


def peer_certificate_der(request: web.BaseRequest) -> bytes | None:
    """The TLS client certificate (leaf, DER) of the connection, if the client sent one."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der if der else None


class EstApplication:
    """Builds the aiohttp application that serves EST for one node."""

    def __init__(
        self,
        service: EnrollmentService,
        authentication: AuthenticationModule,
        *,
        limits: Limits,
        metrics: NodeMetrics,
        expose_metrics: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        client_certificate: Callable[[web.BaseRequest], bytes | None] = peer_certificate_der,
        strangers: StrangerRefusals | None = None,
        factory_crls: FactoryRevocation | None = None,
        fleet: FleetMetrics | None = None,
        in_flight: InFlight | None = None,
        cmp: CmpSigner | None = None,
    ) -> None:
        self.in_flight = in_flight or InFlight()
        metrics.watch_in_flight(lambda: self.in_flight.count)
        # The node's CMP identity: with it, CMP is served beside EST (ztpki.node.cmp_http).
        self.cmp = cmp
        self.service = service
        # With several workers: /metrics adds up every worker's figures (None: this one's).
        self.fleet = fleet
        # Refusals before authentication: counted and logged at a bounded rate, not audited.
        self.strangers = strangers or StrangerRefusals(metrics)
        # Where the client certificate comes from: the TLS transport (the direct listener), or
        # a trusted proxy's header (ztpki.node.proxy, the proxy listener). Never both.
        self.client_certificate = client_certificate
        # Only the node's own TLS layer verified the chain of a certificate it hands over.
        self._chain_verified_by_tls = client_certificate is peer_certificate_der
        self.authentication = authentication
        # The factory CAs' CRLs temporary certificates are checked against (None: none).
        self.factory_crls = factory_crls
        self.limits = limits
        self.metrics = metrics
        self.expose_metrics = expose_metrics
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    def build(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body)
        for prefix in (WELL_KNOWN, WELL_KNOWN + "/{label}"):
            app.router.add_get(f"{prefix}/cacerts", self._handler(Operation.CACERTS))
            app.router.add_get(f"{prefix}/csrattrs", self._handler(Operation.CSRATTRS))
            for operation in (
                Operation.SIMPLEENROLL,
                Operation.SIMPLEREENROLL,
                Operation.SERVERKEYGEN,
            ):
                app.router.add_post(f"{prefix}/{operation.value}", self._handler(operation))
        if self.cmp is not None:
            CmpEndpoint(self, self.cmp).add_routes(app)
        if self.expose_metrics:
            app.router.add_get("/metrics", self._counted_metrics)
        return app

    def _handler(self, operation: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            with self.in_flight.request(), log_fields():
                return await self._serve(request, operation)

        return handle

    async def _serve(self, request: web.Request, operation: Operation) -> web.Response:
        started = time.monotonic()
        try:
            label = self.service.label(request.match_info.get("label"))
            identity = await self._identity(request, operation, label)
            bind(label=label.name, device_id=identity.device_id if identity else None)
            response, outcome = await self._dispatch(request, operation, label, identity)
        except ZtpkiError as exc:
            response, outcome = error_response(exc)
        except Exception:
            log.exception("internal error serving %s %s", request.method, quote(request.path))
            response, outcome = error_response(ZtpkiError("internal"))
        elapsed = time.monotonic() - started
        self.metrics.count_request(operation.value, outcome)
        self.metrics.observe_request(operation.value, elapsed)
        if outcome == "issued":
            self.metrics.observe_enrollment(operation.value, elapsed)
            self.metrics.count_issued(label.name)
        return response

    async def _identity(
        self, request: web.Request, operation: Operation, label: LoadedLabel
    ) -> ClientIdentity | None:
        der = self.client_certificate(request)
        if der is None:
            if operation is Operation.CACERTS:
                return None
            missing = NotAuthenticated(
                f"{operation.value} needs a TLS client certificate (the device's temporary or "
                "operational certificate)"
            )
            self._refused_stranger(
                request, UnauthenticatedReason.NO_CERTIFICATE, operation, label, missing
            )
            raise missing
        try:
            identity = self.authentication.authenticate(
                der, now=self._clock(), chain_verified_by_tls=self._chain_verified_by_tls
            )
        except NotAuthenticated as exc:
            if operation is Operation.CACERTS:
                return None  # cacerts needs no authentication (RFC 7030 section 4.1.1)
            self._refused_stranger(
                request, UnauthenticatedReason.CERTIFICATE_REFUSED, operation, label, exc
            )
            raise
        checked = await self._check_purpose(identity, operation, label)
        return None if checked is None else await self._check_revocation(checked, operation, label)

    async def _check_purpose(
        self, identity: ClientIdentity, operation: Operation, label: LoadedLabel
    ) -> ClientIdentity | None:
        """A certificate without EKU counts only where its label's policy allows it."""
        allow = (n for n, loaded in self.service.labels.items() if loaded.config.allow_no_eku)
        try:
            check_purpose(identity, label=label.name, allow_no_eku=frozenset(allow))
        except Refused as exc:
            if operation is Operation.CACERTS:
                return None  # served as to anyone; such a certificate confirms nothing
            await self.service.record_refusal(f"est/{label.name}/{operation.value}", identity, exc)
            raise
        return identity

    async def _check_revocation(
        self, identity: ClientIdentity, operation: Operation, label: LoadedLabel
    ) -> ClientIdentity | None:
        """A temporary certificate its factory CA revoked is refused, audited (an identity
        of a genuine factory CA, so the refusal is authorization's, not authentication's)."""
        if self.factory_crls is None or identity.kind is not IdentityKind.TEMPORARY:
            return identity
        try:
            check_revocation(identity, await self.factory_crls.check(identity))
        except (Refused, RevocationUnknown) as exc:
            if operation is Operation.CACERTS:
                return None  # served as to anyone; such a certificate confirms nothing
            await self.service.record_refusal(f"est/{label.name}/{operation.value}", identity, exc)
            raise
        return identity

    def _refused_stranger(
        self,
        request: web.Request,
        reason: UnauthenticatedReason,
        operation: Operation,
        label: LoadedLabel,
        exc: NotAuthenticated,
    ) -> None:
        # No identity was authenticated: nothing to audit (see ztpki.node.strangers).
        endpoint = f"est/{label.name}/{operation.value}"
        self.strangers.request(reason, endpoint, exc.message, peer=request.remote)

    async def _dispatch(
        self,
        request: web.Request,
        operation: Operation,
        label: LoadedLabel,
        identity: ClientIdentity | None,
    ) -> tuple[web.Response, str]:
        if operation is Operation.CACERTS:
            chain = await self.service.cacerts(label, identity)
            return _base64_response(_certs_only_body(chain), CERTS_ONLY_TYPE), "served"
        assert identity is not None
        if operation is Operation.CSRATTRS:
            key = await self.service.csrattrs(label, identity)
            return _base64_response(csrattrs_body(key), CSRATTRS_TYPE), "served"
        try:
            csr = await self._read_csr(request)
        except ZtpkiError as exc:
            await self.service.record_refusal(f"est/{label.name}/{operation.value}", identity, exc)
            raise
        enrolled = await self.service.enroll(operation, label, identity, csr)
        if operation is Operation.SERVERKEYGEN:
            assert enrolled.private_key_der is not None
            content_type, body = encode_serverkeygen(
                private_key_der=enrolled.private_key_der, certificate=enrolled.certificate
            )
            response = web.Response(body=body)
            response.headers["Content-Type"] = content_type
        else:
            response = _base64_response(encode_certs_only([enrolled.certificate]), CERTS_ONLY_TYPE)
        response.headers["Cache-Control"] = "no-store"
        return response, enrolled.outcome

    async def _read_csr(self, request: web.Request) -> x509.CertificateSigningRequest:
        limit = self.limits.max_body
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(
                f"the request body of {request.content_length} bytes is over the limit of {limit}"
            )
        check_content_type(request.headers.get("Content-Type"), CSR_TYPE)
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes") from None
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self.limits.body_timeout:.0f} s"
            ) from None
        return decode_csr(
            body,
            content_type=request.headers.get("Content-Type"),
            transfer_encoding=request.headers.get("Content-Transfer-Encoding"),
            limit=limit,
        )

    async def _counted_metrics(self, request: web.Request) -> web.Response:
        with self.in_flight.request():
            return await self._metrics(request)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.count_request("metrics", "served")
        counts = await self.service.register.counts()
        devices = {s.value: n for s, n in counts.items()}
        revocations = await self.service.register.open_revocation_counts()
        if self.fleet is None:
            text = self.metrics.exposition(
                Gauges(devices, revocations, in_flight=self.metrics.in_flight())
            )
        else:
            total, workers = await self.fleet.collect()
            text = total.exposition(Gauges(devices, revocations, total.in_flight(), workers))
        response = web.Response(text=text)
        response.headers["Content-Type"] = METRICS_TYPE
        return response
