"""A small TLS service that trusts only the customer CA: the demo's proof of customization.

A device with its temporary (factory) identity fails the handshake; with its operational
identity it is greeted by name.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Sequence

from cryptography import x509

from ztpki.credentials import server_context
from ztpki.pki.keys import PrivateKey
from ztpki.pki.names import device_id_of


class CustomerService:
    """`hello DEVICE-ID` to every client whose certificate chains to the customer CA."""

    def __init__(
        self,
        key: PrivateKey,
        chain: Sequence[x509.Certificate],
        *,
        customer_anchors: Sequence[x509.Certificate],
    ) -> None:
        self._context = server_context(key, chain, client_anchors=customer_anchors)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> int:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = future.result(timeout=10)
        return self.port

    async def _start(self) -> int:
        self._server = await asyncio.start_server(
            self._greet, "127.0.0.1", 0, ssl=self._context, ssl_handshake_timeout=10
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        device = device_id_of(x509.load_der_x509_certificate(der)) if der else None
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            body = f"hello {device}\n".encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
