"""The node's CMP front end in process (real TLS listeners, in-process CA system): behind the
proxy, implicitConfirm by label policy, and the refusals openssl cannot be made to send."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from node_harness import InProcessNode
from node_pki import NOW
from test_node_proxy_listener import TCP, ProxiedNode, escaped, read_all
from tests.support.cmp_messages import ir_body, refusal, request_header, signed

from ztpki.credentials import client_context
from ztpki.node.config import Limits
from ztpki.pki.keys import PrivateKey
from ztpki.protocol.cmp import (
    CMP_CONTENT_TYPE,
    AlgorithmId,
    BodyType,
    CertConfBody,
    CertRepBody,
    CertStatus,
    FailInfo,
    PKIConfBody,
    PKIMessage,
    PollReqBody,
    certificate_hash,
    decode_message,
    encode_message,
    protected_part,
    protection_certificate,
    verify_protection,
)
from ztpki.store.records import DeviceState, NewDevice


def cmp_head(body: bytes) -> str:
    return (
        f"POST /.well-known/cmp HTTP/1.1\r\nHost: node\r\nContent-Type: {CMP_CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )


def answer_of(raw: bytes) -> PKIMessage:
    status, _, rest = raw.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), raw[:300]
    message = decode_message(rest)
    verify_protection(message, protection_certificate(message))  # every answer is signed
    return message


def direct(node: InProcessNode, body: bytes) -> PKIMessage:
    """POST body to the node's own TLS listener, without a client certificate."""
    anchors = [node.pki.factory_root.certificate]
    context = client_context(key=None, chain=[], server_anchors=anchors)
    raw = socket.create_connection(("127.0.0.1", node.node.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(cmp_head(body).encode() + b"\r\n" + body)
        return answer_of(read_all(sock))


class CmpNode(ProxiedNode):
    def cmp(self, body: bytes, *, proxied: str | None = None) -> PKIMessage:
        if proxied is None:
            return direct(self, body)
        head = cmp_head(body) + f"X-SSL-Client-Cert: {proxied}\r\n\r\n"
        return answer_of(self.proxy_exchange(head, body))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CmpNode]:
    n = CmpNode(tmp_path_factory.mktemp("node-cmp"))
    n.start(proxy_listen=[TCP])
    yield n
    n.close()


def listed(node: InProcessNode, device_id: str) -> tuple[PrivateKey, x509.Certificate]:
    node.store.add_device(NewDevice(device_id, None), now=NOW)
    return node.pki.temporary(device_id)


def state(node: InProcessNode, device_id: str) -> DeviceState:
    device = node.store.get(device_id)
    assert device is not None
    return device.state


# ------------------------------------------------------------------ behind the proxy


def test_ok_ir_behind_the_proxy_with_the_signers_certificate(node: CmpNode) -> None:
    key, cert = listed(node, "px-1")
    answer = node.cmp(
        signed(key, cert, request_header(cert), ir_body("px-1")), proxied=escaped(cert)
    )
    assert isinstance(answer.body, CertRepBody) and answer.body.type is BodyType.IP
    assert state(node, "px-1") is DeviceState.ISSUED
    metrics = node.direct_exchange(
        "GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
    ).decode()
    assert 'ztpki_node_requests_total{endpoint="cmp-ir",outcome="issued"}' in metrics
    assert 'ztpki_node_enrollment_seconds_count{endpoint="cmp-ir"}' in metrics


def test_fail_proxy_forwarded_another_certificate_than_the_signer(node: CmpNode) -> None:
    key, cert = listed(node, "px-2")
    _, other = listed(node, "px-3")
    audit = node.audit_length()
    answer = node.cmp(
        signed(key, cert, request_header(cert), ir_body("px-2")), proxied=escaped(other)
    )
    fail, text = refusal(answer)
    assert fail == {FailInfo.NOT_AUTHORIZED} and "TLS client certificate" in text
    assert state(node, "px-2") is DeviceState.LISTED
    assert node.audit_length() == audit + 1  # the refusal, audited; nothing else


# ------------------------------------------------------------------ refusals


def test_fail_unprotected_and_mac_protected_requests(node: CmpNode) -> None:
    _, cert = listed(node, "mac-1")
    body = ir_body("mac-1")
    der = cert.public_bytes(serialization.Encoding.DER)
    plain = encode_message(request_header(cert), body, extra_certs=(der,))
    fail, text = refusal(node.cmp(plain))
    assert fail == {FailInfo.BAD_MESSAGE_CHECK} and "not protected" in text
    mac = request_header(cert, protection_alg=AlgorithmId("1.2.840.113533.7.66.13", b"\x05\x00"))
    macced = encode_message(mac, body, protection=os.urandom(20), extra_certs=(der,))
    fail, text = refusal(node.cmp(macced))
    assert fail == {FailInfo.BAD_MESSAGE_CHECK} and "MAC-based protection" in text
    assert state(node, "mac-1") is DeviceState.LISTED


@pytest.mark.parametrize(
    ("changes", "fail"),
    [
        pytest.param({"pvno": 1}, FailInfo.UNSUPPORTED_VERSION, id="fail-pvno-1"),
        pytest.param(
            {"message_time": datetime.now(UTC) - timedelta(hours=1)}, FailInfo.BAD_TIME,
            id="fail-message-time-an-hour-off",
        ),
        pytest.param(
            {"sender": x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "other")])},
            FailInfo.BAD_MESSAGE_CHECK, id="fail-sender-not-the-signer",
        ),
    ],
)  # fmt: skip
def test_fail_header_refusals_change_nothing(
    node: CmpNode, changes: dict[str, object], fail: FailInfo
) -> None:
    device_id = f"hdr-{fail.value}"
    key, cert = listed(node, device_id)
    answer = node.cmp(signed(key, cert, request_header(cert, **changes), ir_body(device_id)))
    assert refusal(answer)[0] == {fail}
    assert state(node, device_id) is DeviceState.LISTED


def test_fail_body_without_a_handler_is_a_bad_request(node: CmpNode) -> None:
    key, cert = listed(node, "genm-1")
    # A response body (pkiConf) is nothing a device sends the node.
    fail, text = refusal(node.cmp(signed(key, cert, request_header(cert), PKIConfBody())))
    assert fail == {FailInfo.BAD_REQUEST} and "pkiconf" in text
    # pollReq outside a waiting transaction: refused the same way.
    body = PollReqBody((0,))
    fail, text = refusal(node.cmp(signed(key, cert, request_header(cert), body)))
    assert fail == {FailInfo.BAD_REQUEST} and "no CMP transaction" in text
    assert state(node, "genm-1") is DeviceState.LISTED


def test_fail_certconf_from_another_signer_or_with_a_stale_nonce(node: CmpNode) -> None:
    key, cert = listed(node, "cc-1")
    other_key, other = listed(node, "cc-2")
    head = request_header(cert)
    ip = node.cmp(signed(key, cert, head, ir_body("cc-1")))
    assert isinstance(ip.body, CertRepBody)
    issued = x509.load_der_x509_certificate(ip.body.responses[0].certificate_der or b"")
    conf = CertConfBody((CertStatus(certificate_hash(issued), 0),))
    follow = replace(head, sender_nonce=os.urandom(16), recip_nonce=ip.header.sender_nonce)
    stolen = replace(follow, sender=other.subject)
    fail, _ = refusal(node.cmp(signed(other_key, other, stolen, conf)))
    assert fail == {FailInfo.NOT_AUTHORIZED}
    stale = replace(follow, recip_nonce=os.urandom(16))
    fail, _ = refusal(node.cmp(signed(key, cert, stale, conf)))
    assert fail == {FailInfo.BAD_RECIPIENT_NONCE}
    assert state(node, "cc-1") is DeviceState.ISSUED
    done = node.cmp(signed(key, cert, follow, conf))
    assert done.body.type is BodyType.PKI_CONF
    assert state(node, "cc-1") is DeviceState.CUSTOMIZED
    # The same certConf again (its pkiConf lost): pkiConf again, nothing else changes.
    assert node.cmp(signed(key, cert, follow, conf)).body.type is BodyType.PKI_CONF


def test_ok_protected_part_is_what_the_node_signed(node: CmpNode) -> None:
    key, cert = listed(node, "pp-1")
    ip = node.cmp(signed(key, cert, request_header(cert), ir_body("pp-1")))
    assert ip.protected_part == protected_part(ip.header, ip.body)


# ------------------------------------------------------------------ implicitConfirm by policy


def test_ok_implicit_confirm_where_the_label_allows_it(tmp_path: Path) -> None:
    n = InProcessNode(tmp_path, limits=Limits(), cmp_implicit_confirm=True)
    n.start()
    try:
        key, cert = listed(n, "imp-1")
        answer = direct(
            n, signed(key, cert, request_header(cert, implicit_confirm=True), ir_body("imp-1"))
        )
        assert answer.header.implicit_confirm
        assert state(n, "imp-1") is DeviceState.CUSTOMIZED  # no certConf needed
        # Without asking for it, the same label still wants a certConf.
        key, cert = listed(n, "imp-2")
        answer = direct(n, signed(key, cert, request_header(cert), ir_body("imp-2")))
        assert not answer.header.implicit_confirm
        assert state(n, "imp-2") is DeviceState.ISSUED
    finally:
        n.close()


def test_fail_mutated_requests_get_a_typed_refusal_never_an_internal_error(node: CmpNode) -> None:
    key, cert = listed(node, "fz-1")
    good = bytearray(signed(key, cert, request_header(cert), ir_body("fz-1")))
    rng = random.Random(17)
    for _ in range(40):
        mutated = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(mutated))
            mutated[position] = (mutated[position] + rng.randrange(1, 256)) % 256
        # Every byte is signed, or is the signature, or the signer's certificate: refused.
        fail, text = refusal(node.cmp(bytes(mutated)))
        assert FailInfo.SYSTEM_FAILURE not in fail, text
    assert state(node, "fz-1") is DeviceState.LISTED


def test_fail_kur_with_the_temporary_certificate(node: CmpNode) -> None:
    key, cert = listed(node, "kur-1")
    body = replace(ir_body("kur-1"), type=BodyType.KUR)
    audit = node.audit_length()
    fail, text = refusal(node.cmp(signed(key, cert, request_header(cert), body)))
    assert fail == {FailInfo.NOT_AUTHORIZED} and "customize with ir" in text
    assert state(node, "kur-1") is DeviceState.LISTED
    assert node.audit_length() == audit + 1


# ------------------------------------------------------------------ what an ir commits


WRITES = ("begin_issuance", "complete_issuance", "abort_issuance", "confirm",
          "confirm_renewal", "begin_cmp_transaction", "record_cmp_issued",
          "close_cmp_transaction", "mark_cmp_waiting", "append")  # fmt: skip


def test_ok_ir_and_certconf_commit_as_often_as_est(
    node: CmpNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction's row goes in with the issuance lease, its certificate with the
    completion, and its confirmation with the device's: an ir is two register write
    transactions, as EST's simpleenroll (begin and complete issuance), and its certConf one,
    as EST's first request with the new certificate (before: four and two)."""
    key, cert = listed(node, "commits-1")
    calls: list[str] = []
    for name in WRITES:
        method = getattr(node.store, name)

        def counted(*args: object, _name: str = name, _method: object = method, **kw: object):  # type: ignore[no-untyped-def]
            calls.append(_name)
            return _method(*args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(node.store, name, counted)
    head = request_header(cert)
    ip = node.cmp(signed(key, cert, head, ir_body("commits-1")))
    assert isinstance(ip.body, CertRepBody) and ip.body.type is BodyType.IP
    assert calls == ["begin_issuance", "complete_issuance"]
    row = node.store.cmp_transaction(head.transaction_id)
    assert row is not None and row.state.value == "issued"
    assert row.response_nonce == ip.header.sender_nonce  # what the certConf must echo
    assert row.serial is not None and state(node, "commits-1") is DeviceState.ISSUED
    issued = x509.load_der_x509_certificate(ip.body.responses[0].certificate_der or b"")
    conf = CertConfBody((CertStatus(certificate_hash(issued), 0),))
    follow = replace(head, sender_nonce=os.urandom(16), recip_nonce=ip.header.sender_nonce)
    calls.clear()
    assert node.cmp(signed(key, cert, follow, conf)).body.type is BodyType.PKI_CONF
    assert calls == ["confirm"]
    confirmed = node.store.cmp_transaction(head.transaction_id)
    assert confirmed is not None and confirmed.state.value == "confirmed"
    assert state(node, "commits-1") is DeviceState.CUSTOMIZED
