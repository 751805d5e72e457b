"""The proxy listener: the client certificate from a trusted proxy's header, and only from there.

A node on 127.0.0.1 trusts the proxy 127.0.0.1; clients that connect from 127.0.0.2 (still
loopback) play peers that are not trusted proxies.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from node_harness import InProcessNode
from node_pki import NOW, PKI, csr_for, leaf, root_ca, sub_ca
from test_node_cli import env, init_args, inputs, run  # noqa: F401 (its fixtures, reused)

from ztpki.credentials import client_context
from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.node.config import CALabel, Limits, NodeConfig, ProxyConfig, parse_network
from ztpki.node.manufacturers import ManufacturerConfig
from ztpki.node.proxy import MAX_HEADER, decode_forwarded_certificate
from ztpki.node.runtime import RunningNode
from ztpki.pki.device_ids import EVERY_DEVICE_ID
from ztpki.protocol.est import encode_csr
from ztpki.store.records import NewDevice

HEADER = "X-SSL-Client-Cert"
UNTRUSTED_PEER = "127.0.0.2"


def escaped(cert: x509.Certificate) -> str:
    """The PEM, URL-escaped as nginx's $ssl_client_escaped_cert does (every reserved byte)."""
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# ------------------------------------------------------------------ the header codec
@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI.create()


def test_ok_decodes_nginx_escaped_pem(pki: PKI) -> None:
    _, cert = pki.temporary("c1")
    assert decode_forwarded_certificate(escaped(cert)) == der(cert)


@settings(max_examples=50, deadline=None)
@given(safe=st.sets(st.sampled_from("+/=- \n")))
def test_ok_decodes_any_escaping_of_safe_characters(safe: set[str]) -> None:
    _, cert = leaf(PKI_FOR_PROPERTIES.factory_ca, "c2")
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert decode_forwarded_certificate(quote(pem, safe="".join(safe))) == der(cert)


PKI_FOR_PROPERTIES = PKI.create()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="fail-empty"),
        pytest.param("not a certificate", id="fail-garbage"),
        pytest.param("%ff%fe", id="fail-not-utf8"),
        pytest.param(
            quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            id="fail-bad-der",
        ),
        pytest.param("x" * (MAX_HEADER + 1), id="fail-oversized"),
    ],
)
def test_fail_malformed_header_values(value: str) -> None:
    with pytest.raises(MalformedInput):
        decode_forwarded_certificate(value)


def test_fail_a_chain_in_the_header(pki: PKI) -> None:
    _, cert = pki.temporary("c3")
    chain = escaped(cert) + escaped(pki.factory_ca.certificate)
    with pytest.raises(MalformedInput, match="exactly one"):
        decode_forwarded_certificate(chain)


# ------------------------------------------------------------------ configuration
def test_ok_trusts_addresses_networks_and_mapped_ipv4() -> None:
    proxy = ProxyConfig(trusted=(parse_network("127.0.0.1"), parse_network("10.0.0.0/8")))
    assert proxy.trusts(ipaddress.ip_address("10.1.2.3"))
    assert proxy.trusts(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not proxy.trusts(ipaddress.ip_address("127.0.0.2"))
    assert not proxy.trusts(ipaddress.ip_address("::1"))


def test_fail_nothing_is_trusted_by_default() -> None:
    assert not ProxyConfig().trusts(ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize(
    "table",
    [
        pytest.param({"trusted": ["10.0.0.1/8"]}, id="fail-host-bits-in-cidr"),
        pytest.param({"trusted": ["proxy.example"]}, id="fail-name-not-address"),
        pytest.param({"trusted": "10.0.0.0/8"}, id="fail-not-a-list"),
        pytest.param({"header": "X Bad: header"}, id="fail-header-name"),
        pytest.param({"trust": []}, id="fail-unknown-key"),
    ],
)
def test_fail_bad_proxy_table(table: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        ProxyConfig.from_toml(table)


def test_ok_proxy_table_round_trips_through_node_toml(tmp_path: Path) -> None:
    config = NodeConfig(
        directory=tmp_path,
        ca_system="127.0.0.1:1",
        ca_client=Path("c"),
        server_cert=Path("s"),
        server_key=Path("k"),
        manufacturers=(ManufacturerConfig("Acme", Path("t"), EVERY_DEVICE_ID),),
        labels=(CALabel("default", Path("ca.pem")),),
        proxy=ProxyConfig(trusted=(parse_network("10.0.0.0/8"),), header="X-Client-Cert"),
    )
    config.save()
    assert NodeConfig.load(tmp_path).proxy == config.proxy


def test_ok_node_toml_without_proxy_table_trusts_no_proxy(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        '[node]\nca_system = "127.0.0.1:1"\nca_client = "c"\nserver_cert = "s"\n'
        'server_key = "k"\n[manufacturer.Acme]\ntrust = "t"\ndevice_ids = ["*"]\n'
    )
    assert NodeConfig.load(tmp_path).proxy == ProxyConfig()


# ------------------------------------------------------------------ the two listeners
class ProxiedNode(InProcessNode):
    """A node with its TLS listener and its proxy listener, in a background event loop."""

    def __init__(self, tmp: Path, *, trusted: tuple[str, ...] = ("127.0.0.1",)) -> None:
        super().__init__(
            tmp,
            limits=Limits(keepalive_timeout=2.0, handshake_timeout=2.0, body_timeout=2.0),
            proxy=ProxyConfig(trusted=tuple(parse_network(t) for t in trusted)),
        )

    def start(self, *, proxy_listen: tuple[str, int] | None = ("127.0.0.1", 0)) -> RunningNode:
        return super().start(proxy_listen=proxy_listen)

    def listed_device(self, device_id: str) -> x509.Certificate:
        self.store.add_device(NewDevice(device_id, None), now=NOW)
        return self.pki.temporary(device_id)[1]

    def proxy_exchange(self, head: str, body: bytes = b"", *, source: str = "127.0.0.1") -> bytes:
        assert self.node.proxy is not None
        with socket.create_connection(
            ("127.0.0.1", self.node.proxy.port), timeout=10, source_address=(source, 0)
        ) as sock:
            sock.sendall(head.encode() + body)
            return read_all(sock)

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
    node.start()
    yield node
    node.close()


def test_ok_enrollment_with_the_certificate_from_a_trusted_proxy(proxied: ProxiedNode) -> None:
    cert = proxied.listed_device("p1")
    body = encode_csr(csr_for("p1"))
    answer = proxied.proxy_exchange(enroll_head(len(body), certificate=escaped(cert)), body)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    registered = proxied.store.get("p1")
    assert registered is not None and registered.state.value == "issued"


def test_fail_same_header_from_an_untrusted_peer_is_ignored(proxied: ProxiedNode) -> None:
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


def test_fail_proxy_listener_without_trusted_proxies_does_not_start(tmp_path: Path) -> None:
    node = ProxiedNode(tmp_path, trusted=())
    try:
        with pytest.raises(ConfigurationError, match=r"`trusted = \[.*\]` under `\[proxy\]`"):
            node.start()
    finally:
        node.close()


# ------------------------------------------------------------------ the CLI
def test_ok_init_trusted_proxy_and_policy(request: pytest.FixtureRequest) -> None:
    files: dict[str, Path] = request.getfixturevalue("inputs")
    args = init_args(files, "--trusted-proxy", "127.0.0.1", "--trusted-proxy", "10.0.0.0/8")
    assert run(*args)[0] == 0
    config = NodeConfig.load(files["node"])
    assert [str(n) for n in config.proxy.trusted] == ["127.0.0.1/32", "10.0.0.0/8"]
    status, out = run("node", "policy", "--dir", str(files["node"]))
    assert status == 0
    assert "trusted proxies: 127.0.0.1/32, 10.0.0.0/8 (header X-SSL-Client-Cert)" in out


def test_fail_init_with_a_bad_trusted_proxy_writes_nothing(request: pytest.FixtureRequest) -> None:
    files: dict[str, Path] = request.getfixturevalue("inputs")
    assert run(*init_args(files, "--trusted-proxy", "proxy.example"))[0] == 1
    assert not files["node"].exists()


def test_ok_policy_without_proxy_trusts_none(request: pytest.FixtureRequest) -> None:
    files: dict[str, Path] = request.getfixturevalue("inputs")
    assert run(*init_args(files))[0] == 0
    _, out = run("node", "policy", "--dir", str(files["node"]))
    assert "trusted proxies: none" in out
