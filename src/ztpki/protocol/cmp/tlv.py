"""DER tag-length-value framing by hand, for the parts of a PKIMessage the node only splits,
wraps or passes through (no schema, no I/O).

pyasn1 costs tens of microseconds per element; splitting a message into its parts, taking a
CertRequest's bytes as received for its POPO signature, or wrapping a signature and
certificates that are already DER needs none of its schema machinery. Only single-byte tags
(numbers below 31) and definite, minimal lengths: what DER allows for every tag CMP uses.
The framing is ztpki.pki.asn1's; this module answers its errors as CMP's badDataFormat.
"""

from __future__ import annotations

from ztpki.errors import MalformedInput
from ztpki.pki.asn1 import der_children, der_content, der_element_end, der_tlv
from ztpki.protocol.cmp.errors import BadDataFormat

SEQUENCE = 0x30
wrap = der_tlv
content = der_content


def elements(data: bytes, *, what: str) -> list[tuple[int, bytes]]:
    """The (tag, whole element) pairs data is made of, back to back, in strict DER framing."""
    try:
        return [(element[0], element) for element in der_children(data)]
    except MalformedInput as exc:
        raise BadDataFormat(f"{what}: {exc.message}") from None


def element_end(data: bytes, offset: int, *, what: str) -> int:
    """Where the element starting at offset ends, in strict DER framing."""
    try:
        return der_element_end(data, offset)
    except MalformedInput as exc:
        raise BadDataFormat(f"{what}: {exc.message}") from None


def single(data: bytes, tag: int, *, what: str) -> bytes:
    """The content of data, which must be exactly one element with tag."""
    found = elements(data, what=what)
    if len(found) != 1 or found[0][0] != tag:
        raise BadDataFormat(f"{what} is not one DER element of the expected type")
    return content(found[0][1])
