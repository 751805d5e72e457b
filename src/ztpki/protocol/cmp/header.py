"""PKIHeader (RFC 4210 section 5.1.1) DER <-> ztpki.protocol.cmp.messages.Header, by hand.

Every message the node reads or writes has a header, and pyasn1 walking the PKIHeader schema
(two GeneralNames, a CHOICE of ten members each) cost more than the rest of an ir. The header
is a fixed SEQUENCE of EXPLICIT-tagged fields (the CMP module uses EXPLICIT TAGS), so it is
framed here with ztpki.protocol.cmp.tlv; pyasn1 only decodes the small values that vary
(a Name, the time, an AlgorithmIdentifier, generalInfo, freeText), with the values every
message repeats (the node's name, the signature algorithm) cached by their bytes.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography import x509
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280, rfc9480

from ztpki.protocol.cmp import tlv
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
)
from ztpki.protocol.cmp.messages import AlgorithmId, Header, InfoTypeAndValue
from ztpki.protocol.cmp.names import decode_name

IMPLICIT_CONFIRM = "1.3.6.1.5.5.7.4.13"
CONFIRM_WAIT_TIME = "1.3.6.1.5.5.7.4.14"
_NULL_DER = b"\x05\x00"
_INTEGER, _OCTET_STRING = 0x02, 0x04
_DIRECTORY_NAME = 0xA4  # GeneralName's [4] Name

# The optional fields by their [n] EXPLICIT tag, in the order DER puts them.
_TAGS = {
    0xA0: "messageTime",
    0xA1: "protectionAlg",
    0xA2: "senderKID",
    0xA3: "recipKID",
    0xA4: "transactionID",
    0xA5: "senderNonce",
    0xA6: "recipNonce",
    0xA7: "freeText",
    0xA8: "generalInfo",
}
_SLOTS = {name: tag for tag, name in _TAGS.items()}
_FIELDS = rfc9480.PKIHeader.componentType


def _spec(name: str) -> univ.Asn1Item:
    """A fresh value of the header field's own (tagged) type, to decode its element with."""
    return _FIELDS[_FIELDS.getPositionByName(name)].asn1Object.clone()


# ---------------------------------------------------------------- encoding


def integer(value: int) -> bytes:
    """DER INTEGER: two's complement in the fewest octets."""
    size = (value if value >= 0 else ~value).bit_length() // 8 + 1
    return tlv.wrap(_INTEGER, value.to_bytes(size, "big", signed=True))


@lru_cache(maxsize=4096)
def _general_name(name: x509.Name) -> bytes:
    return tlv.wrap(_DIRECTORY_NAME, name.public_bytes())


@lru_cache(maxsize=64)
def _algorithm(alg: AlgorithmId) -> bytes:
    return der(encode_algorithm(alg))


def header_der(header: Header) -> bytes:
    """The DER of header's PKIHeader."""
    parts = [integer(header.pvno), _general_name(header.sender), _general_name(header.recipient)]
    if header.message_time is not None:
        parts.append(der(encode_time(header.message_time, _spec("messageTime"))))
    if header.protection_alg is not None:
        parts.append(tlv.wrap(0xA1, _algorithm(header.protection_alg)))
    for name, data in (
        ("senderKID", header.sender_kid),
        ("recipKID", header.recip_kid),
        ("transactionID", header.transaction_id),
        ("senderNonce", header.sender_nonce),
        ("recipNonce", header.recip_nonce),
    ):
        if data is not None:
            parts.append(tlv.wrap(_SLOTS[name], tlv.wrap(_OCTET_STRING, data)))
    if header.free_text:
        parts.append(der(encode_free_text(header.free_text, _spec("freeText"))))
    info = list(header.general_info)
    if header.implicit_confirm:
        info.insert(0, InfoTypeAndValue(IMPLICIT_CONFIRM, _NULL_DER))
    if header.confirm_wait_time is not None:
        moment = encode_time(header.confirm_wait_time, rfc9480.ConfirmWaitTimeValue())
        info.append(InfoTypeAndValue(CONFIRM_WAIT_TIME, der(moment)))
    if info:
        slot = _spec("generalInfo")
        for item in info:
            slot.append(encode_info(item, slot.getComponentType().clone()))
        parts.append(der(slot))
    return tlv.wrap(tlv.SEQUENCE, b"".join(parts))


# ---------------------------------------------------------------- decoding


@lru_cache(maxsize=4096)
def _name(data: bytes, field: str) -> x509.Name:
    # x509.Name is immutable: one decoded name may serve every message that carries it.
    if data[:1] != bytes((_DIRECTORY_NAME,)):
        raise BadDataFormat(f"the header's {field} must be a directoryName")
    inner = tlv.content(data)
    return decode_name(decode_exact(inner, rfc5280.Name(), what=f"the header's {field}"))


@lru_cache(maxsize=64)
def _protection_alg(data: bytes) -> AlgorithmId:
    return decode_algorithm(decode_exact(data, _spec("protectionAlg"), what="protectionAlg"))


def _pvno(data: bytes) -> int:
    value = tlv.content(data) if data[:1] == bytes((_INTEGER,)) else b""
    if not value or (len(value) > 1 and value[0] in (0, 0xFF) and (value[0] ^ value[1]) < 0x80):
        raise BadDataFormat("the header's pvno is not a DER INTEGER")
    return int.from_bytes(value, "big", signed=True)


def _octets(data: bytes, name: str) -> bytes:
    return tlv.single(tlv.content(data), _OCTET_STRING, what=f"the header's {name}")


def decode_header(data: bytes) -> Header:
    """A Header from its PKIHeader DER as received; BadDataFormat for anything else."""
    if data[:1] != bytes((tlv.SEQUENCE,)):
        raise BadDataFormat("the header is not a DER SEQUENCE")
    parts = tlv.elements(tlv.content(data), what="the header")
    if len(parts) < 3:
        raise BadDataFormat("the header needs pvno, sender and recipient")
    fields: dict[str, bytes] = {}
    last = 0
    for kind, element in parts[3:]:
        name = _TAGS.get(kind)
        if name is None or kind <= last:
            raise BadDataFormat("the header's fields are not PKIHeader's, in its order")
        fields[name], last = element, kind
    transaction_id, sender_nonce = fields.get("transactionID"), fields.get("senderNonce")
    if transaction_id is None or sender_nonce is None:
        # Optional in RFC 4210, required by the profile (RFC 9483 section 3.1).
        raise BadDataFormat("the header must carry a transactionID and a senderNonce")

    def octets(name: str) -> bytes | None:
        element = fields.get(name)
        return None if element is None else _octets(element, name)

    def decoded(name: str) -> univ.Asn1Item:
        return decode_exact(fields[name], _spec(name), what=f"the header's {name}")

    implicit, wait, others = False, None, []
    if "generalInfo" in fields:
        for item in (decode_info(i) for i in decoded("generalInfo")):
            if item.oid == IMPLICIT_CONFIRM:
                implicit = True
            elif item.oid == CONFIRM_WAIT_TIME and item.value is not None:
                wait = decode_time(
                    decode_exact(item.value, rfc9480.ConfirmWaitTimeValue(), what="a wait time")
                )
            else:
                others.append(item)
    return Header(
        sender=_name(parts[1][1], "sender"),
        recipient=_name(parts[2][1], "recipient"),
        transaction_id=_octets(transaction_id, "transactionID"),
        sender_nonce=_octets(sender_nonce, "senderNonce"),
        pvno=_pvno(parts[0][1]),
        recip_nonce=octets("recipNonce"),
        message_time=decode_time(decoded("messageTime")) if "messageTime" in fields else None,
        protection_alg=(
            _protection_alg(fields["protectionAlg"]) if "protectionAlg" in fields else None
        ),
        sender_kid=octets("senderKID"),
        recip_kid=octets("recipKID"),
        implicit_confirm=implicit,
        confirm_wait_time=wait,
        general_info=tuple(others),
        free_text=decode_free_text(decoded("freeText")) if "freeText" in fields else (),
    )
