"""A small TLS service that trusts only the customer CA: the demo's proof of customization.

A device with its temporary (factory) identity fails the handshake; with its operational
identity it is greeted by name. As a relying party it also checks the device's certificate
against the customer device CA's CRL (``cas/devices/crl.der`` of the customer CA system, read
again for every connection: a local file, and the demo wants a block seen at once): a
revoked or held certificate is refused with 403 and the CRL's reason.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from ztpki.credentials import server_context
from ztpki.errors import ZtpkiError
from ztpki.pki.keys import PrivateKey
from ztpki.pki.names import device_id_of
from ztpki.pki.revocation_check import RevocationStatus, check_crl, load_crl
from ztpki.revocation_source import fetch_crl_bytes


class CustomerService:
    """`hello DEVICE-ID` to every client whose certificate chains to the customer CA."""

    def __init__(
        self,
        key: PrivateKey,
        chain: Sequence[x509.Certificate],
        *,
        customer_anchors: Sequence[x509.Certificate],
        crl: Path | None = None,
        device_cas: Sequence[x509.Certificate] = (),
    ) -> None:
        self._context = server_context(key, chain, client_anchors=customer_anchors)
        self._crl = crl
        self._device_cas = tuple(device_cas)
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
        certificate = x509.load_der_x509_certificate(der) if der else None
        device = device_id_of(certificate) if certificate else None
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            refusal = None
            if certificate is not None and self._crl is not None:
                refusal = await asyncio.to_thread(self._refusal, certificate)
            status = "200 OK" if refusal is None else "403 Forbidden"
            body = (f"hello {device}" if refusal is None else f"refused {device}: {refusal}") + "\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nConnection: close\r\n".encode()
                + f"Content-Length: {len(body.encode())}\r\n\r\n".encode()
                + body.encode()
            )
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _refusal(self, certificate: x509.Certificate) -> str | None:
        """Why the CRL refuses this certificate (None: it does not)."""
        assert self._crl is not None
        issuer = next((c for c in self._device_cas if c.subject == certificate.issuer), None)
        if issuer is None:
            return "no CRL is known for its issuer"
        try:
            crl = load_crl(fetch_crl_bytes(str(self._crl)))
        except ZtpkiError as exc:
            return f"revocation status unknown ({exc.message})"
        verdict = check_crl(certificate, issuer, crl, now=datetime.now(UTC))
        if verdict.status is RevocationStatus.REVOKED:
            return f"certificate revoked ({verdict.reason})"
        if verdict.status is RevocationStatus.UNKNOWN:
            return f"revocation status unknown ({verdict.detail})"
        return None

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
