"""A minimal DER reader and writer: single-byte tags, definite lengths, OBJECT IDENTIFIERs.

Enough for the few structures cryptography has no API for (EST csrattrs, a PKCS#8 shape
check, the PBES2 envelope of keys at rest). Encoding only; no cryptography happens here.
Every reader error is MalformedInput.
"""

from __future__ import annotations

from dataclasses import dataclass

from ztpki.errors import MalformedInput


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def integer(value: int) -> bytes:
    """A non-negative INTEGER (a leading zero octet keeps the sign bit clear)."""
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def oid_body(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    first = [40 * arcs[0] + arcs[1], *arcs[2:]]
    out = bytearray()
    for arc in first:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def oid_text(body: bytes) -> str:
    if not body or body[-1] & 0x80:
        raise MalformedInput("an OBJECT IDENTIFIER is empty or truncated")
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in body:
        if fresh and byte == 0x80:
            raise MalformedInput("an OBJECT IDENTIFIER is not minimal DER")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    head = arcs[0]
    top = min(head // 40, 2)
    return ".".join(str(a) for a in [top, head - 40 * top, *arcs[1:]])


@dataclass(frozen=True)
class Tlv:
    tag: int
    start: int
    end: int


def read_tlv(der: bytes, at: int, *, stop: int | None = None) -> tuple[Tlv, int]:
    """One definite-length DER TLV at ``at`` with a single-byte tag; (tlv, offset after it)."""
    stop = len(der) if stop is None else stop
    if at + 2 > stop:
        raise MalformedInput("DER is truncated")
    tag, first = der[at], der[at + 1]
    if tag & 0x1F == 0x1F:
        raise MalformedInput("DER uses a multi-byte tag, which is not expected here")
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or at + count > stop:
            raise MalformedInput("DER length is indefinite, too large or truncated")
        length = int.from_bytes(der[at : at + count], "big")
        if length < 0x80 or der[at] == 0:
            raise MalformedInput("DER length is not minimally encoded")
        at += count
    if at + length > stop:
        raise MalformedInput("DER is truncated")
    return Tlv(tag, at, at + length), at + length
