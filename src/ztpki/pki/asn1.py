"""Strict DER through pyasn1: decode one value of a known schema, or encode one.

pyasn1 (with pyasn1-alt-modules' RFC modules) is the ASN.1 library for the structures
cryptography has no API for (EST csrattrs, a PKCS#8 shape check, the PBES2 envelope of keys
at rest, CMP). Its DER decoder still takes some BER (long-form lengths for short content,
non-minimal INTEGERs), so a value is accepted only when it encodes back to the same bytes:
one value, one encoding, whatever a peer sends. Every decoding error is MalformedInput with a
sentence of ours; pyasn1's own messages repeat the schema and the input, so they stay out.
Encoding only; no cryptography happens here.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error, SubstrateUnderrunError
from pyasn1.type import namedtype, tag, univ

from ztpki.errors import MalformedInput

__all__ = [
    "SignedStructure",
    "decode_der",
    "der_children",
    "der_content",
    "der_element_end",
    "der_tlv",
    "encode_der",
    "oid",
    "oid_text",
    "signed_parts",
]

_Value = TypeVar("_Value", bound=Any)


def decode_der(der: bytes, spec: _Value, *, what: str, ours: bool = False) -> _Value:
    """The one value of ``spec``'s type that ``der`` holds, in canonical DER only.

    ``what`` names the structure in the error a user sees ("csrattrs body"). ``ours``: the
    bytes come from `cryptography` in this process (a certificate we hold, a key we made),
    so the canonical-encoding check, which doubles the cost, is skipped.
    """
    try:
        value, rest = decoder.decode(der, asn1Spec=spec)
    except SubstrateUnderrunError:
        raise MalformedInput(f"{what} is truncated DER") from None
    except PyAsn1Error:
        raise MalformedInput(f"{what} is not a DER {type(spec).__name__}") from None
    if rest:
        raise MalformedInput(f"{what} has {len(rest)} bytes after its DER {type(spec).__name__}")
    if ours:
        return cast(_Value, value)
    try:
        canonical = encoder.encode(value)
    except PyAsn1Error:
        raise MalformedInput(f"{what} is not a complete {type(spec).__name__}") from None
    if canonical != der:
        raise MalformedInput(
            f"{what} is not in canonical DER (a length, value or SET order is encoded otherwise)"
        )
    return cast(_Value, value)


def encode_der(value: Any) -> bytes:
    """DER of a pyasn1 value built by our own code (a missing component is our bug)."""
    return bytes(encoder.encode(value))


def oid(dotted: str) -> univ.ObjectIdentifier:
    return univ.ObjectIdentifier(dotted)


def oid_text(value: univ.ObjectIdentifier) -> str:
    return ".".join(str(arc) for arc in value.asTuple())


class SignedStructure(univ.Sequence):
    """What a Certificate, a CertificateList and a BasicOCSPResponse share: the signed part,
    its AlgorithmIdentifier, the signature, and (OCSP) optional certificates. The first two
    stay Any: their bytes are kept exactly as they came, which a signature over them needs."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("signed", univ.Any()),
        namedtype.NamedType("algorithm", univ.Any()),
        namedtype.NamedType("signature", univ.BitString()),
        namedtype.OptionalNamedType(
            "certs",
            univ.Any().subtype(
                explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, 0)
            ),
        ),
    )


def signed_parts(der: bytes) -> SignedStructure:
    """``der`` (made by `cryptography` in this process) as its signed parts."""
    return decode_der(der, SignedStructure(), what="signed structure", ours=True)


# DER framing by hand. pyasn1 costs tens of microseconds per element; a structure that only
# carries DER made elsewhere (a certificate, a signature) needs framing, not a schema.


def der_tlv(tag: int, content: bytes) -> bytes:
    """One DER element: a single-octet tag, the minimal definite length, the content."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def der_element_end(data: bytes, offset: int) -> int:
    """Where the element starting at offset ends: single-octet tags (numbers below 31) and
    minimal definite lengths only, as DER has them for every tag this project reads."""
    end = len(data)
    if data[offset] & 0x1F == 0x1F:
        raise MalformedInput("a tag number above 30 is outside the syntax")
    if offset + 1 >= end:
        raise MalformedInput("truncated DER")
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        # DER: no indefinite length, no leading zero octet, long form only from 128 on.
        if count == 0 or count > 4 or start + count > end or data[start] == 0:
            raise MalformedInput("a length is not minimal DER")
        size = int.from_bytes(data[start : start + count], "big")
        if size < 0x80:
            raise MalformedInput("a length is not minimal DER")
        start += count
    if start + size > end:
        raise MalformedInput("truncated DER")
    return start + size


def der_content(element: bytes) -> bytes:
    """The content octets of one whole DER element."""
    first = element[1]
    return element[2 + (first & 0x7F if first >= 0x80 else 0) :]


def der_children(data: bytes) -> list[bytes]:
    """The elements, back to back, that data (DER content octets) is made of."""
    found: list[bytes] = []
    offset = 0
    while offset < len(data):
        end = der_element_end(data, offset)
        found.append(data[offset:end])
        offset = end
    return found
