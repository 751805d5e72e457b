"""Central key generation over CMP (RFC 9483 section 4.1.6), the patent's main path: the
customer CA system generates the device's key (as for EST serverkeygen) and the node hands it
over inside the ip, signed by the node as key generation authority and enveloped to the
device's temporary key (ECDH key agreement for an EC key, RSA-OAEP key transport for RSA).

An ir or cr whose template has no public key and no proof of possession asks for it; the
same authorization, register states, lease, audit and certConf apply as to any ir.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ztpki.node.authorization import Operation
from ztpki.node.cmp_enroll import enroll, issue, named_device_id
from ztpki.node.cmp_exchange import CmpExchange, CmpReply
from ztpki.node.enrollment_types import KeyRequest
from ztpki.pki.enveloped import envelope_for
from ztpki.pki.key_package import ID_SIGNED_DATA, sign_key_package
from ztpki.pki.keys import PrivateKey, decode_pkcs8, public_key_der
from ztpki.protocol.cmp import (
    PVNO_CMP2021,
    BadRequest,
    BodyType,
    CertRepBody,
    CertReqBody,
    Header,
)
from ztpki.protocol.cmp.central_keygen import asks_for_central_keygen, sign_message_with_keys

__all__ = ["deliver_key", "enroll_or_keygen"]


async def enroll_or_keygen(exchange: CmpExchange) -> CmpReply:
    """ir/cr: central key generation when the template asks for it, else ``enroll``."""
    body = exchange.message.body
    if not (
        isinstance(body, CertReqBody)
        and body.type in (BodyType.IR, BodyType.CR)
        and len(body.requests) == 1
        and asks_for_central_keygen(body.requests[0])
    ):
        return await enroll(exchange)
    (request,) = body.requests
    recipient = exchange.signer.public_key()
    if not isinstance(recipient, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise BadRequest(
            "central key generation delivers the key to the requester's EC or RSA key; this "
            "certificate's key can only sign: send a public key with a proof of possession"
        )
    # The CA ignores the key of a serverkeygen request: the signer's stands in for it.
    key = KeyRequest(public_key_der(recipient), named_device_id(request.subject))
    return await issue(exchange, key, request.cert_req_id, Operation.SERVERKEYGEN)


def deliver_key(
    header: Header, reply: CmpReply, key: PrivateKey, chain: Sequence[x509.Certificate]
) -> bytes:
    """The signed ip carrying reply's delivered key (pvno cmp2021, RFC 9483 4.1.6)."""
    delivered = reply.delivered_key
    assert delivered is not None and isinstance(reply.body, CertRepBody)
    generated = decode_pkcs8(delivered.private_key_der, passphrase=None, self_generated=True)
    package = sign_key_package(generated, signer_key=key, signer_chain=list(chain))
    envelope = envelope_for(delivered.recipient, ID_SIGNED_DATA, package)
    chain_der = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
    return sign_message_with_keys(
        replace(header, pvno=PVNO_CMP2021),
        reply.body,
        {delivered.cert_req_id: envelope},
        key,
        extra_certs=chain_der + reply.extra_certs,
    )
