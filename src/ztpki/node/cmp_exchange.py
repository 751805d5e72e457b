"""What a CMP handler gets and gives back: one authenticated, verified request, its label and
the services it may use; a response body and what its header says.

Handlers are registered by body type in ``ztpki.node.cmp_dispatch.HANDLERS`` (one line each):
the front end (ztpki.node.cmp_http) has decoded the message, checked its protection and
version, authenticated the signer as EST's TLS layer does, and will sign whatever comes back.
A handler refuses by raising: a CMPError carries its failInfo; any ZtpkiError is mapped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from ztpki.node.authentication import ClientIdentity
from ztpki.node.enrollment import EnrollmentService
from ztpki.node.enrollment_types import LoadedLabel
from ztpki.protocol.cmp import Body, CMPNotAuthorized, PKIMessage


@dataclass(frozen=True)
class CmpExchange:
    """One verified request. ``protecting`` is the certificate that signed it; None when it
    was MAC-protected with the device's shared secret (ztpki.node.cmp_mac)."""

    message: PKIMessage
    identity: ClientIdentity
    label: LoadedLabel
    service: EnrollmentService
    now: datetime
    protecting: x509.Certificate | None = field(repr=False)

    @property
    def signer(self) -> x509.Certificate:
        """The signing certificate, for the requests that act on it (kur, rr, central key
        generation's recipient); a MAC-protected one has none and is refused."""
        if self.protecting is None:
            raise CMPNotAuthorized(
                f"a MAC-protected {self.message.body.type.value} cannot be served: it needs "
                "the device's own certificate and key (signature-based protection)"
            )
        return self.protecting

    @property
    def endpoint(self) -> str:
        """The request's name in the audit trail and the metrics."""
        return f"cmp/{self.label.name}/{self.message.body.type.value}"


@dataclass(frozen=True)
class DeliveredKey:
    """A key the CA generated for the requester (RFC 9483 4.1.6): the front end signs it as
    the key generation authority and envelopes it to ``recipient`` (the request's signer)."""

    cert_req_id: int
    private_key_der: bytes = field(repr=False)
    recipient: x509.Certificate = field(repr=False)


@dataclass(frozen=True)
class CmpReply:
    """A response body; ``sender_nonce`` when the handler recorded the one it must carry."""

    body: Body
    implicit_confirm: bool = False
    sender_nonce: bytes | None = None
    extra_certs: tuple[bytes, ...] = ()  # after the node's own chain (RFC 9483 section 3.3)
    outcome: str = "served"  # for the metrics: issued, redelivered, confirmed, served
    delivered_key: DeliveredKey | None = None


CmpHandler = Callable[[CmpExchange], Awaitable[CmpReply]]
