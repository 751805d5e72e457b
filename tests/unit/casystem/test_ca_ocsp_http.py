"""The publisher's HTTP/1.1 server (casystem.ocsp_http) on a real loopback socket, spoken to
byte by byte: framing (Content-Length, chunked, pipelining, keep-alive, HTTP/1.0), every
limit and refusal, timeouts. A refused request never reaches the handler."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from ztpki.casystem.ocsp_http import HTTPReply, HTTPRequest, PublisherHTTPServer, PublisherLimits

LIMITS = PublisherLimits(
    max_body=64,
    body_timeout=0.5,
    keepalive_timeout=0.5,
    max_line_size=128,
    max_field_size=64,
    max_headers=5,
)
# Reading an answer never waits longer than this: far above the timeouts under test.
READ_LIMIT = 20.0


@dataclass
class Echo:
    """A handler that answers what it was asked, and remembers every request."""

    seen: list[HTTPRequest] = field(default_factory=list)

    def __call__(self, request: HTTPRequest) -> HTTPReply:
        self.seen.append(request)
        if request.path == "/boom":
            raise RuntimeError("the handler failed")
        text = f"{request.method} {request.path} {request.content_type} ".encode()
        return HTTPReply(200, text + request.body, b"application/x-echo", b"X-Seen: yes\r\n")


@dataclass
class Served:
    echo: Echo
    address: tuple[str, int]
    refusals: list[int]


def run(scenario: Callable[[Served], Awaitable[None]]) -> None:
    """``scenario`` against a server of its own, on the standard event loop."""

    async def main() -> None:
        echo = Echo()
        refusals: list[int] = []
        server = PublisherHTTPServer(
            echo, LIMITS, refused=lambda status, _: refusals.append(status)
        )
        address = await server.start("127.0.0.1", 0)
        try:
            await scenario(Served(echo, address, refusals))
        finally:
            await server.close()

    asyncio.run(main())


async def exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data``, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), READ_LIMIT)
    finally:
        writer.close()


def post(body: bytes, *, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return (
        b"POST /ocsp " + version + b"\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
        + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def statuses(raw: bytes) -> list[int]:
    """The status of every answer in ``raw`` (the echoed bodies end without a line break)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def test_ok_pipelined_requests_answered_in_order_then_close() -> None:
    async def scenario(served: Served) -> None:
        raw = await exchange(
            served.address,
            post(b"one") + post(b"two") + post(b"three", extra=b"Connection: close\r\n"),
        )
        assert statuses(raw) == [200, 200, 200]
        assert raw.index(b"POST /ocsp application/ocsp-request one") < raw.index(b"two")
        assert raw.index(b"two") < raw.index(b"three")
        assert raw.count(b"Connection: close") == 1 and b"X-Seen: yes" in raw
        assert [r.body for r in served.echo.seen] == [b"one", b"two", b"three"]

    run(scenario)


def test_ok_http10_closes_and_keep_alive_stays_open() -> None:
    async def scenario(served: Served) -> None:
        raw = await exchange(served.address, post(b"old", version=b"HTTP/1.0"))
        assert statuses(raw) == [200] and b"Connection: close" in raw
        # HTTP/1.1 without Connection: close stays open: the answer comes, then the idle timeout
        # (0.5 s) ends the connection, not the server's answer.
        reader, writer = await asyncio.open_connection(*served.address)
        try:
            writer.write(post(b"kept"))
            head = await asyncio.wait_for(reader.readuntil(b"kept"), READ_LIMIT)
            assert b"Connection: close" not in head
            writer.write(post(b"again"))
            assert (await asyncio.wait_for(reader.readuntil(b"again"), READ_LIMIT)).startswith(
                b"HTTP/1.1 200"
            )
            assert await asyncio.wait_for(reader.read(), READ_LIMIT) == b""  # closed when idle
        finally:
            writer.close()

    run(scenario)


def test_ok_chunked_body_head_and_expect_continue() -> None:
    async def scenario(served: Served) -> None:
        chunked = (
            b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/ocsp-request; charset=x\r\n\r\n"
            b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
        )
        head = b"HEAD /ocsp/QUJD HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        raw = await exchange(served.address, chunked + head)
        assert statuses(raw) == [200, 200]
        assert raw.endswith(b"\r\n\r\n")  # HEAD: the length of the body, not the body
        assert [(r.method, r.body, r.content_type) for r in served.echo.seen] == [
            ("POST", b"abcdefg", "application/ocsp-request"),
            ("HEAD", b"", ""),
        ]
        raw = await exchange(
            served.address, post(b"body", extra=b"Expect: 100-continue\r\nConnection: close\r\n")
        )
        assert statuses(raw) == [100, 200] and raw.endswith(b"body")

    run(scenario)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (post(b"x", extra=b"Transfer-Encoding: chunked\r\n"), 400),  # both framings
        (post(b"x", extra=b"Content-Length: 2\r\n"), 400),  # two different lengths
        (post(b"x", extra=b"Transfer-Encoding: gzip\r\n"), 501),
        (b"POST /ocsp HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (post(b"x" * 65), 413),
        (b"POST /ocsp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n" + b"x" * 65, 413),
        (b"POST /ocsp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET /" + b"A" * 200 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /" + b"A" * 200, 414),  # no end of line yet: refused before it comes
        (b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 6 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nA: " + b"b" * 80 + b"\r\n\r\n", 431),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nName : v\r\n\r\n", 400),
    ],
)
def test_fail_bad_framing_and_limits(data: bytes, status: int) -> None:
    async def scenario(served: Served) -> None:
        raw = await exchange(served.address, data)
        assert statuses(raw) == [status], raw[:200]
        assert b"Connection: close" in raw
        assert served.echo.seen == []  # the handler never heard of it
        assert served.refusals == [status]

    run(scenario)


def test_fail_refused_request_ends_pipeline() -> None:
    async def scenario(served: Served) -> None:
        raw = await exchange(served.address, post(b"ok") + post(b"x" * 65) + post(b"never"))
        assert statuses(raw) == [200, 413]
        assert [r.body for r in served.echo.seen] == [b"ok"]

    run(scenario)


def test_fail_slow_body_is_408_and_silent_client_is_closed() -> None:
    async def scenario(served: Served) -> None:
        reader, writer = await asyncio.open_connection(*served.address)
        try:
            writer.write(b"POST /ocsp HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            raw = await asyncio.wait_for(reader.read(), READ_LIMIT)
        finally:
            writer.close()
        assert statuses(raw) == [408]
        # A client that sends half a head and nothing more is closed without an answer.
        reader, writer = await asyncio.open_connection(*served.address)
        try:
            writer.write(b"GET /ocsp/QUJD HTTP/1.1\r\nHost")
            assert await asyncio.wait_for(reader.read(), READ_LIMIT) == b""
        finally:
            writer.close()
        assert served.echo.seen == []

    run(scenario)


def test_fail_handler_error_is_500_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(served: Served) -> None:
        raw = await exchange(served.address, b"GET /boom HTTP/1.1\r\n\r\n" + post(b"after"))
        assert statuses(raw) == [500] and b"the handler failed" not in raw
        assert [r.path for r in served.echo.seen] == ["/boom"]
        assert "the revocation publisher failed on GET /boom" in caplog.text

    run(scenario)
