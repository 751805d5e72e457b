"""The CA-client: sends framed XML requests to a CA system over mutually authenticated TLS.

Used as the first CA-client (3) by the loading station and as the second CA-client (18) by
the customer node. Connections are kept open and reused (a new TLS handshake costs more than
the whole issuance); a pool bounds how many run at once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ztpki.casystem.wire import raise_for
from ztpki.credentials import Credential, client_context
from ztpki.errors import ConfigurationError, MalformedInput, Unavailable
from ztpki.protocol.enrollment import (
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentRequest,
    decode_answer,
    encode_request,
)
from ztpki.protocol.framing import HEADER_SIZE, MAX_FRAME_SIZE, encode_frame, frame_length
from ztpki.protocol.revocation import (
    RevocationAnswer,
    RevocationRequest,
    decode_revocation_answer,
    encode_revocation_request,
)

log = logging.getLogger(__name__)

_Answer = TypeVar("_Answer", EnrollmentAnswer, RevocationAnswer)

# Reconnect rather than reuse a connection the server may be about to close as idle.
MAX_IDLE = 60.0


def parse_address(text: str, *, allow_any_port: bool = False) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [addr]:port) -> (host, port), or ConfigurationError.

    Port 0 (any free port) is allowed only for listening addresses.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    lowest = 0 if allow_any_port else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ConfigurationError(f"address {text!r} is not HOST:PORT")
    return host, int(port)


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float

    def close(self) -> None:
        self.writer.close()


class CAClient:
    """An async CA-client with a small pool of kept-alive TLS connections."""

    def __init__(
        self,
        address: tuple[str, int],
        credential: Credential,
        *,
        pool_size: int = 4,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.host, self.port = address
        self._context: ssl.SSLContext = client_context(
            key=credential.key, chain=credential.chain, server_anchors=credential.trust_anchors
        )
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(pool_size)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def enroll(self, request: EnrollmentRequest) -> EnrollmentAnswer:
        """The CA system's answer, or the typed error it sent, or Unavailable."""
        answer = await self._call(encode_request(request), decode_answer)
        return _checked(answer, request.request_id)

    async def revoke(self, request: RevocationRequest) -> RevocationAnswer:
        """Revoke (or release the hold of) a certificate this CA-client obtained: the CA
        system's answer once the revocation is durable, the typed error it sent (NotAuthorized,
        UnknownCertificate, ...), or Unavailable. Safe to repeat: revoking is idempotent."""
        answer = await self._call(encode_revocation_request(request), decode_revocation_answer)
        return _checked(answer, request.request_id)

    async def _call(
        self, payload: bytes, decode: Callable[[bytes], _Answer | EnrollmentError]
    ) -> _Answer | EnrollmentError:
        async with self._slots:
            connection = await self._checkout()
            try:
                # asyncio.timeout, not wait_for: no extra task per request on the hot path.
                async with asyncio.timeout(self._timeout):
                    answer = await self._exchange(connection, payload, decode)
            except TimeoutError:
                connection.close()
                raise Unavailable(
                    f"CA system {self.address} did not answer within {self._timeout:.0f} s"
                ) from None
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError) as exc:
                connection.close()
                raise Unavailable(f"connection to CA system {self.address} failed: {exc}") from None
            except MalformedInput:
                connection.close()
                raise
            connection.last_used = time.monotonic()
            self._idle.append(connection)
        return answer

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    async def _checkout(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.last_used < MAX_IDLE and not connection.reader.at_eof():
                return connection
            connection.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=self._context, limit=MAX_FRAME_SIZE + HEADER_SIZE
                ),
                self._connect_timeout,
            )
        except ssl.SSLError as exc:
            _raise_token_failure(self._context, self.address)
            raise Unavailable(
                f"TLS with CA system {self.address} failed ({exc.reason}): is this credential "
                "registered with that CA system and the address right?"
            ) from None
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach CA system {self.address}: {exc}") from None
        return _Connection(reader, writer, now)

    @staticmethod
    async def _exchange(
        connection: _Connection,
        payload: bytes,
        decode: Callable[[bytes], _Answer | EnrollmentError],
    ) -> _Answer | EnrollmentError:
        connection.writer.write(encode_frame(payload))
        await connection.writer.drain()
        length = frame_length(await connection.reader.readexactly(HEADER_SIZE))
        if length > MAX_FRAME_SIZE:
            raise MalformedInput(f"CA system sent a frame of {length} bytes, over the limit")
        return decode(await connection.reader.readexactly(length))


def _raise_token_failure(context: ssl.SSLContext, address: str) -> None:
    """Unavailable naming the token, when the CA-client's key is in one that failed to sign
    the handshake (removed, logged out): the CA system is not to blame."""
    # Looked up, not imported: only a process with a token key has loaded tokens.tls (and
    # the PKCS#11 binding behind it).
    tls = sys.modules.get("ztpki.tokens.tls")
    failure = None if tls is None else tls.token_failure(context)
    if failure is not None:
        raise Unavailable(
            f"the token holding this CA-client's key did not sign the TLS handshake with "
            f"CA system {address}: {failure.message}"
        ) from None


def _checked(answer: _Answer | EnrollmentError, request_id: str) -> _Answer:
    """The answer to ``request_id``; the typed error for an EnrollmentError."""
    if isinstance(answer, EnrollmentError):
        raise raise_for(answer)
    if answer.request_id != request_id:
        raise MalformedInput(
            f"CA system answered request {answer.request_id!r} instead of {request_id!r}"
        )
    return answer
