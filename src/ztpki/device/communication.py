"""Communication means (35): the device's HTTPS client for EST (RFC 7030) to the customer node.

The device authenticates with a key and certificate from its memory (mutual TLS) and
verifies the node with anchors it already holds: the factory CA certificate(s) loaded at
manufacturing, or a CA the installer pinned (see ``ztpki.device.node_trust``). Every failure is
raised from the ``ztpki.errors`` tree, so callers decide by class what a failure means:

========================================  =========================================
what happened                             raised
========================================  =========================================
network error, timeout, 202, 429, 5xx     ``Unavailable`` (``retry_after`` seconds)
node certificate does not verify          ``VerificationFailed``
TLS alert: node refused our certificate   ``NotAuthenticated``
401 / 403                                 ``NotAuthenticated`` / ``NotAuthorized``
400, 415, or an answer that does not      ``MalformedInput``
parse
404                                       ``ConfigurationError`` (wrong address/label)
413                                       ``PayloadTooLarge``
========================================  =========================================
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509

from ztpki.device.connect import tls_client_context
from ztpki.device.customer_node import NodeAddress, parse_fingerprint
from ztpki.errors import (
    ConfigurationError,
    MalformedInput,
    NotAuthenticated,
    NotAuthorized,
    PayloadTooLarge,
    Unavailable,
    VerificationFailed,
    ZtpkiError,
)
from ztpki.pki.keys import PrivateKey
from ztpki.pki.pem import load_certificate_der
from ztpki.protocol.est import (
    CERTS_ONLY_TYPE,
    CSR_TYPE,
    MAX_BODY,
    ServerKeygenResponse,
    decode_certs_only,
    decode_csrattrs,
    decode_serverkeygen,
    encode_csr,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "ESTClient",
    "NodeAddress",
    "device_session",
    "node_context",
    "parse_fingerprint",
    "retry_after_seconds",
    "unverified_context",
]

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRY_AFTER = 5
MAX_RETRY_AFTER = 3600
_SHOWN_BODY = 300


def node_context(
    *,
    key: PrivateKey | None,
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> ssl.SSLContext:
    """The device's TLS context towards the node: ``key``/``chain`` out, ``anchors`` trusted."""
    if not anchors:
        raise ConfigurationError("no CA certificate is available to verify the customer node")
    return tls_client_context(key=key, chain=chain, anchors=anchors)


def device_session(
    context: ssl.SSLContext | None,
    *,
    timeout: float,
    resolver: AbstractResolver | None = None,
) -> aiohttp.ClientSession:
    """The HTTP session of one device identity towards the node (EST and CMP alike): one
    connection kept alive, so the requests of one identity share a handshake. ``resolver``:
    the addresses discovery found for the node's name, if any."""
    connector = aiohttp.TCPConnector(ssl=context or False, limit=1, resolver=resolver)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"User-Agent": "ztpki-device"},
    )


def unverified_context() -> ssl.SSLContext:
    """A context that verifies nothing and presents no certificate: only for looking at what
    a node sends (the pin probe), whose every use is then checked against the pin."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def discovered_resolver(address: NodeAddress | None) -> AbstractResolver | None:
    """For a discovered node: a resolver giving the addresses it was found at (None: resolve
    its host name as usual)."""
    return _Addresses(address) if address is not None and address.addresses else None


class _Addresses(AbstractResolver):
    """Resolves a discovered node's host name to the addresses it was discovered at (the
    host name stays what TLS verifies)."""

    def __init__(self, address: NodeAddress) -> None:
        self._address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=ip,
                port=port,
                family=socket.AF_INET6 if ":" in ip else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in self._address.addresses
        ]

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class _Answer:
    status: int
    content_type: str
    body: bytes


class ESTClient:
    """EST requests to one node over one TLS identity; use as ``async with``.

    One client keeps one connection alive (``cacerts`` then an enrollment share a handshake);
    a new identity needs a new client. ``peer_certificate`` is the node's leaf certificate
    from the last handshake. The client owns ``context`` (it hooks the context to see that
    certificate): give each client its own.
    """

    def __init__(
        self,
        address: NodeAddress,
        context: ssl.SSLContext,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.address = address
        self._context = context
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._peer_chains: list[list[bytes]] = []
        _record_peer(context, self._peer_chains)
        self.peer_certificate: x509.Certificate | None = None
        self.peer_chain: list[x509.Certificate] = []

    async def __aenter__(self) -> ESTClient:
        resolver = discovered_resolver(self.address)
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

    async def cacerts(self) -> list[x509.Certificate]:
        """The node's current CA certificates (RFC 7030 section 4.1)."""
        answer = await self._request("GET", "cacerts")
        return self._certs_only(answer, "cacerts")

    async def csrattrs(self) -> list[str]:
        """The attributes (dotted OIDs) the node wants in a CSR (RFC 7030 section 4.5).

        Needs the client certificate: the node answers only a certificate it accepts as the
        device's current one, so the activating client confirms a new identity with it.
        """
        answer = await self._request("GET", "csrattrs")
        if answer.status == 204 or not answer.body.strip():
            return []  # "no attributes" (RFC 7030 section 4.5.2)
        try:
            return decode_csrattrs(answer.body)
        except MalformedInput as exc:
            raise MalformedInput(f"the node's csrattrs answer is unusable: {exc}") from None

    async def simpleenroll(self, csr: x509.CertificateSigningRequest) -> list[x509.Certificate]:
        answer = await self._request("POST", "simpleenroll", csr=csr)
        return self._certs_only(answer, "simpleenroll")

    async def simplereenroll(self, csr: x509.CertificateSigningRequest) -> list[x509.Certificate]:
        answer = await self._request("POST", "simplereenroll", csr=csr)
        return self._certs_only(answer, "simplereenroll")

    async def serverkeygen(self, csr: x509.CertificateSigningRequest) -> ServerKeygenResponse:
        answer = await self._request("POST", "serverkeygen", csr=csr)
        try:
            return decode_serverkeygen(answer.content_type, answer.body)
        except MalformedInput as exc:
            raise MalformedInput(f"the node's serverkeygen answer is unusable: {exc}") from None

    def _certs_only(self, answer: _Answer, operation: str) -> list[x509.Certificate]:
        media = answer.content_type.split(";", 1)[0].strip().lower()
        if media != CERTS_ONLY_TYPE.split(";", 1)[0]:
            raise MalformedInput(
                f"the node answered {operation} with Content-Type {media[:60]!r}, "
                "not application/pkcs7-mime"
            )
        try:
            return decode_certs_only(answer.body)
        except MalformedInput as exc:
            raise MalformedInput(f"the node's {operation} answer is unusable: {exc}") from None

    async def _request(
        self, method: str, operation: str, *, csr: x509.CertificateSigningRequest | None = None
    ) -> _Answer:
        if self._session is None:
            raise RuntimeError("ESTClient is used outside 'async with'")
        url = self.address.url(operation)
        headers: dict[str, str] = {}
        data = None
        if csr is not None:
            data = encode_csr(csr)
            headers = {"Content-Type": CSR_TYPE, "Content-Transfer-Encoding": "base64"}
        try:
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                self._remember_peer()
                body = await _read_limited(resp)
                answer = _Answer(resp.status, resp.headers.get("Content-Type", ""), body)
                retry_after = resp.headers.get("Retry-After")
        except ZtpkiError:
            raise
        except aiohttp.ClientConnectorCertificateError as exc:
            raise VerificationFailed(
                f"the node at {self.address} presented a certificate the device cannot "
                f"verify: {exc.certificate_error}"
            ) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _transport_error(exc, self.address, operation) from None
        return _check_status(answer, retry_after, operation, str(self.address))

    def _remember_peer(self) -> None:
        if self._peer_chains:
            chain = [load_certificate_der(der) for der in self._peer_chains[-1]]
            self.peer_certificate = chain[0]
            self.peer_chain = chain


def _presented_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """DER of the certificates the peer sent, leaf first.

    Python 3.13 has ``get_unverified_chain``; 3.11 and 3.12 only have it on the private
    ``_sslobj``. Without either, the leaf alone.
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        try:
            certs = getter() or []
            chain = [c if isinstance(c, bytes) else c.public_bytes(_DER) for c in certs]
            if chain:
                return chain
        except (AttributeError, TypeError, ValueError, ssl.SSLError):
            pass
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


_DER = 2  # _ssl.ENCODING_DER


def _record_peer(context: ssl.SSLContext, sink: list[list[bytes]]) -> None:
    """Make each TLS connection of ``context`` append the peer's chain to ``sink``.

    aiohttp releases a connection as soon as a small answer is read, so the transport is
    gone before the caller could ask it; the SSL object sees the certificates at handshake.
    """

    class RecordingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            chain = _presented_chain(self)
            if chain:
                sink.append(chain)

    context.sslobject_class = RecordingSSLObject


async def _read_limited(resp: aiohttp.ClientResponse, limit: int = MAX_BODY) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(16384)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the node's answer is larger than {limit} bytes")
        chunks.append(chunk)


def _transport_error(exc: BaseException, address: NodeAddress, operation: str) -> ZtpkiError:
    """A network-level failure as a typed error; TLS alerts from the node are refusals."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return VerificationFailed(
            f"the node at {address} presented a certificate the device cannot verify: "
            f"{cause.verify_message}"
        )
    if isinstance(cause, ssl.SSLError) and "ALERT" in (cause.reason or "").upper():
        return NotAuthenticated(
            f"the node at {address} ended the TLS handshake ({cause.reason}): it does not "
            "accept the certificate the device presented"
        )
    if isinstance(exc, asyncio.TimeoutError):
        return Unavailable(
            f"the node at {address} did not answer {operation} in time", retry_after=0
        )
    detail = str(exc) or exc.__class__.__name__
    return Unavailable(
        f"cannot reach the node at {address} for {operation}: {detail[:200]}", retry_after=0
    )


def _node_text(body: bytes) -> str:
    text = body[:_SHOWN_BODY].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return " ".join(text.split()) or "no reason given"


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> int:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), bounded;
    0 when there is none, a short default when it does not parse."""
    if not value or not value.strip():
        return 0  # no hint: the caller's backoff decides
    value = value.strip()
    if value.isdigit():
        return min(int(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0, min(int(delta), MAX_RETRY_AFTER))


def _check_status(answer: _Answer, retry_after: str | None, operation: str, node: str) -> _Answer:
    status = answer.status
    if status == 200 or (status == 204 and operation == "csrattrs"):
        return answer
    said = _node_text(answer.body)
    if status == 202 or status == 429 or status >= 500:
        what = "accepted the request but has no answer yet" if status == 202 else "is unavailable"
        raise Unavailable(
            f"the node {what} ({status} to {operation}): {said}",
            retry_after=retry_after_seconds(retry_after),
        )
    errors: dict[int, type[ZtpkiError]] = {
        400: MalformedInput,
        401: NotAuthenticated,
        403: NotAuthorized,
        413: PayloadTooLarge,
        415: MalformedInput,
    }
    if status == 404:
        refusal: ZtpkiError = ConfigurationError(
            f"the node has no {operation} at {node} (404): {said}"
        )
    else:
        refusal = errors.get(status, MalformedInput)(f"node refused {operation} ({status}): {said}")
    refusal.refused_with = status
    raise refusal
