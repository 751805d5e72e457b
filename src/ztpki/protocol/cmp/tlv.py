"""DER tag-length-value framing by hand, for the parts of a PKIMessage the node only splits,
wraps or passes through (no schema, no I/O).

pyasn1 costs tens of microseconds per element; splitting a message into its parts, taking a
CertRequest's bytes as received for its POPO signature, or wrapping a signature and
certificates that are already DER needs none of its schema machinery. Only single-byte tags
(numbers below 31) and definite, minimal lengths: what DER allows for every tag CMP uses.
"""

from __future__ import annotations

from ztpki.protocol.cmp.errors import BadDataFormat

SEQUENCE = 0x30


def wrap(tag: int, content: bytes) -> bytes:
    """One DER element: tag, minimal definite length, content."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def element_end(data: bytes, offset: int, *, what: str) -> int:
    """Where the element starting at offset ends, in strict DER framing."""
    end = len(data)
    if data[offset] & 0x1F == 0x1F:
        raise BadDataFormat(f"{what} has a tag outside the CMP syntax")
    if offset + 1 >= end:
        raise BadDataFormat(f"{what} is truncated DER")
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        # DER: no indefinite length, no leading zero octet, long form only from 128 on.
        if count == 0 or count > 4 or start + count > end or data[start] == 0:
            raise BadDataFormat(f"{what} is not DER (a length is not minimal)")
        size = int.from_bytes(data[start : start + count], "big")
        if size < 0x80:
            raise BadDataFormat(f"{what} is not DER (a length is not minimal)")
        start += count
    if start + size > end:
        raise BadDataFormat(f"{what} is truncated DER")
    return start + size


def elements(data: bytes, *, what: str) -> list[tuple[int, bytes]]:
    """The (tag, whole element) pairs data is made of, back to back, in strict DER framing."""
    found: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        end = element_end(data, offset, what=what)
        found.append((data[offset], data[offset:end]))
        offset = end
    return found


def content(element: bytes) -> bytes:
    """The content octets of one element that elements() returned."""
    first = element[1]
    return element[2 + (first & 0x7F if first >= 0x80 else 0) :]


def single(data: bytes, tag: int, *, what: str) -> bytes:
    """The content of data, which must be exactly one element with tag."""
    found = elements(data, what=what)
    if len(found) != 1 or found[0][0] != tag:
        raise BadDataFormat(f"{what} is not one DER element of the expected type")
    return content(found[0][1])
