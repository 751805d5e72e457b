"""A small HTTP/1.1 server for the revocation publisher: one asyncio.Protocol per connection.

Why not aiohttp here: an OCSP answer is ~40 us of work (parse, cache or sign), and aiohttp's
request machinery (protocol object, parser, a task per request, timers, response writer) cost
~250 us more per fresh connection and ~150 us per kept-alive request on uvloop (measured,
benchmarks/README.md "ocsp.py"), where `openssl ocsp` spends ~150 us on everything. The
publisher's three routes need little of HTTP: a request line, five headers, a body of at most
a few KiB by Content-Length or chunked, keep-alive, and a short answer written at once. The
handler is synchronous (status reads and signatures never wait on I/O), so requests on one
connection are answered in order, pipelined or not, without a task each.

Limits kept (PublisherLimits): a request line over ``max_line_size`` is 414, a header over
``max_field_size`` or more than ``max_headers`` of them 431, a body over ``max_body`` 413
(declared or counted while chunks arrive), a body not complete ``body_timeout`` after its
head 408; an idle connection, or a head that does not arrive, is closed after
``keepalive_timeout``. Every refusal ends the connection: the answer is written, the write
side shut, and what the client still sends is read and dropped until it closes (or for
``keepalive_timeout``), so that the client reads the answer instead of a TCP reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import cast

from ztpki.pki.ocsp import MAX_REQUEST_SIZE

log = logging.getLogger(__name__)

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
}
_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class PublisherLimits:
    """Bounds that keep one slow or hostile client from holding the publisher."""

    max_body: int = MAX_REQUEST_SIZE  # an OCSP request body (413 above)
    body_timeout: float = 10.0  # to receive a whole POST body (408 after)
    keepalive_timeout: float = 15.0  # idle connection, and a request's head, must come by then
    max_line_size: int = 4096  # a GET request line: a base64 OCSP request is far smaller
    max_field_size: int = 4096
    max_headers: int = 32


@dataclass(frozen=True)
class HTTPRequest:
    method: str
    path: str  # the target's path, still percent-encoded, without its query
    content_type: str  # the media type, lower case, without parameters ("" when absent)
    body: bytes


@dataclass(frozen=True)
class HTTPReply:
    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"
    headers: bytes = b""  # more header lines, each ending in CRLF


Handler = Callable[[HTTPRequest], HTTPReply]


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _DateHeader:
    """The Date header, formatted once a second rather than once an answer."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


def render(reply: HTTPReply, date: bytes, *, close: bool, head_only: bool = False) -> bytes:
    """The reply's bytes on the wire."""
    status = reply.status
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
        date,
        b"Content-Type: " + reply.content_type + b"\r\n",
        b"Content-Length: %d\r\n" % len(reply.body),
        reply.headers,
        b"Connection: close\r\n\r\n" if close else b"\r\n",
    ]
    if not head_only:
        parts.append(reply.body)
    return b"".join(parts)


@dataclass
class _Head:
    method: str
    path: str
    content_type: str
    keep_alive: bool
    length: int | None  # None: chunked
    expects_continue: bool


def parse_head(head: bytes, limits: PublisherLimits) -> _Head:
    """A request head (without its blank line) to what the server needs of it."""
    lines = head.split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > limits.max_line_size:
        raise _Refused(414, f"the request line is over {limits.max_line_size} octets")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[1].startswith(b"/"):
        raise _Refused(400, "the request line is not METHOD /path HTTP/1.x")
    method_raw, target, version = parts
    if version == b"HTTP/1.1":
        keep_alive = True
    elif version == b"HTTP/1.0":
        keep_alive = False
    else:
        raise _Refused(400, "only HTTP/1.0 and HTTP/1.1 are spoken here")
    if len(lines) - 1 > limits.max_headers:
        raise _Refused(431, f"more than {limits.max_headers} header fields")
    content_type, chunked, expects_continue = "", False, False
    lengths: set[bytes] = set()
    for line in lines[1:]:
        if len(line) > limits.max_field_size:
            raise _Refused(431, f"a header field is over {limits.max_field_size} octets")
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            raise _Refused(400, "a header line is not NAME: VALUE")
        name = name.lower()
        value = value.strip()
        if name == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif name == b"transfer-encoding":
            if value.lower() != b"chunked":
                raise _Refused(501, "only the chunked transfer coding is accepted")
            chunked = True
        elif name == b"content-type":
            content_type = value.split(b";")[0].strip().lower().decode("latin-1")
        elif name == b"connection":
            tokens = {t.strip() for t in value.lower().split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        elif name == b"expect" and value.lower() == b"100-continue":
            expects_continue = True
    length: int | None = 0
    if chunked:
        # Both framings at once is how requests are smuggled past proxies (RFC 9112 6.1).
        if lengths:
            raise _Refused(400, "a request has Content-Length or Transfer-Encoding, not both")
        length = None
    elif lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise _Refused(400, "the Content-Length is not one decimal number")
        length = int(next(iter(lengths)))
        if length > limits.max_body:
            raise _Refused(413, f"the body may be at most {limits.max_body} octets")
    path = target.split(b"?", 1)[0].decode("latin-1")
    method = method_raw.decode("latin-1")
    return _Head(method, path, content_type, keep_alive, length, expects_continue)


class _Chunks:
    """A chunked body read as it arrives (RFC 9112 7.1), its total bounded."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._body = bytearray()

    def feed(self, buffer: bytearray) -> bytes | None:
        """Consume what is complete in ``buffer``; the whole body once the last chunk came."""
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 1024:
                    raise _Refused(400, "a chunk size line is too long")
                return None
            size_text = buffer[:end].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _Refused(400, "a chunk size is not hexadecimal") from None
            if size < 0 or len(self._body) + size > self._limit:
                raise _Refused(413, f"the body may be at most {self._limit} octets")
            if size == 0:
                # The last chunk: no trailers are expected, only the final CRLF.
                if len(buffer) < end + 4:
                    return None
                if buffer[end + 2 : end + 4] != b"\r\n":
                    raise _Refused(400, "trailer fields are not accepted")
                del buffer[: end + 4]
                return bytes(self._body)
            if len(buffer) < end + 2 + size + 2:
                return None
            if buffer[end + 2 + size : end + 4 + size] != b"\r\n":
                raise _Refused(400, "a chunk does not end with CRLF")
            self._body += buffer[end + 2 : end + 2 + size]
            del buffer[: end + 4 + size]


class _Connection(asyncio.Protocol):
    """One client connection: heads, bodies, answers in order, timeouts, lingering close."""

    def __init__(self, server: PublisherHTTPServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: _Head | None = None
        self._chunks: _Chunks | None = None
        self._closing = False
        self._paused = False
        # One timer per connection, moved lazily: a kept-alive request only stores its
        # deadline, and the timer, when it fires early, sets itself for the rest.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport has asyncio.Transport's methods without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self._wait(self._limits.keepalive_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # lingering after a refusal: read and drop
        self._buffer += data
        if not self._paused:
            self._process()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close our side too

    def pause_writing(self) -> None:
        # A client that sends requests without reading answers stops being read.
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
            self._process()

    # --- requests -------------------------------------------------------------------------

    def _process(self) -> None:
        buffer = self._buffer
        while self._transport is not None and not self._closing and not self._paused:
            try:
                head = self._head
                if head is None:
                    end = buffer.find(_HEAD_END)
                    if end < 0:
                        self._check_head_size(len(buffer))
                        return
                    head = parse_head(bytes(buffer[:end]), self._limits)
                    del buffer[: end + 4]
                    self._head = head
                    if head.length is None:
                        self._chunks = _Chunks(self._limits.max_body)
                    if head.length != 0:
                        if head.expects_continue:
                            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                        self._wait(self._limits.body_timeout)
                body = self._body(head)
                if body is None:
                    return
            except _Refused as refused:
                self._refuse(refused.status, str(refused))
                return
            self._head, self._chunks = None, None
            self._answer(head, body)
            self._wait(self._limits.keepalive_timeout)

    def _check_head_size(self, size: int) -> None:
        limits = self._limits
        if size > limits.max_line_size + limits.max_headers * (limits.max_field_size + 2) + 2:
            raise _Refused(431, "the request head is too large")
        if b"\r\n" not in self._buffer[: limits.max_line_size + 2] and size > limits.max_line_size:
            raise _Refused(414, f"the request line is over {limits.max_line_size} octets")

    def _body(self, head: _Head) -> bytes | None:
        buffer = self._buffer
        if self._chunks is not None:
            return self._chunks.feed(buffer)
        assert head.length is not None
        if len(buffer) < head.length:
            return None
        body = bytes(buffer[: head.length])
        del buffer[: head.length]
        return body

    def _answer(self, head: _Head, body: bytes) -> None:
        assert self._transport is not None
        server = self._server
        request = HTTPRequest(head.method, head.path, head.content_type, body)
        try:
            reply = server.handler(request)
        except Exception:
            log.exception("the revocation publisher failed on %s %s", head.method, head.path)
            reply = HTTPReply(500, b"internal error; the responder's log says more\n")
            head.keep_alive = False
        data = render(
            reply, server.date.line(), close=not head.keep_alive, head_only=head.method == "HEAD"
        )
        self._transport.write(data)
        if not head.keep_alive:
            self._closing = True
            self._transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` and end the connection, reading what still comes meanwhile."""
        transport = self._transport
        assert transport is not None
        self._server.refused(status, message)
        reply = HTTPReply(status, message.encode() + b"\n")
        transport.write(render(reply, self._server.date.line(), close=True))
        self._closing = True
        self._buffer.clear()
        if self._paused:
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
            self._wait(self._limits.keepalive_timeout)
        else:  # pragma: no cover - TCP transports can
            transport.close()

    # --- time -----------------------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        """The connection must make progress within ``seconds`` from now."""
        deadline = self._loop.time() + seconds
        self._deadline = deadline
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._expired)
            return
        if self._closing or (self._head is None and not self._buffer):
            transport.close()  # idle between requests, or lingering long enough
        elif self._head is None:
            transport.close()  # a head that never completed: nothing to answer
        else:
            self._refuse(408, "the request body did not arrive in time")


class PublisherHTTPServer:
    """Serves ``handler`` on one listening socket; ``refused`` hears of every refusal."""

    def __init__(
        self,
        handler: Handler,
        limits: PublisherLimits,
        *,
        refused: Callable[[int, str], None] = lambda status, message: None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.refused = refused
        self.date = _DateHeader()
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self.loop = asyncio.get_running_loop()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
        )
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            if connection._transport is not None:
                connection._transport.abort()
        await self._server.wait_closed()


__all__ = [
    "HTTPReply",
    "HTTPRequest",
    "PublisherHTTPServer",
    "PublisherLimits",
    "parse_head",
    "render",
]
