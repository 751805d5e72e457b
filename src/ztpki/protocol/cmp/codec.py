"""PKIMessage bytes <-> ztpki.protocol.cmp.messages.PKIMessage (DER only, no I/O, no clock).

Cost (pyasn1 0.6.5 on the shared 2-core build machine at load 3.4, openssl's own ir with an
EC P-256 key and one certificate in extraCerts, and its ip): decode_message(ir) 2.2 ms,
encode_message(ip) 1.5 ms, decode_message(ip) 2.2 ms. Certificates are never parsed here
(opaque DER for `cryptography`); decoding them field by field would cost several ms more each.
"""

from __future__ import annotations

from pyasn1_alt_modules import rfc9480

from ztpki.protocol.cmp import asn1, tlv
from ztpki.protocol.cmp.bodies import decode_body, encode_body
from ztpki.protocol.cmp.errors import BadDataFormat
from ztpki.protocol.cmp.fields import (
    decode_algorithm,
    decode_exact,
    decode_free_text,
    decode_info,
    decode_time,
    der,
    encode_algorithm,
    encode_free_text,
    encode_info,
    encode_time,
    sequence_der,
)
from ztpki.protocol.cmp.messages import Body, Header, InfoTypeAndValue, PKIMessage
from ztpki.protocol.cmp.names import decode_general_name, general_name

IMPLICIT_CONFIRM = "1.3.6.1.5.5.7.4.13"
CONFIRM_WAIT_TIME = "1.3.6.1.5.5.7.4.14"
_NULL_DER = b"\x05\x00"

# A whole message is split into its top-level elements without decoding them, so the
# ProtectedPart is the exact bytes the sender signed (header and body as they came).
_BIT_STRING = 0x03
_TAILS = {b"\xa0": "protection", b"\xa1": "extraCerts"}


def encode_header(header: Header) -> rfc9480.PKIHeader:
    value = rfc9480.PKIHeader()
    value["pvno"] = header.pvno
    value["sender"] = general_name(header.sender)
    value["recipient"] = general_name(header.recipient)
    if header.message_time is not None:
        value["messageTime"] = encode_time(header.message_time, value["messageTime"])
    if header.protection_alg is not None:
        encode_algorithm(header.protection_alg, value["protectionAlg"])
    for name, data in (
        ("senderKID", header.sender_kid),
        ("recipKID", header.recip_kid),
        ("transactionID", header.transaction_id),
        ("senderNonce", header.sender_nonce),
        ("recipNonce", header.recip_nonce),
    ):
        if data is not None:
            value[name] = value[name].clone(data)
    if header.free_text:
        encode_free_text(header.free_text, value["freeText"])
    info = list(header.general_info)
    if header.implicit_confirm:
        info.insert(0, InfoTypeAndValue(IMPLICIT_CONFIRM, _NULL_DER))
    if header.confirm_wait_time is not None:
        moment = encode_time(header.confirm_wait_time, rfc9480.ConfirmWaitTimeValue())
        info.append(InfoTypeAndValue(CONFIRM_WAIT_TIME, der(moment)))
    for item in info:
        slot = value["generalInfo"]
        slot.append(encode_info(item, slot.getComponentType().clone()))
    return value


def decode_header(value: rfc9480.PKIHeader) -> Header:
    def octets(name: str) -> bytes | None:
        return bytes(value[name]) if value[name].isValue else None

    transaction_id, sender_nonce = octets("transactionID"), octets("senderNonce")
    if transaction_id is None or sender_nonce is None:
        # Optional in RFC 4210, required by the profile (RFC 9483 section 3.1).
        raise BadDataFormat("the header must carry a transactionID and a senderNonce")
    implicit, wait, others = False, None, []
    if value["generalInfo"].isValue:
        for item in (decode_info(i) for i in value["generalInfo"]):
            if item.oid == IMPLICIT_CONFIRM:
                implicit = True
            elif item.oid == CONFIRM_WAIT_TIME and item.value is not None:
                wait = decode_time(
                    decode_exact(item.value, rfc9480.ConfirmWaitTimeValue(), what="a wait time")
                )
            else:
                others.append(item)
    return Header(
        sender=decode_general_name(value["sender"], field="sender"),
        recipient=decode_general_name(value["recipient"], field="recipient"),
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        pvno=int(value["pvno"]),
        recip_nonce=octets("recipNonce"),
        message_time=(decode_time(value["messageTime"]) if value["messageTime"].isValue else None),
        protection_alg=(
            decode_algorithm(value["protectionAlg"]) if value["protectionAlg"].isValue else None
        ),
        sender_kid=octets("senderKID"),
        recip_kid=octets("recipKID"),
        implicit_confirm=implicit,
        confirm_wait_time=wait,
        general_info=tuple(others),
        free_text=decode_free_text(value["freeText"]) if value["freeText"].isValue else (),
    )


def protected_part(header: Header, body: Body) -> bytes:
    """The DER of ProtectedPart (RFC 4210 section 5.1.3): what the protection signs."""
    return sequence_der(der(encode_header(header)), der(encode_body(body)))


def encode_message(
    header: Header,
    body: Body,
    *,
    protection: bytes | None = None,
    extra_certs: tuple[bytes, ...] = (),
) -> bytes:
    """The DER of a PKIMessage; the protection (if any) was computed over protected_part()."""
    return assemble(
        der(encode_header(header)),
        der(encode_body(body)),
        protection=protection,
        extra_certs=extra_certs,
    )


def assemble(
    header_der: bytes,
    body_der: bytes,
    *,
    protection: bytes | None = None,
    extra_certs: tuple[bytes, ...] = (),
) -> bytes:
    """A PKIMessage from its header and body already encoded (as signed: see sign_message).

    The tail is framed by hand: the signature and the certificates are DER already, and
    pyasn1 would only copy them through its schema at a cost per message."""
    parts = [header_der, body_der]
    if protection is not None:
        # [0] EXPLICIT PKIProtection, a BIT STRING of whole octets (0 unused bits).
        parts.append(tlv.wrap(0xA0, tlv.wrap(_BIT_STRING, b"\x00" + protection)))
    if extra_certs:
        parts.append(tlv.wrap(0xA1, tlv.wrap(tlv.SEQUENCE, b"".join(extra_certs))))
    return sequence_der(*parts)


def _split(data: bytes) -> list[tuple[int, bytes]]:
    """The top-level elements of a PKIMessage, each as the bytes that came."""
    if not data or data[0] != tlv.SEQUENCE:
        raise BadDataFormat("the PKIMessage is not a DER SEQUENCE")
    end = tlv.element_end(data, 0, what="the PKIMessage")
    if end < len(data):
        raise BadDataFormat(f"{len(data) - end} bytes follow the PKIMessage")
    return tlv.elements(tlv.content(data), what="the PKIMessage")


def _protection(element: bytes) -> bytes:
    bits = tlv.single(tlv.content(element), _BIT_STRING, what="the protection")
    if not bits or bits[0] != 0:
        raise BadDataFormat("the protection is not a BIT STRING of whole octets")
    return bits[1:]


def _extra_certs(element: bytes) -> tuple[bytes, ...]:
    # Left as DER: only the first is parsed, by `cryptography`, and only when needed.
    inner = tlv.single(tlv.content(element), tlv.SEQUENCE, what="the extraCerts")
    certificates = tlv.elements(inner, what="the extraCerts")
    if not certificates or any(kind != tlv.SEQUENCE for kind, _ in certificates):
        raise BadDataFormat("extraCerts is a non-empty SEQUENCE of certificates")
    return tuple(certificate for _, certificate in certificates)


def decode_message(data: bytes) -> PKIMessage:
    """A PKIMessage from its DER; BadDataFormat for anything else."""
    # Split first by hand (cheap, no schema), then header and body decoded with their schema;
    # the tail is DER the node hands on (signature, certificates), so it is only framed.
    parts = _split(data)
    if not 2 <= len(parts) <= 4:
        raise BadDataFormat(
            "a PKIMessage has a header, a body, and optional protection, extraCerts"
        )
    elements = [element for _, element in parts]
    protection: bytes | None = None
    extra: tuple[bytes, ...] = ()
    for kind, element in parts[2:]:
        name = _TAILS.get(bytes((kind,)))
        if name is None or (name == "protection" and extra):
            raise BadDataFormat("a PKIMessage's tail is [0] protection then [1] extraCerts")
        if name == "protection":
            if protection is not None:
                raise BadDataFormat("a PKIMessage carries one protection")
            protection = _protection(element)
        else:
            if extra:
                raise BadDataFormat("a PKIMessage carries one extraCerts")
            extra = _extra_certs(element)
    header_spec, body_spec = rfc9480.PKIHeader(), asn1.PKIBody()
    try:
        header = decode_header(decode_exact(elements[0], header_spec, what="the header"))
        body = decode_body(decode_exact(elements[1], body_spec, what="the body"), elements[1])
    except BadDataFormat:
        raise
    except Exception as exc:  # pyasn1 schema access on hostile input
        raise BadDataFormat(f"the PKIMessage does not decode: {type(exc).__name__}") from None
    return PKIMessage(
        header=header,
        body=body,
        protection=protection,
        extra_certs=extra,
        protected_part=sequence_der(elements[0], elements[1]),
    )
