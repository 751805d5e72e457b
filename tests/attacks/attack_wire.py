"""Hostile clients: raw HTTPS requests, raw TLS sockets and raw XML frames, each returning what
the service answered (an HTTP status with its text, an XML error, or the TLS failure) instead of
raising, so a test can record the observation and assert on it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from tests.support.rawtls import RawTLS as BaseRawTLS

from ztpki.credentials import client_context
from ztpki.pki.keys import PrivateKey

TIMEOUT = 30.0


def tls_reason(exc: BaseException) -> str:
    """The TLS alert or socket failure, as a short stable sentence."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text.replace("\n", " ")


@dataclass(frozen=True)
class Observed:
    """What one request got: an HTTP answer, or a failure below HTTP (TLS alert, reset)."""

    status: int | None  # None: no HTTP answer
    text: str  # answer body (text/plain errors) or the TLS/socket failure
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def tls_refused(self) -> bool:
        return self.status is None

    def summary(self) -> str:
        if self.status is None:
            return f"no HTTP answer: {self.text}"
        return f"HTTP {self.status}: {self.text.strip()}"


class Transcript:
    """Every answer and error text the attacks saw, appended to a file for the secret scan."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, source: str, text: str | bytes) -> None:
        data = text if isinstance(text, str) else text.decode("utf-8", "replace")
        with self.path.open("a", encoding="utf-8") as out:
            out.write(f"--- {source}\n{data}\n")


def https_context(
    *,
    key: PrivateKey | None,
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> ssl.SSLContext:
    return client_context(key=key, chain=list(chain), server_anchors=list(anchors))


def legacy_tls_context(anchors: Sequence[x509.Certificate]) -> ssl.SSLContext:
    """A client that offers only TLS 1.0 and 1.1 (OpenSSL 3 needs security level 0 for them)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(ValueError, ssl.SSLError):
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def https_request(
    address: tuple[str, int],
    method: str,
    path: str,
    *,
    context: ssl.SSLContext,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    transcript: Transcript | None = None,
    key_expected: bool = False,
    timeout: float = TIMEOUT,
) -> Observed:
    """One request; every answer goes to the transcript except a successful serverkeygen
    answer (key_expected), which carries a private key by design."""
    connection = http.client.HTTPSConnection(
        address[0], address[1], context=context, timeout=timeout
    )
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        data = response.read()
        observed = Observed(
            response.status,
            data.decode("utf-8", "replace") if len(data) < 4096 else f"({len(data)} bytes)",
            {k: v for k, v in response.getheaders()},
            data,
        )
    except (ssl.SSLError, OSError, http.client.HTTPException) as exc:
        observed = Observed(None, tls_reason(exc))
    finally:
        connection.close()
    if transcript is not None and not (key_expected and observed.status == 200):
        transcript.add(f"{method} {path}", observed.summary())
    return observed


def tls_handshake(
    address: tuple[str, int], context: ssl.SSLContext, *, timeout: float = TIMEOUT
) -> str | None:
    """None when the server accepts the connection, else how it refused (alert or close).

    After a refusal it waits for the server to hang up: a ztpki server logs why it refused
    before it closes, and its alert may reach the client before that log line is written.
    """
    try:
        plain = socket.create_connection(address, timeout=timeout)
    except OSError as exc:
        return tls_reason(exc)
    with plain:
        tls = context.wrap_socket(plain, server_hostname=address[0], do_handshake_on_connect=False)
        with tls:
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                _await_hangup(tls, timeout)
                return tls_reason(exc)
            version = tls.version()
            # A TLS 1.3 server refuses a client certificate after the client's Finished:
            # wait a moment for its alert, or for it to close the connection.
            tls.settimeout(1.0)
            try:
                if tls.recv(1) == b"":
                    return (
                        f"{version} connection closed by the server right after the "
                        "handshake, without an answer"
                    )
            except TimeoutError:
                return None
            except (ssl.SSLError, OSError) as exc:
                _await_hangup(tls, timeout)
                return tls_reason(exc)
    return None


def _await_hangup(tls: ssl.SSLSocket, timeout: float) -> None:
    """Read the raw TCP stream until the server closes it (or the timeout passes)."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(tls.fileno())) as raw:
        raw.settimeout(timeout)
        while raw.recv(4096):
            pass


class RawTLS(BaseRawTLS):
    """A hostile client or CA-client, with what the attacks observe of the answer."""

    def __init__(
        self, address: tuple[str, int], context: ssl.SSLContext, *, timeout: float = TIMEOUT
    ) -> None:
        super().__init__(address, context, timeout=timeout)

    def read_response(self) -> Observed:
        """One HTTP/1.1 response (status line, headers, Content-Length body) or the failure."""
        data = bytearray()
        try:
            while b"\r\n\r\n" not in data:
                chunk = self.tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = bytes(data).partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            if not lines[0].startswith("HTTP/"):
                return Observed(None, f"connection closed after {len(data)} bytes, no answer")
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            length = int(headers.get("Content-Length", "0"))
            while len(body) < length:
                chunk = self.tls.recv(length - len(body))
                if not chunk:
                    break
                body += chunk
        except (ssl.SSLError, OSError) as exc:
            return Observed(None, tls_reason(exc))
        status = int(lines[0].split()[1])
        return Observed(status, body.decode("utf-8", "replace"), headers, body)

    def closed_within(self, seconds: float) -> float | None:
        """Seconds until the peer closed the connection (EOF or reset), None if it did not."""
        start = time.monotonic()
        deadline = start + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.tls.settimeout(remaining)
            try:
                if self.tls.recv(4096) == b"":
                    return time.monotonic() - start
            except TimeoutError:
                return None
            except (ssl.SSLError, OSError):
                return time.monotonic() - start
        return None
