"""CMP requests as a device would build them, with ztpki's codec: for the tests that must send
what openssl cannot be made to (a forged signature, a replay, a wrong certHash...)."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ztpki.protocol.cmp import (
    BodyType,
    CertConfBody,
    CertReqBody,
    CertRequest,
    CertStatus,
    ErrorBody,
    FailInfo,
    Header,
    PKIMessage,
    PKIStatus,
    sign_cert_request,
    sign_message,
)


def request_header(cert: x509.Certificate, **changes: object) -> Header:
    """A fresh transaction's header from the holder of cert, as of now."""
    header = Header(
        sender=cert.subject, recipient=x509.Name([]), transaction_id=os.urandom(16),
        sender_nonce=os.urandom(16), message_time=datetime.now(UTC),
    )  # fmt: skip
    return replace(header, **changes)  # type: ignore[arg-type]


def ir_body(device_id: str) -> CertReqBody:
    """An ir for a new EC key naming device_id, with its POPO signature."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    subject = x509.Name([x509.NameAttribute(x509.NameOID.SERIAL_NUMBER, device_id)])
    request = sign_cert_request(CertRequest(0, subject=subject, public_key_der=spki), key)
    return CertReqBody(BodyType.IR, (request,))


def signed(key: object, cert: x509.Certificate, header: Header, body: object) -> bytes:
    """The message signed by key, cert first in extraCerts (RFC 9483 section 3.3)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return sign_message(header, body, key, extra_certs=(der,))  # type: ignore[arg-type]


def cert_conf(header: Header, answer: PKIMessage, cert_hash: bytes) -> tuple[Header, CertConfBody]:
    """The certConf following the request (header) the node answered with answer."""
    follow = replace(
        header, sender_nonce=os.urandom(16), recip_nonce=answer.header.sender_nonce,
        message_time=datetime.now(UTC),
    )  # fmt: skip
    return follow, CertConfBody((CertStatus(cert_hash, 0),))


def refusal(answer: PKIMessage) -> tuple[frozenset[FailInfo], str]:
    """The failInfo bits and text of an error answer."""
    assert isinstance(answer.body, ErrorBody), answer.body
    assert answer.body.status.status is PKIStatus.REJECTION
    return answer.body.status.fail_info, " ".join(answer.body.status.text)
