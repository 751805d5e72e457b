"""The proxy listeners: TLS that requires the proxy's own client certificate, and a Unix socket
that only the proxy's group can open. The client certificate then comes from the header.

A node on 127.0.0.1 trusts the proxy address 127.0.0.1 and the proxy CA "proxy CA"; clients
from 127.0.0.2 (still loopback) play peers outside the address fence, clients without the
proxy's certificate play any other local process.
"""

from __future__ import annotations

import grp
import os
import shutil
import socket
import ssl
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from node_harness import InProcessNode
from node_pki import NOW, csr_for, leaf, root_ca, sub_ca
from tests.support.unix_client import unix_exchange

from ztpki.credentials import client_context
from ztpki.errors import ConfigurationError
from ztpki.node.config import Limits
from ztpki.node.proxy_config import ProxyConfig, parse_network
from ztpki.node.proxy_listener import ProxyAddress
from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.keys import PrivateKey
from ztpki.pki.pem import certificates_pem, fingerprint_sha256
from ztpki.protocol.est import encode_csr
from ztpki.store.records import NewDevice

HEADER = "X-SSL-Client-Cert"
UNTRUSTED_PEER = "127.0.0.2"
TCP = ProxyAddress(host="127.0.0.1", port=0)
OUTSIDER = 23456  # a uid and gid no group on the test host admits
SOCKET_GROUP = grp.getgrgid(65534).gr_name  # nogroup: the group a test proxy runs in


def escaped(cert: x509.Certificate) -> str:
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")


class ProxiedNode(InProcessNode):
    """A node with its TLS listener and its proxy listener(s), in a background event loop."""

    def __init__(
        self,
        tmp: Path,
        *,
        trusted: tuple[str, ...] = ("127.0.0.1",),
        ca: bool = True,
        pins: tuple[str, ...] = (),
        proxy_ca: CertificateAuthority | None = None,
    ) -> None:
        self.proxy_ca = proxy_ca or root_ca("proxy CA")
        self.proxy_key, self.proxy_cert = leaf(self.proxy_ca, "nginx-1")
        (tmp / "proxy").mkdir(parents=True, exist_ok=True)
        (tmp / "proxy" / "ca.pem").write_bytes(certificates_pem([self.proxy_ca.certificate]))
        super().__init__(
            tmp,
            limits=Limits(keepalive_timeout=2.0, handshake_timeout=2.0, body_timeout=2.0),
            proxy=ProxyConfig(
                trusted=tuple(parse_network(t) for t in trusted),
                ca=Path("proxy/ca.pem") if ca else None,
                fingerprints=pins,
                socket_group=SOCKET_GROUP,
            ),
        )

    def listed_device(self, device_id: str) -> x509.Certificate:
        self.store.add_device(NewDevice(device_id, None), now=NOW)
        return self.pki.temporary(device_id)[1]

    def audit_length(self) -> int:
        return len(list(self.store.entries()))

    def proxy_exchange(
        self,
        head: str,
        body: bytes = b"",
        *,
        source: str = "127.0.0.1",
        key: PrivateKey | None = None,
        cert: x509.Certificate | None = None,
        as_proxy: bool = True,
    ) -> bytes:
        """One request over TLS to the proxy listener, as the proxy (default) or as key+cert."""
        if as_proxy:
            key, cert = self.proxy_key, self.proxy_cert
        context = client_context(
            key=key,
            chain=[cert] if cert is not None else [],
            server_anchors=[self.pki.factory_root.certificate],
        )
        raw = socket.create_connection(
            ("127.0.0.1", self.tcp_port), timeout=10, source_address=(source, 0)
        )
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(head.encode() + body)
            return read_all(sock)

    @property
    def tcp_port(self) -> int:
        return next(p.address.port for p in self.node.proxies if p.address.socket_path is None)

    def direct_exchange(self, head: str, body: bytes = b"") -> bytes:
        context = client_context(
            key=None, chain=[], server_anchors=[self.pki.factory_root.certificate]
        )
        raw = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(head.encode() + body)
            return read_all(sock)


def read_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def refused_at_tls(exchange: object) -> str:
    """What a client saw of a refused TLS connection: an alert or a reset, no HTTP at all."""
    assert callable(exchange)
    try:
        answer = exchange()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        return type(exc).__name__ + ": " + str(exc)
    assert not answer.startswith(b"HTTP/"), answer[:200]
    return "closed without an answer"


def enroll_head(length: int, *, certificate: str | None = None, extra: str = "") -> str:
    header = f"{HEADER}: {certificate}\r\n" if certificate is not None else ""
    return (
        "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: node\r\n"
        "Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n{header}{extra}\r\n"
    )


def get_head(path: str, *, certificate: str | None = None) -> str:
    header = f"{HEADER}: {certificate}\r\n" if certificate is not None else ""
    return f"GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n{header}\r\n"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedNode]:
    node = ProxiedNode(tmp_path_factory.mktemp("node-proxy"))
    node.start(proxy_listen=[TCP])
    yield node
    node.close()


# ------------------------------------------------------------------ TLS proxy listener
def test_ok_enrollment_with_the_certificate_from_an_authenticated_proxy(
    proxied: ProxiedNode,
) -> None:
    cert = proxied.listed_device("p1")
    body = encode_csr(csr_for("p1"))
    answer = proxied.proxy_exchange(enroll_head(len(body), certificate=escaped(cert)), body)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    registered = proxied.store.get("p1")
    assert registered is not None and registered.state.value == "issued"


@pytest.mark.parametrize(
    "who",
    [
        pytest.param("no-certificate", id="fail-no-client-certificate"),
        pytest.param("device", id="fail-device-certificate"),
        pytest.param("other-ca", id="fail-proxy-certificate-of-another-ca"),
    ],
)
def test_fail_stolen_header_without_the_proxy_certificate_is_refused_at_tls(
    proxied: ProxiedNode, who: str
) -> None:
    cert = proxied.listed_device(f"stolen-{who}")
    body = encode_csr(csr_for(f"stolen-{who}"))
    key: PrivateKey | None = None
    client: x509.Certificate | None = None
    if who == "device":
        key, client = proxied.pki.temporary(f"stolen-{who}")
    elif who == "other-ca":
        key, client = leaf(root_ca("proxy CA"), "nginx-1")  # same names, another key
    audit = proxied.audit_length()
    head = enroll_head(len(body), certificate=escaped(cert))
    refused_at_tls(lambda: proxied.proxy_exchange(head, body, key=key, cert=client, as_proxy=False))
    registered = proxied.store.get(f"stolen-{who}")
    assert registered is not None and registered.state.value == "listed"
    assert proxied.audit_length() == audit


def test_fail_plain_http_to_the_proxy_listener_gets_no_http(proxied: ProxiedNode) -> None:
    cert = proxied.listed_device("plain")
    body = encode_csr(csr_for("plain"))
    with socket.create_connection(("127.0.0.1", proxied.tcp_port), timeout=10) as sock:
        sock.sendall(enroll_head(len(body), certificate=escaped(cert)).encode() + body)
        answer = read_all(sock)
    assert not answer.startswith(b"HTTP/"), answer[:100]
    registered = proxied.store.get("plain")
    assert registered is not None and registered.state.value == "listed"


def test_fail_authenticated_proxy_from_outside_the_address_fence_is_ignored(
    proxied: ProxiedNode,
) -> None:
    cert = proxied.listed_device("p2")
    body = encode_csr(csr_for("p2"))
    answer = proxied.proxy_exchange(
        enroll_head(len(body), certificate=escaped(cert)), body, source=UNTRUSTED_PEER
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
    assert b"needs a TLS client certificate" in answer


def test_fail_forged_certificate_is_refused_by_re_verification(proxied: ProxiedNode) -> None:
    proxied.listed_device("p3")
    # Same names as the real factory CAs, other keys: only the signatures tell them apart.
    impostor = sub_ca(root_ca("factory root"), "factory CA")
    _, forged = leaf(impostor, "p3")
    body = encode_csr(csr_for("p3"))
    answer = proxied.proxy_exchange(enroll_head(len(body), certificate=escaped(forged)), body)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("garbage", id="fail-garbage"),
        pytest.param("%ff%fe", id="fail-not-utf8"),
    ],
)
def test_fail_malformed_header_from_a_trusted_proxy_is_400(
    proxied: ProxiedNode, value: str
) -> None:
    answer = proxied.proxy_exchange(get_head("/.well-known/est/csrattrs", certificate=value))
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]


def test_fail_header_sent_twice_is_400(proxied: ProxiedNode) -> None:
    cert = proxied.listed_device("p4")
    body = encode_csr(csr_for("p4"))
    head = enroll_head(len(body), certificate=escaped(cert), extra=f"{HEADER}: {escaped(cert)}\r\n")
    assert proxied.proxy_exchange(head, body).startswith(b"HTTP/1.1 400")


def test_ok_cacerts_needs_no_header_but_csrattrs_does(proxied: ProxiedNode) -> None:
    assert proxied.proxy_exchange(get_head("/.well-known/est/cacerts")).startswith(b"HTTP/1.1 200")
    answer = proxied.proxy_exchange(get_head("/.well-known/est/csrattrs"))
    assert answer.startswith(b"HTTP/1.1 401")


def test_fail_direct_tls_listener_ignores_the_header(proxied: ProxiedNode) -> None:
    cert = proxied.listed_device("p5")
    body = encode_csr(csr_for("p5"))
    answer = proxied.direct_exchange(enroll_head(len(body), certificate=escaped(cert)), body)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]


def test_pinned_proxy_certificates(tmp_path: Path) -> None:
    """With [proxy] fingerprints, a certificate from the proxy CA that is not pinned is closed
    after the handshake, before any HTTP; the pinned one is served."""
    proxy_ca = root_ca("proxy CA")
    pinned_key, pinned = leaf(proxy_ca, "nginx-pinned")
    node = ProxiedNode(tmp_path, proxy_ca=proxy_ca, pins=(fingerprint_sha256(pinned),))
    try:
        node.start(proxy_listen=[TCP])
        head = get_head("/.well-known/est/cacerts")
        # node.proxy_cert is from the same CA, not pinned.
        refused_at_tls(lambda: node.proxy_exchange(head))
        answer = node.proxy_exchange(head, key=pinned_key, cert=pinned, as_proxy=False)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        node.close()


@pytest.mark.parametrize(
    ("ca", "trusted", "match"),
    [
        pytest.param(False, ("127.0.0.1",), "--proxy-ca FILE", id="fail-no-proxy-ca"),
        pytest.param(True, (), "--trusted-proxy ADDRESS", id="fail-no-trusted-address"),
    ],
)
def test_fail_tcp_proxy_listener_that_cannot_authenticate_the_proxy_does_not_start(
    tmp_path: Path, ca: bool, trusted: tuple[str, ...], match: str
) -> None:
    node = ProxiedNode(tmp_path, ca=ca, trusted=trusted)
    try:
        with pytest.raises(ConfigurationError, match=match):
            node.start(proxy_listen=[TCP])
    finally:
        node.close()


@pytest.mark.parametrize("issuer", ["factory_ca", "factory_root", "operational"])
def test_fail_a_proxy_ca_that_issues_device_certificates_does_not_start(
    tmp_path: Path, issuer: str
) -> None:
    """With a device CA as the proxy CA, every device would be a proxy for all the others."""
    node = ProxiedNode(tmp_path)
    ca: CertificateAuthority = getattr(node.pki, issuer)
    (tmp_path / "proxy" / "ca.pem").write_bytes(certificates_pem([ca.certificate]))
    try:
        with pytest.raises(ConfigurationError, match="also a CA of this node's devices"):
            node.start(proxy_listen=[TCP])
    finally:
        node.close()


# ------------------------------------------------------------------ Unix-socket proxy listener
@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    """A directory other users may traverse (pytest's own tmp is 0700 to them)."""
    path = Path(tempfile.mkdtemp(prefix="ztpki-proxy-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def on_socket(
    tmp_path_factory: pytest.TempPathFactory, socket_dir: Path
) -> Iterator[tuple[ProxiedNode, Path]]:
    node = ProxiedNode(tmp_path_factory.mktemp("node-socket"))
    path = socket_dir / "proxy.sock"
    node.start(proxy_listen=[ProxyAddress(socket_path=path)])
    yield node, path
    node.close()


def test_ok_socket_is_created_0660_for_the_proxy_group(on_socket: tuple[ProxiedNode, Path]) -> None:
    _, path = on_socket
    info = path.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_uid == os.getuid()
    assert info.st_gid == grp.getgrnam(SOCKET_GROUP).gr_gid


def test_socket_admits_the_proxy_group_and_refuses_another_user(
    on_socket: tuple[ProxiedNode, Path],
) -> None:
    node, path = on_socket
    cert = node.listed_device("s1")
    body = encode_csr(csr_for("s1"))
    request = enroll_head(len(body), certificate=escaped(cert)).encode() + body
    audit = node.audit_length()
    outsider = unix_exchange(path, request, uid=OUTSIDER, gid=OUTSIDER)
    assert outsider == "connect: Permission denied"
    registered = node.store.get("s1")
    assert registered is not None and registered.state.value == "listed"
    assert node.audit_length() == audit
    # Positive control: the same unprivileged uid in the proxy's group is served.
    member = unix_exchange(path, request, uid=OUTSIDER, gid=grp.getgrnam(SOCKET_GROUP).gr_gid)
    assert member == "HTTP/1.1 200 OK"
    registered = node.store.get("s1")
    assert registered is not None and registered.state.value == "issued"


def test_socket_lifecycle(tmp_path: Path, socket_dir: Path) -> None:
    """A stale socket file is replaced; a live one or a plain file is refused; the socket is
    removed when the node stops."""
    path = socket_dir / "lifecycle.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a killed node leaves behind
    first = ProxiedNode(tmp_path / "a")
    second = ProxiedNode(tmp_path / "b")
    try:
        first.start(proxy_listen=[ProxyAddress(socket_path=path)])
        with pytest.raises(ConfigurationError, match="another process serves that socket"):
            second.start(proxy_listen=[ProxyAddress(socket_path=path)])
    finally:
        second.close()
        first.close()
    assert not path.exists()
    path.write_text("not a socket")
    third = ProxiedNode(tmp_path / "c")
    try:
        with pytest.raises(ConfigurationError, match="not a socket"):
            third.start(proxy_listen=[ProxyAddress(socket_path=path)])
    finally:
        third.close()
    assert path.read_text() == "not a socket"
