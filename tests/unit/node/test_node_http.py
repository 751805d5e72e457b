"""The HTTP adapter in-process over real TLS on loopback: limits, timeouts, the error table.

The node runs in a thread with its own event loop; the customer CA system is the in-process
one from node_pki. Raw sockets play the slow and oversized clients.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from node_harness import InProcessNode
from node_pki import NOW, csr_for, leaf

from ztpki.credentials import client_context
from ztpki.errors import (
    MalformedInput,
    NotAuthenticated,
    PayloadTooLarge,
    Unavailable,
    UnknownCA,
    ZtpkiError,
)
from ztpki.node.authorization import InProgress, RefusalReason, Refused
from ztpki.node.config import Limits
from ztpki.node.http import ERROR_TABLE, error_response, status_of
from ztpki.protocol.est import UnsupportedMediaType, encode_csr
from ztpki.store.records import NewDevice

LIMITS = Limits(
    keepalive_timeout=1.0,
    handshake_timeout=1.0,
    body_timeout=0.5,
    lingering_time=0.5,
    max_body=4096,
    max_headers=16,
)


class ServerThread(InProcessNode):
    """The node with the tight limits these tests probe, started at once."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, limits=LIMITS)
        assert ipaddress.ip_address(
            "127.0.0.1"
        ) in self.server_cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.IPAddress)
        self.start()

    def context(self, *, device: str | None = None) -> ssl.SSLContext:
        if device is None:
            return client_context(
                key=None, chain=[], server_anchors=[self.pki.factory_root.certificate]
            )
        key, cert = self.pki.temporary(device)
        return client_context(
            key=key,
            chain=[cert, self.pki.factory_ca.certificate],
            server_anchors=[self.pki.factory_root.certificate],
        )

    def connect(self, context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        return (context or self.context()).wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    s = ServerThread(tmp_path_factory.mktemp("node-http"))
    yield s
    s.close()


def read_all(sock: ssl.SSLSocket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(
    server: ServerThread, head: str, body: bytes = b"", *, device: str | None = None
) -> bytes:
    with server.connect(server.context(device=device)) as sock:
        sock.sendall(head.encode() + body)
        return read_all(sock)


def post_head(path: str, length: int, *, extra: str = "") -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: node\r\nContent-Type: application/pkcs10\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n{extra}\r\n"
    )


def test_ok_enrollment_over_tls(server: ServerThread) -> None:
    server.store.add_device(NewDevice("h1", None), now=NOW)
    body = encode_csr(csr_for("h1"))
    answer = exchange(
        server, post_head("/.well-known/est/simpleenroll", len(body)), body, device="h1"
    )
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"Content-Transfer-Encoding: base64" in answer


def test_fail_content_length_over_limit_is_refused_before_reading(server: ServerThread) -> None:
    answer = exchange(server, post_head("/.well-known/est/simpleenroll", 10**6), device="h2")
    assert answer.startswith(b"HTTP/1.1 413")


def test_fail_body_that_never_arrives_times_out(server: ServerThread) -> None:
    started = time.monotonic()
    answer = exchange(server, post_head("/.well-known/est/simpleenroll", 100), b"MIIB", device="h3")
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 5


def test_fail_oversized_header_line(server: ServerThread) -> None:
    head = f"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: node\r\nX-Big: {'a' * 9000}\r\n\r\n"
    answer = exchange(server, head)
    assert re.match(rb"HTTP/1\.[01] 4\d\d", answer), answer[:100]
    # Negative control: the same request without the big header is served.
    assert exchange(
        server, "GET /.well-known/est/cacerts HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
    ).startswith(b"HTTP/1.1 200")


def test_fail_too_many_headers(server: ServerThread) -> None:
    many = "".join(f"X-H{i}: v\r\n" for i in range(40))
    answer = exchange(server, f"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: node\r\n{many}\r\n")
    assert re.match(rb"HTTP/1\.[01] 4\d\d", answer), answer[:100]


def test_fail_silent_client_is_dropped_at_the_handshake(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.node.port), timeout=10) as raw:
        started = time.monotonic()
        assert raw.recv(1024) == b""  # no ClientHello: the server gives up
        assert time.monotonic() - started < 5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fail_tls_below_1_2(server: ServerThread) -> None:
    context = server.context()
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        server.connect(context)
    # Negative control: TLS 1.2 exactly is accepted.
    context = server.context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with server.connect(context) as sock:
        assert sock.version() == "TLSv1.2"


def test_ok_metrics_exposition_is_well_formed(server: ServerThread) -> None:
    exchange(
        server, "GET /.well-known/est/cacerts HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
    )
    answer = exchange(server, "GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"text/plain; version=0.0.4" in head
    sample = re.compile(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+')
    for line in body.decode().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.fullmatch(line), (
            line
        )
    assert 'ztpki_node_requests_total{endpoint="cacerts",outcome="served"}' in body.decode()


def test_fail_csrattrs_without_certificate_is_401(server: ServerThread) -> None:
    answer = exchange(
        server, "GET /.well-known/est/csrattrs HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 401")
    assert b"Content-Type: text/plain" in answer


def test_ok_operational_certificate_from_a_sibling_ca_is_refused(server: ServerThread) -> None:
    key, cert = leaf(server.pki.sibling, "h9")
    context = client_context(
        key=key,
        chain=[cert, server.pki.sibling.certificate],
        server_anchors=[server.pki.factory_root.certificate],
    )
    # The TLS layer accepts the chain (same customer root); the authentication module does not.
    with server.connect(context) as sock:
        sock.sendall(
            b"GET /.well-known/est/csrattrs HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
        )
        assert read_all(sock).startswith(b"HTTP/1.1 401")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnsupportedMediaType("x"), 415),
        (PayloadTooLarge("x"), 413),
        (MalformedInput("x"), 400),
        (NotAuthenticated("x"), 401),
        (Refused(RefusalReason.BLOCKED, "x"), 403),
        (UnknownCA("x"), 404),
        (InProgress("d"), 503),
        (Unavailable("x", retry_after=7), 503),
        (ZtpkiError("boom"), 500),
    ],
)
def test_ok_error_table(error: ZtpkiError, status: int) -> None:
    assert status_of(error)[0] == status
    response, _ = error_response(error)
    assert response.status == status and response.content_type == "text/plain"
    if isinstance(error, Unavailable):
        assert response.headers["Retry-After"] == str(error.retry_after)
    if status == 500:
        assert response.text is not None and "boom" not in response.text


def test_ok_error_table_lists_subclasses_first() -> None:
    classes = [cls for cls, _, _ in ERROR_TABLE]
    for i, cls in enumerate(classes):
        assert not any(issubclass(cls, earlier) for earlier in classes[:i]), cls


def test_ok_base64_helper() -> None:
    assert base64.b64decode(encode_csr(csr_for("x")))
