"""The revocation publisher: CRLs and OCSP over plain HTTP (aiohttp), for every CA.

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
  the size limit, 408 for a body that does not arrive in time.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from aiohttp import web

from ztpki.casystem.ocsp_presign import PresignedResponses
from ztpki.casystem.ocsp_responder import OCSPAnswer, OCSPResponder
from ztpki.errors import ListenFailed
from ztpki.eventloop import cancel_tasks
from ztpki.pki.ocsp import MALFORMED_REQUEST, MAX_REQUEST_SIZE
from ztpki.throttle import LogThrottle

log = logging.getLogger(__name__)
_REFUSALS = LogThrottle(log)

OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"
CRL_TYPE = "application/pkix-crl"
RENEW_CHECK_EVERY = 3600.0  # seconds between checks of the delegated responders' validity


@dataclass(frozen=True)
class PublisherLimits:
    """Bounds that keep one slow or hostile client from holding the publisher."""

    max_body: int = MAX_REQUEST_SIZE  # an OCSP request body (413 above)
    body_timeout: float = 10.0  # to receive a whole POST body (408 after)
    keepalive_timeout: float = 15.0  # idle connection, and a request's head, must come by then
    max_line_size: int = 4096  # a GET request line: a base64 OCSP request is far smaller
    max_field_size: int = 4096
    max_headers: int = 32


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
    ) -> None:
        self._crl_paths = dict(crl_paths)
        self._crls: dict[str, _CRLFile] = {}
        self.responder = responder
        self.limits = limits or PublisherLimits()
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._renewal: asyncio.Task[None] | None = None
        self.presigned = presigned
        self._presigning: asyncio.Task[None] | None = None

    def build(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body)
        app.add_routes(
            [
                web.get(r"/crl/{name}.crl", self._crl),
                web.post("/ocsp", self._ocsp_post),
                web.get(r"/ocsp/{request:.+}", self._ocsp_get),
            ]
        )
        return app

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen (port 0: any free port); returns the bound address."""
        limits = self.limits
        runner = web.AppRunner(
            self.build(),
            access_log=None,  # queries are not decisions; refusals are logged (bounded)
            keepalive_timeout=limits.keepalive_timeout,
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
        )
        await runner.setup()
        assert runner.server is not None
        try:
            self._server = await asyncio.get_running_loop().create_server(
                runner.server, host, port, reuse_address=True
            )
        except OSError as exc:
            await runner.cleanup()
            raise ListenFailed(host, port, exc) from None
        self._runner = runner
        self._renewal = asyncio.create_task(self._keep_renewed())
        if self.presigned is not None:
            self._presigning = asyncio.create_task(self.presigned.run(self._clock))
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        await cancel_tasks(self._renewal, self._presigning)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

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

    async def _crl(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._crl_paths:
            return _text(404, "this CA system holds no CA of that name")
        crl = self.crl_bytes(name)
        if crl is None:
            return _text(404, f"CA {name} has published no CRL yet")
        return web.Response(
            body=crl.body,
            content_type=CRL_TYPE,
            headers={"Last-Modified": crl.last_modified},
        )

    # --- OCSP -----------------------------------------------------------------------------

    async def _ocsp_post(self, request: web.Request) -> web.Response:
        if request.content_type != OCSP_REQUEST_TYPE:
            _REFUSALS.log(
                logging.INFO, "content-type", "OCSP POST refused: not %s", OCSP_REQUEST_TYPE
            )
            return _text(415, f"an OCSP request is POSTed as {OCSP_REQUEST_TYPE}")
        length = request.content_length
        if length is not None and length > self.limits.max_body:
            return _too_large(self.limits.max_body)
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await request.read()
        except TimeoutError:
            return _text(408, "the OCSP request body did not arrive in time")
        except web.HTTPRequestEntityTooLarge:
            return _too_large(self.limits.max_body)
        return self._ocsp(body)

    async def _ocsp_get(self, request: web.Request) -> web.Response:
        encoded = request.match_info["request"]
        try:
            der = binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            _REFUSALS.log(logging.INFO, "base64", "OCSP GET refused: the path is not base64")
            return _ocsp_response(OCSPAnswer(MALFORMED_REQUEST))
        return self._ocsp(der)

    def _ocsp(self, der: bytes) -> web.Response:
        return _ocsp_response(self.responder.answer(der, now=self._clock()))


def _ocsp_response(answer: OCSPAnswer) -> web.Response:
    headers: dict[str, str]
    if answer.max_age is None or answer.this_update is None or answer.next_update is None:
        # Signed for one request (a nonce) or an error: no cache may serve it to another.
        headers = {"Cache-Control": "no-store"}
    else:
        headers = {
            "Cache-Control": f"max-age={answer.max_age}, public, no-transform, must-revalidate",
            "Last-Modified": format_datetime(answer.this_update, usegmt=True),
            "Expires": format_datetime(answer.next_update, usegmt=True),
            "ETag": f'"{hashlib.sha1(answer.body, usedforsecurity=False).hexdigest()}"',
        }
    return web.Response(body=answer.body, content_type=OCSP_RESPONSE_TYPE, headers=headers)


def _too_large(limit: int) -> web.Response:
    _REFUSALS.log(logging.INFO, "too-large", "OCSP request refused: over %d octets", limit)
    return _text(413, f"an OCSP request may be at most {limit} octets")


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")


__all__ = [
    "CRL_TYPE",
    "OCSP_REQUEST_TYPE",
    "OCSP_RESPONSE_TYPE",
    "PublisherLimits",
    "RevocationPublisher",
]
