"""Central key generation in CMP messages (RFC 9483 section 4.1.6), beside the codec.

The request: an ir/cr whose certificate template carries no public key (or only its
algorithm, with an empty BIT STRING) and no proof of possession: the key is the CA's to make.
The answer: the certificate as usual, and in ``certifiedKeyPair.privateKey`` an
EncryptedKey of choice ``envelopedData`` (the key, signed by the key generation authority,
enveloped to the requester's certificate: ``ztpki.pki.enveloped``, ``ztpki.pki.key_package``).
Messages that carry one are pvno cmp2021 (3).

The codec's dataclasses have no slot for that key, so signing such an answer and reading the
key back out of one are done here, on the codec's own schema and encoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from cryptography.hazmat.primitives import hashes
from pyasn1_alt_modules import rfc5280, rfc5652

from ztpki.protocol.cmp import asn1
from ztpki.protocol.cmp.bodies import body_der
from ztpki.protocol.cmp.codec import assemble, header_der
from ztpki.protocol.cmp.errors import BadDataFormat
from ztpki.protocol.cmp.fields import decode_exact, der, sequence_der
from ztpki.protocol.cmp.messages import CertRepBody, CertRequest, Header
from ztpki.protocol.cmp.protection import (
    HashClass,
    SigningKey,
    sign,
    signature_algorithm,
)

__all__ = ["asks_for_central_keygen", "delivered_keys", "sign_message_with_keys"]


def asks_for_central_keygen(request: CertRequest) -> bool:
    """True when the template leaves the key to the CA: no public key, or an empty one."""
    if request.popo is not None:
        return False
    if request.public_key_der is None:
        return True
    spki = decode_exact(
        request.public_key_der, rfc5280.SubjectPublicKeyInfo(), what="the template's key"
    )
    return len(spki["subjectPublicKey"]) == 0


# envelopedData is EncryptedKey's [0] IMPLICIT EnvelopedData: the same bytes as a plain
# EnvelopedData but for the first tag octet (SEQUENCE 0x30, context-constructed [0] 0xA0).
_SEQUENCE, _IMPLICIT_0 = 0x30, 0xA0


def _retag(data: bytes, tag: int) -> bytes:
    return bytes([tag]) + data[1:]


def sign_message_with_keys(
    header: Header,
    body: CertRepBody,
    keys: Mapping[int, bytes],
    key: SigningKey,
    *,
    extra_certs: tuple[bytes, ...] = (),
    hash_class: HashClass | None = None,
) -> bytes:
    """sign_message for an ip/cp whose responses carry centrally generated keys: ``keys``
    maps a certReqId to the DER of its EnvelopedData."""
    algorithm = signature_algorithm(key, hash_class=hash_class or hashes.SHA256)
    header = replace(header, protection_alg=algorithm)
    header_bytes, body_bytes = header_der(header), body_der(body, keys)
    signature = sign(key, algorithm, sequence_der(header_bytes, body_bytes))
    return assemble(header_bytes, body_bytes, protection=signature, extra_certs=extra_certs)


def delivered_keys(message_der: bytes) -> dict[int, bytes]:
    """certReqId -> DER of the EnvelopedData of each centrally generated key an ip/cp/kup
    carries (checked elsewhere: this only reads the slot the codec's dataclasses skip)."""
    message = decode_exact(message_der, asn1.PKIMessage(), what="the PKIMessage")
    body = message["body"]
    if body.getName() not in ("ip", "cp", "kup"):
        return {}
    found: dict[int, bytes] = {}
    for item in body.getComponent()["response"]:
        pair = item["certifiedKeyPair"]
        if not pair.isValue or not pair["privateKey"].isValue:
            continue
        private = pair["privateKey"]
        if private.getName() != "envelopedData":
            raise BadDataFormat(
                "a centrally generated key must come as envelopedData (RFC 9483 4.1.6)"
            )
        envelope = _retag(der(private["envelopedData"]), _SEQUENCE)
        decode_exact(envelope, rfc5652.EnvelopedData(), what="the delivered key's envelope")
        found[int(item["certReqId"])] = envelope
    return found
