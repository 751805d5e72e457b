"""The revocation publisher: CRLs and OCSP over plain HTTP, for every CA.

Plain HTTP on purpose: CRLs and OCSP answers are signed objects, and a relying party
checking revocation must not need a TLS connection whose own check needs revocation
(RFC 5280 4.2.1.13, RFC 6960 A.1).

Routes (one table, ``_routes``):

* ``GET /crl/NAME.crl``: the bytes of ``cas/NAME/crl.der`` as the CA system last wrote them
  (re-read when the file changes), ``application/pkix-crl``; 404 for a CA this system does
  not hold or one that has published no CRL yet.
* ``POST /ocsp`` (``application/ocsp-request``) and ``GET /ocsp/<base64 DER, URL-escaped>``
  (RFC 5019 4.1); answers ``application/ocsp-response``. OCSP-level refusals
  (malformedRequest, unauthorized) are OCSP answers with HTTP 200, as RFC 6960 A.1 wants;
  HTTP-level ones are 4xx: 405 for another method, 415 for another content type, 413 over
  the size limit, 408 for a body that does not arrive in time, 404 for any other path.

The HTTP server is casystem.ocsp_http (a lean asyncio.Protocol, for the CPU an answer costs);
this module is the routes and the OCSP answer's headers.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes

from cryptography import x509

from ztpki.casystem.metrics import CAGauges, CASystemMetrics, CRLState, crl_state
from ztpki.casystem.ocsp_http import HTTPReply, HTTPRequest, PublisherHTTPServer, PublisherLimits
from ztpki.casystem.ocsp_presign import PresignedResponses
from ztpki.casystem.ocsp_responder import OCSPAnswer, OCSPResponder
from ztpki.errors import ListenFailed
from ztpki.eventloop import cancel_tasks
from ztpki.pki.ocsp import INTERNAL_ERROR, MALFORMED_REQUEST, TRY_LATER, UNAUTHORIZED
from ztpki.prometheus import CONTENT_TYPE as METRICS_TYPE
from ztpki.throttle import LogThrottle

log = logging.getLogger(__name__)
_REFUSALS = LogThrottle(log)

OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"
CRL_TYPE = "application/pkix-crl"
RENEW_CHECK_EVERY = 3600.0  # seconds between checks of the delegated responders' validity
_OCSP_TYPE = OCSP_RESPONSE_TYPE.encode()
_NO_STORE = b"Cache-Control: no-store\r\n"
# Validator headers of pre-signed answers, kept per answer: formatting two dates and a SHA-1
# cost ~4.5 us per request (measured quiet), a dict lookup 0.05 us; a pre-signed answer is
# ~40 us of work. Cleared when full (answers are re-signed at least every 12 h anyway).
_VALIDATORS_KEPT = 50_000


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _CRLFile:
    stamp: tuple[int, int, int]
    body: bytes
    last_modified: str


class RevocationPublisher:
    """Serves ``cas/NAME/crl.der`` and the OCSP responder of a CA system over HTTP."""

    def __init__(
        self,
        crl_paths: Mapping[str, Path],
        responder: OCSPResponder,
        *,
        limits: PublisherLimits | None = None,
        clock: Callable[[], datetime] = _utc_now,
        presigned: PresignedResponses | None = None,
        metrics: CASystemMetrics | None = None,
        connections: Callable[[], int] | None = None,
    ) -> None:
        self._crl_paths = dict(crl_paths)
        # Counted here, read by `GET /metrics` (None: a publisher without one, in tests).
        self.metrics = metrics
        self._connections = connections
        self._crl_states: dict[str, tuple[tuple[int, int, int], CRLState]] = {}
        self._crls: dict[str, _CRLFile] = {}
        self.responder = responder
        self.limits = limits or PublisherLimits()
        self._clock = clock
        self._server: PublisherHTTPServer | None = None
        self._renewal: asyncio.Task[None] | None = None
        self.presigned = presigned
        self._presigning: asyncio.Task[None] | None = None
        self._validators: dict[bytes, bytes] = {}
        self._turn: object | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen (port 0: any free port); returns the bound address."""
        server = PublisherHTTPServer(self.handle, self.limits, refused=_refused)
        try:
            bound = await server.start(host, port)
        except OSError as exc:
            raise ListenFailed(host, port, exc) from None
        self._server = server
        self._renewal = asyncio.create_task(self._keep_renewed())
        if self.presigned is not None:
            self._presigning = asyncio.create_task(self.presigned.run(self._clock))
        return bound

    async def close(self) -> None:
        await cancel_tasks(self._renewal, self._presigning)
        if self._server is not None:
            await self._server.close()

    async def _keep_renewed(
        self, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        while True:
            await sleep(RENEW_CHECK_EVERY)
            try:
                self.responder.renew_if_due(self._clock())
            except Exception:
                # Answers keep coming from the current responder until the next check.
                log.exception(
                    "renewing an OCSP responder certificate failed; retrying in %.0f s",
                    RENEW_CHECK_EVERY,
                )

    # --- CRLs -----------------------------------------------------------------------------

    def crl_bytes(self, name: str) -> _CRLFile | None:
        """The CRL file as it is now on disk, read again only when it changed."""
        path = self._crl_paths.get(name)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._crls.get(name)
        if cached is not None and cached.stamp == stamp:
            return cached
        # The writer replaces the file by rename (write_public_file), so a read sees one
        # whole version; the stamp of what was read is the stamp before reading it.
        body = path.read_bytes()
        modified = datetime.fromtimestamp(st.st_mtime, UTC)
        crl = _CRLFile(stamp, body, format_datetime(modified, usegmt=True))
        self._crls[name] = crl
        return crl

    def handle(self, request: HTTPRequest) -> HTTPReply:
        """Every request, answered and counted (endpoint, status, time)."""
        if self.metrics is None:
            return self._route(request)
        started = time.perf_counter()
        reply = self._route(request)
        self.metrics.observe_http(
            _endpoint(request.path), reply.status, time.perf_counter() - started
        )
        return reply

    def _route(self, request: HTTPRequest) -> HTTPReply:
        """The one route table: POST /ocsp, GET /ocsp/<base64>, GET /crl/NAME.crl, and
        GET /metrics when the publisher has metrics."""
        path, method = request.path, request.method
        if path == "/metrics" and self.metrics is not None:
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD")
            return self._metrics_reply(self.metrics)
        if path == "/ocsp":
            if method != "POST":
                return _not_allowed("POST")
            return self._ocsp_post(request)
        if path.startswith("/ocsp/") and len(path) > 6:
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD")
            return self._ocsp_get(path[6:])
        if path.startswith("/crl/") and path.endswith(".crl"):
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD")
            return self._crl(unquote(path[5:-4], errors="replace"))
        return _text(404, "nothing is served at this path; see /ocsp and /crl/NAME.crl")

    def _crl(self, name: str) -> HTTPReply:
        if name not in self._crl_paths:
            return _text(404, "this CA system holds no CA of that name")
        crl = self.crl_bytes(name)
        if crl is None:
            return _text(404, f"CA {name} has published no CRL yet")
        return HTTPReply(
            200, crl.body, CRL_TYPE.encode(), f"Last-Modified: {crl.last_modified}\r\n".encode()
        )

    # --- OCSP -----------------------------------------------------------------------------

    def _ocsp_post(self, request: HTTPRequest) -> HTTPReply:
        if request.content_type != OCSP_REQUEST_TYPE:
            _REFUSALS.log(
                logging.INFO, "content-type", "OCSP POST refused: not %s", OCSP_REQUEST_TYPE
            )
            return _text(415, f"an OCSP request is POSTed as {OCSP_REQUEST_TYPE}")
        return self._ocsp(request.body)

    def _ocsp_get(self, encoded: str) -> HTTPReply:
        try:
            der = binascii.a2b_base64(unquote_to_bytes(encoded), strict_mode=True)
        except binascii.Error:
            _REFUSALS.log(logging.INFO, "base64", "OCSP GET refused: the path is not base64")
            return self._reply(OCSPAnswer(MALFORMED_REQUEST))
        return self._ocsp(der)

    def _ocsp(self, der: bytes) -> HTTPReply:
        return self._reply(self.responder.answer(der, now=self._clock(), turn=self._this_turn()))

    # --- metrics --------------------------------------------------------------------------

    def _metrics_reply(self, metrics: CASystemMetrics) -> HTTPReply:
        connections = None if self._connections is None else self._connections()
        text = metrics.exposition(CAGauges(self._crl_gauges(), connections))
        return HTTPReply(200, text.encode(), METRICS_TYPE.encode())

    def _crl_gauges(self) -> dict[str, CRLState]:
        """Each CA's published CRL as /metrics shows it, parsed again only when it changed."""
        states: dict[str, CRLState] = {}
        for name in self._crl_paths:
            crl = self.crl_bytes(name)
            if crl is None:
                continue
            known = self._crl_states.get(name)
            if known is None or known[0] != crl.stamp:
                try:
                    state = crl_state(x509.load_der_x509_crl(crl.body))
                except ValueError:
                    continue  # a file that is not a CRL: `ztpki doctor` says so
                known = self._crl_states[name] = (crl.stamp, state)
            states[name] = known[1]
        return states

    def _this_turn(self) -> object:
        """A token for the requests answered in this turn of the event loop: the HTTP server
        answers each as soon as it is read, without waiting, so they share one read of the
        store's revocation version (OCSPResponder.answer)."""
        if self._turn is None:
            self._turn = object()
            asyncio.get_running_loop().call_soon(self._end_turn)
        return self._turn

    def _end_turn(self) -> None:
        self._turn = None

    def _reply(self, answer: OCSPAnswer) -> HTTPReply:
        if self.metrics is not None:
            self.metrics.count_ocsp(_ocsp_kind(answer))
        if answer.max_age is None or answer.this_update is None or answer.next_update is None:
            # Signed for one request (a nonce) or an error: no cache may serve it to another.
            return HTTPReply(200, answer.body, _OCSP_TYPE, _NO_STORE)
        validators = self._validators.get(answer.body)
        if validators is None:
            validators = (
                f"Last-Modified: {format_datetime(answer.this_update, usegmt=True)}\r\n"
                f"Expires: {format_datetime(answer.next_update, usegmt=True)}\r\n"
                f'ETag: "{hashlib.sha1(answer.body, usedforsecurity=False).hexdigest()}"\r\n'
            ).encode()
            if len(self._validators) >= _VALIDATORS_KEPT:
                self._validators.clear()
            self._validators[answer.body] = validators
        cache = b"Cache-Control: max-age=%d, public, no-transform, must-revalidate\r\n" % (
            answer.max_age
        )
        return HTTPReply(200, answer.body, _OCSP_TYPE, cache + validators)


_OCSP_ERRORS = {
    MALFORMED_REQUEST: "malformedRequest",
    UNAUTHORIZED: "unauthorized",
    TRY_LATER: "tryLater",
    INTERNAL_ERROR: "internalError",
}


def _ocsp_kind(answer: OCSPAnswer) -> str:
    error = _OCSP_ERRORS.get(answer.body)
    if error is not None:
        return error
    return "nonce" if answer.max_age is None else "cacheable"


def _endpoint(path: str) -> str:
    """The endpoint label of a path: a fixed set, whatever a client asks for."""
    if path == "/ocsp" or path.startswith("/ocsp/"):
        return "ocsp"
    if path.startswith("/crl/"):
        return "crl"
    return "metrics" if path == "/metrics" else "other"


def _refused(status: int, message: str) -> None:
    _REFUSALS.log(logging.INFO, f"http-{status}", "HTTP %d refused: %s", status, message)


def _not_allowed(allowed: str) -> HTTPReply:
    reply = _text(405, f"this path accepts {allowed}")
    return HTTPReply(405, reply.body, reply.content_type, f"Allow: {allowed}\r\n".encode())


def _text(status: int, message: str) -> HTTPReply:
    return HTTPReply(status, (message + "\n").encode())


__all__ = [
    "CRL_TYPE",
    "OCSP_REQUEST_TYPE",
    "OCSP_RESPONSE_TYPE",
    "PublisherLimits",
    "RevocationPublisher",
]
