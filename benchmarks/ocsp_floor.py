"""benchmarks/ocsp.py's Python floor: ztpki's publisher HTTP server (casystem.ocsp_http, on
uvloop as `ca serve` runs it) answering every POST with the same 500 octets, no OCSP work.

What a Python process on this machine spends per answer before any parsing, status read or
signature: the accept and close of the connection, the event loop's read and write, the
HTTP framing. Printed as `http listening on HOST:PORT` on stdout; SIGTERM ends it.

Run: .venv/bin/python benchmarks/ocsp_floor.py
"""

from __future__ import annotations

import asyncio
import signal

from ztpki.casystem.ocsp_http import HTTPReply, HTTPRequest, PublisherHTTPServer, PublisherLimits
from ztpki.eventloop import run_service

# An OCSP answer's size with its delegated responder certificate (P-256).
_BODY = b"\x30" * 500
_REPLY = HTTPReply(200, _BODY, b"application/ocsp-response", b"Cache-Control: no-store\r\n")


def _constant(request: HTTPRequest) -> HTTPReply:
    return _REPLY


async def _serve() -> None:
    server = PublisherHTTPServer(_constant, PublisherLimits())
    host, port = await server.start("127.0.0.1", 0)
    print(f"http listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.close()


if __name__ == "__main__":
    run_service(_serve(), "uvloop")
