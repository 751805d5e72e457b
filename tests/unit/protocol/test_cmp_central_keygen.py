"""Central key generation in CMP messages (protocol/cmp/central_keygen.py): an ip carrying
the key in certifiedKeyPair.privateKey decodes with the codec, and only the requester opens
the key, only when the node that protected the answer signed it."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.cmp_mock import MockPKI

from ztpki.errors import MalformedInput
from ztpki.pki.enveloped import envelope_for, open_envelope
from ztpki.pki.key_package import ID_SIGNED_DATA, read_key_package, sign_key_package
from ztpki.protocol.cmp import (
    BodyType,
    CertRepBody,
    CertRequest,
    CertResponse,
    Header,
    StatusInfo,
    decode_message,
    verify_protection,
)
from ztpki.protocol.cmp.central_keygen import (
    asks_for_central_keygen,
    delivered_keys,
    sign_message_with_keys,
)


@pytest.fixture(scope="module")
def pki() -> MockPKI:
    return MockPKI.create()


def _ip(pki: MockPKI, generated: ec.EllipticCurvePrivateKey) -> bytes:
    issued = pki.issue(generated, "device-0001")
    package = sign_key_package(generated, signer_key=pki.server_key, signer_chain=[pki.server])
    envelope = envelope_for(pki.device, ID_SIGNED_DATA, package)
    header = Header(
        sender=pki.server.subject,
        recipient=pki.device.subject,
        transaction_id=os.urandom(16),
        sender_nonce=os.urandom(16),
        pvno=3,
    )
    der = issued.public_bytes(serialization.Encoding.DER)
    body = CertRepBody(BodyType.IP, (CertResponse(0, StatusInfo.accepted(), der),))
    chain = (pki.server.public_bytes(serialization.Encoding.DER),)
    return sign_message_with_keys(header, body, {0: envelope}, pki.server_key, extra_certs=chain)


def test_ok_ip_with_a_delivered_key(pki: MockPKI) -> None:
    generated = ec.generate_private_key(ec.SECP256R1())
    message_der = _ip(pki, generated)
    message = decode_message(message_der)
    verify_protection(message, pki.server)  # the key's slot is inside what was signed
    assert message.header.pvno == 3 and message.body.type is BodyType.IP
    (envelope,) = delivered_keys(message_der).values()
    opened = open_envelope(envelope, pki.device_key, pki.device)
    key = read_key_package(opened.content, signer=pki.server)
    assert key.public_key() == generated.public_key()


def test_fail_key_for_another_device_or_from_another_node(pki: MockPKI) -> None:
    (envelope,) = delivered_keys(_ip(pki, ec.generate_private_key(ec.SECP256R1()))).values()
    other = MockPKI.create()
    with pytest.raises(MalformedInput, match="addressed to another certificate"):
        open_envelope(envelope, other.device_key, other.device)
    opened = open_envelope(envelope, pki.device_key, pki.device)
    with pytest.raises(MalformedInput, match="not signed by the node"):
        read_key_package(opened.content, signer=other.server)


def test_ok_which_requests_ask_for_central_keygen(pki: MockPKI) -> None:
    spki = pki.device_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert asks_for_central_keygen(CertRequest(cert_req_id=0, subject=pki.device.subject))
    assert not asks_for_central_keygen(CertRequest(cert_req_id=0, public_key_der=spki))
