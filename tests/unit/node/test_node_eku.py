"""A device certificate must name clientAuth in its EKU; one with no EKU at all counts only
under a label whose policy says ``allow_no_eku``. Real TLS on loopback: the TLS layer lets a
certificate without EKU through (RFC 5280 reads it as any purpose), so the node decides."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from node_harness import InProcessNode
from node_pki import NOW, PKI, csr_for, leaf, leaf_without_eku

from ztpki.credentials import client_context
from ztpki.node.authentication import ClientIdentity, IdentityKind
from ztpki.node.authorization import RefusalReason, Refused, check_purpose
from ztpki.node.config import Limits
from ztpki.pki.keys import PrivateKey
from ztpki.pki.pem import certificate_der, fingerprint_sha256
from ztpki.protocol.est import encode_csr
from ztpki.store.records import NewDevice


class Node(InProcessNode):
    def __init__(self, tmp: Path, *, allow_no_eku: bool) -> None:
        super().__init__(tmp, limits=Limits(), allow_no_eku=allow_no_eku)
        self.start()

    def list(self, device_id: str, cert: x509.Certificate) -> None:
        self.store.add_device(NewDevice(device_id, fingerprint_sha256(cert)), now=NOW)

    def exchange(self, key: PrivateKey, cert: x509.Certificate, request: bytes) -> bytes:
        """One request over TLS with this client certificate; the whole answer."""
        context = client_context(
            key=key,
            chain=[cert, self.pki.factory_ca.certificate],
            server_anchors=[self.pki.factory_root.certificate],
        )
        raw = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(request)
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def simpleenroll(self, device_id: str, key: PrivateKey, cert: x509.Certificate) -> bytes:
        body = encode_csr(csr_for(device_id))
        head = (
            "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: node\r\n"
            f"Content-Type: application/pkcs10\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return self.exchange(key, cert, head.encode() + body)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node(tmp_path_factory.mktemp("strict"), allow_no_eku=False)
    yield node
    node.close()


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node(tmp_path_factory.mktemp("lenient"), allow_no_eku=True)
    yield node
    node.close()


def test_fail_certificate_without_eku_is_refused_by_default(strict: Node) -> None:
    key, cert = leaf_without_eku(strict.pki.factory_ca, "e1")
    strict.list("e1", cert)
    calls = strict.ca.calls
    answer = strict.simpleenroll("e1", key, cert)
    # The TLS handshake passed: the refusal is the node's, with its reason, and audited.
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"has no extendedKeyUsage" in answer and b"clientAuth" in answer
    device = strict.store.get("e1")
    assert device is not None and device.state.value == "listed"
    assert strict.ca.calls == calls  # nothing went to the CA system
    (entry,) = strict.store.entries(device_id="e1")
    assert (entry.decision, entry.endpoint) == ("refused", "est/default/simpleenroll")
    assert "no extendedKeyUsage" in entry.reason


def test_ok_certificate_with_client_auth_is_served(strict: Node) -> None:
    # The negative control on the same node: ztpki's device profile names clientAuth.
    key, cert = leaf(strict.pki.factory_ca, "e2")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    strict.list("e2", cert)
    assert strict.simpleenroll("e2", key, cert).startswith(b"HTTP/1.1 200")


def test_ok_label_policy_allow_no_eku_accepts_it(lenient: Node) -> None:
    key, cert = leaf_without_eku(lenient.pki.factory_ca, "e3")
    lenient.list("e3", cert)
    assert lenient.simpleenroll("e3", key, cert).startswith(b"HTTP/1.1 200")
    device = lenient.store.get("e3")
    assert device is not None and device.state.value == "issued"


def test_ok_authentication_marks_a_certificate_without_eku() -> None:
    pki = PKI.create()
    module = pki.authentication()
    _, bare = leaf_without_eku(pki.factory_ca, "e4")
    _, normal = leaf(pki.factory_ca, "e4")
    assert module.authenticate(certificate_der(bare), now=NOW).client_auth_stated is False
    assert module.authenticate(certificate_der(normal), now=NOW).client_auth_stated is True


def _identity(kind: IdentityKind, label: str | None) -> ClientIdentity:
    pki = PKI.create()
    _, cert = leaf_without_eku(pki.factory_ca, "e5")
    return ClientIdentity(
        kind=kind,
        device_id="e5",
        fingerprint="00" * 32,
        serial="01",
        certificate=cert,
        label=label,
        client_auth_stated=False,
    )


def test_ok_check_purpose_reads_the_governing_label() -> None:
    temporary = _identity(IdentityKind.TEMPORARY, None)
    check_purpose(temporary, label="legacy", allow_no_eku={"legacy"})
    with pytest.raises(Refused) as refused:
        check_purpose(temporary, label="default", allow_no_eku={"legacy"})
    assert refused.value.reason is RefusalReason.NO_CLIENT_AUTH
    # An operational certificate answers to the label of its own CA, not the request's.
    operational = _identity(IdentityKind.OPERATIONAL, "default")
    with pytest.raises(Refused):
        check_purpose(operational, label="legacy", allow_no_eku={"legacy"})
    check_purpose(operational, label="legacy", allow_no_eku={"default"})


def test_ok_tls_layer_alone_would_accept_it(strict: Node) -> None:
    """Why the node checks: OpenSSL's purpose check passes a certificate without EKU."""
    key, cert = leaf_without_eku(strict.pki.factory_ca, "e6")
    request = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n"
    assert strict.exchange(key, cert, request).startswith(b"HTTP/1.1 200")
