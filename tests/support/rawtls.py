"""A blocking TLS connection that sends arbitrary bytes: a hostile client, or a CA-client
speaking the framed XML protocol by hand."""

from __future__ import annotations

import contextlib
import socket
import ssl

from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentError, decode_answer
from ztpki.protocol.framing import HEADER_SIZE


class RawTLS:
    def __init__(
        self, address: tuple[str, int], context: ssl.SSLContext, *, timeout: float = 20.0
    ) -> None:
        plain = socket.create_connection(address, timeout=timeout)
        self.tls = context.wrap_socket(plain, server_hostname=address[0])

    def __enter__(self) -> RawTLS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.tls.close()

    def send(self, data: bytes) -> None:
        self.tls.sendall(data)

    def read_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.tls.recv(size - len(data))
            if not chunk:
                raise EOFError(f"connection closed after {len(data)} of {size} bytes")
            data += chunk
        return bytes(data)

    def read_frame(self) -> EnrollmentAnswer | EnrollmentError:
        """One framed answer of the XML enrollment protocol."""
        length = int.from_bytes(self.read_exactly(HEADER_SIZE), "big")
        return decode_answer(self.read_exactly(length))

    def at_eof(self) -> bool:
        """True when the server closed the connection (recv returns nothing)."""
        try:
            return self.tls.recv(1) == b""
        except (ConnectionError, ssl.SSLEOFError):
            return True
