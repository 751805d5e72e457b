"""PKIMessage bytes <-> ztpki.protocol.cmp.messages.PKIMessage (DER only, no I/O, no clock).

Cost (pyasn1 0.6.5, 2-core build machine shared by other sessions; openssl's own ir with an
EC P-256 key and one certificate in extraCerts): the node's decode_message(ir), checks and
signed ip together 1.0 ms CPU, certConf and its pkiconf 0.5 ms (before the header and the
framing were done by hand: 3.2 and 2.2 ms). Certificates are never parsed here (opaque DER
for `cryptography`); decoding them field by field would cost several ms more each.
"""

from __future__ import annotations

from ztpki.protocol.cmp import asn1, tlv
from ztpki.protocol.cmp.bodies import body_der, decode_body
from ztpki.protocol.cmp.errors import BadDataFormat
from ztpki.protocol.cmp.fields import decode_exact, sequence_der
from ztpki.protocol.cmp.header import (
    CONFIRM_WAIT_TIME,
    IMPLICIT_CONFIRM,
    decode_header,
    header_der,
)
from ztpki.protocol.cmp.messages import Body, Header, PKIMessage

__all__ = [
    "CONFIRM_WAIT_TIME",
    "IMPLICIT_CONFIRM",
    "assemble",
    "decode_message",
    "encode_message",
    "header_der",
    "protected_part",
]

# A whole message is split into its top-level elements without decoding them, so the
# ProtectedPart is the exact bytes the sender signed (header and body as they came).
_BIT_STRING = 0x03
_TAILS = {b"\xa0": "protection", b"\xa1": "extraCerts"}


def protected_part(header: Header, body: Body) -> bytes:
    """The DER of ProtectedPart (RFC 4210 section 5.1.3): what the protection signs."""
    return sequence_der(header_der(header), body_der(body))


def encode_message(
    header: Header,
    body: Body,
    *,
    protection: bytes | None = None,
    extra_certs: tuple[bytes, ...] = (),
) -> bytes:
    """The DER of a PKIMessage; the protection (if any) was computed over protected_part()."""
    return assemble(
        header_der(header),
        body_der(body),
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
    try:
        header = decode_header(elements[0])
        body = decode_body(decode_exact(elements[1], asn1.PKIBody(), what="the body"), elements[1])
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
