"""One CMP transaction as the device sees it (RFC 9483): requests to sign, answers to check.

Sans-I/O: the client (``ztpki.device.cmp_client``) moves the bytes and owns the clock; this
module builds each request of one transaction (one transactionID, a fresh senderNonce each
message, the node's last senderNonce as recipNonce) and accepts an answer only when

- it is a DER PKIMessage of the expected body (or an ``error`` body, raised as CMPRefused),
- it belongs to this transaction (transactionID) and answers the last request (recipNonce),
- its signature verifies with the first certificate of extraCerts, and that certificate
  chains to the anchors the device trusts the node by (``trust``).

A refusal keeps the node's PKIStatusInfo: its failInfo names what to change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ztpki.errors import MalformedInput, VerificationFailed, ZtpkiError
from ztpki.protocol.cmp import (
    Body,
    BodyType,
    CMPError,
    ErrorBody,
    Header,
    PKIMessage,
    PKIStatus,
    SigningKey,
    StatusInfo,
    decode_message,
    protection_certificate,
    sign_message,
    verify_protection,
)
from ztpki.protocol.cmp.messages import PVNO_CMP2000
from ztpki.untrusted import quote

__all__ = ["CMPRefused", "CMPTransaction", "Credentials", "NodeTrust", "describe_status"]

# Checks the node's protection certificate (and the extraCerts after it) at a moment; raises
# VerificationFailed when the device does not trust it.
NodeTrust = Callable[[x509.Certificate, Sequence[x509.Certificate], datetime], None]


class CMPRefused(ZtpkiError):
    """The node answered with a rejection: ``status`` is its PKIStatusInfo."""

    code = "refused"

    def __init__(self, message: str, *, status: StatusInfo) -> None:
        super().__init__(message)
        self.status = status


def describe_status(status: StatusInfo) -> str:
    """A sentence for a PKIStatusInfo: status, failInfo bit names and the node's text."""
    parts = [status.status.name.lower().replace("_", " ")]
    if status.fail_info:
        parts.append("failInfo " + ", ".join(sorted(f.wire_name for f in status.fail_info)))
    if status.text:
        parts.append(quote("; ".join(status.text), limit=300))
    return ": ".join(parts)


@dataclass(frozen=True)
class Credentials:
    """What the device signs CMP messages with: its key, its certificate, and the chain."""

    key: SigningKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def extra_certs(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(Encoding.DER) for c in (self.certificate, *self.chain))

    def key_id(self) -> bytes | None:
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return None
        return ski.value.digest


@dataclass
class CMPTransaction:
    """The state of one transaction: its id and the nonces that chain its messages."""

    credentials: Credentials
    trust: NodeTrust
    recipient: x509.Name = field(default_factory=lambda: x509.Name([]))
    pvno: int = PVNO_CMP2000
    transaction_id: bytes = field(default_factory=lambda: os.urandom(16))
    implicit_confirm: bool = False
    last_nonce: bytes = b""
    node_nonce: bytes | None = None
    node_certificate: x509.Certificate | None = None
    last_answer: bytes = b""  # the DER of the last answer accepted, as it came

    def request(self, body: Body, *, now: datetime) -> bytes:
        """The DER of the next request of this transaction, signed by the device."""
        self.last_nonce = os.urandom(16)
        header = Header(
            sender=self.credentials.certificate.subject,
            recipient=self.recipient,
            transaction_id=self.transaction_id,
            sender_nonce=self.last_nonce,
            pvno=self.pvno,
            recip_nonce=self.node_nonce,
            message_time=now,
            sender_kid=self.credentials.key_id(),
            implicit_confirm=self.implicit_confirm,
        )
        return sign_message(
            header, body, self.credentials.key, extra_certs=self.credentials.extra_certs()
        )

    def answer(self, data: bytes, expected: frozenset[BodyType], *, now: datetime) -> PKIMessage:
        """The node's answer to the last request, checked; CMPRefused for an error body."""
        try:
            message = decode_message(data)
        except CMPError as exc:
            raise MalformedInput(f"the node's CMP answer is not a PKIMessage: {exc}") from None
        header = message.header
        if header.transaction_id != self.transaction_id:
            raise VerificationFailed("the node's answer belongs to another CMP transaction")
        if header.recip_nonce != self.last_nonce:
            raise VerificationFailed(
                "the node's answer does not carry this request's nonce (a replayed answer?)"
            )
        self._check_protection(message, now)
        self.node_nonce = header.sender_nonce
        self.last_answer = data
        body = message.body
        if isinstance(body, ErrorBody):
            raise CMPRefused(
                f"the node refused the request: {describe_status(body.status)}",
                status=body.status,
            )
        if body.type not in expected:
            names = "/".join(sorted(t.value for t in expected))
            raise MalformedInput(f"the node answered with {body.type.value}, expected {names}")
        return message

    def _check_protection(self, message: PKIMessage, now: datetime) -> None:
        try:
            signer = protection_certificate(message)
            others = [x509.load_der_x509_certificate(c) for c in message.extra_certs[1:]]
            verify_protection(message, signer)
        except CMPError as exc:
            raise VerificationFailed(f"the node's CMP answer is not protected: {exc}") from None
        except ValueError:
            raise MalformedInput(
                "a certificate in the answer's extraCerts does not parse"
            ) from None
        if self.node_certificate is None:
            self.trust(signer, others, now)
            self.node_certificate = signer
        elif signer != self.node_certificate:
            # One transaction, one responder: a second signer mid-transaction is refused.
            raise VerificationFailed("the node's answer is signed by another certificate")


def refusal_if_rejected(status: StatusInfo) -> None:
    """CMPRefused for a rejecting PKIStatusInfo inside ip/cp/kup/rp."""
    if status.status is PKIStatus.REJECTION:
        raise CMPRefused(f"the node refused the request: {describe_status(status)}", status=status)
