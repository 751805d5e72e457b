"""EST (RFC 7030) message bodies, sans I/O: bytes and header values in, typed objects out.

Both ends use this module: the customer node decodes CSRs and encodes certs-only,
serverkeygen and csrattrs answers; the device does the reverse. Every decoder raises
only ``MalformedInput`` (or its subclass ``UnsupportedMediaType``) and ``PayloadTooLarge``.

Line breaks in the base64 we write: 64 columns, LF for plain bodies (coreutils ``base64 -d``
fails on CR and ``openssl base64 -d`` on lines over 64 characters, so both work unchanged);
CRLF inside ``multipart/mixed``, as MIME requires.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.errors
import email.policy
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import Message

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID
from pyasn1_alt_modules import rfc5958

from ztpki.errors import MalformedInput, PayloadTooLarge
from ztpki.pki.asn1 import decode_der
from ztpki.pki.keys import PrivateKey
from ztpki.pki.names import serial_number_attribute
from ztpki.pki.pem import base64_lines, load_pkcs7_certs, pkcs7_certs_only
from ztpki.protocol.csrattrs import csrattrs_der, oids_of_csrattrs
from ztpki.untrusted import quote

__all__ = [
    "CERTS_ONLY_TYPE",
    "CSRATTRS_TYPE",
    "CSR_TYPE",
    "MAX_BODY",
    "MULTIPART_TYPE",
    "PKCS8_TYPE",
    "ServerKeygenResponse",
    "UnsupportedMediaType",
    "build_csr",
    "check_content_type",
    "csr_device_id",
    "decode_base64_body",
    "decode_certs_only",
    "decode_csr",
    "decode_csrattrs",
    "decode_serverkeygen",
    "encode_certs_only",
    "encode_csr",
    "encode_csrattrs",
    "encode_serverkeygen",
    "spki_sha256",
]

MAX_BODY = 64 * 1024
CSR_TYPE = "application/pkcs10"
CERTS_ONLY_TYPE = "application/pkcs7-mime; smime-type=certs-only"
PKCS8_TYPE = "application/pkcs8"
CSRATTRS_TYPE = "application/csrattrs"
MULTIPART_TYPE = "multipart/mixed"

_MAX_HEADER = 1024
_B64_SHAPE = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_B64_STRAY = re.compile(rb"[^A-Za-z0-9+/=]")
_WHITESPACE = b" \t\r\n"
# What cryptography raises on bytes it cannot parse; InvalidVersion is not a ValueError.
_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)


class UnsupportedMediaType(MalformedInput):
    """The request's Content-Type is missing or not the one the EST operation takes (HTTP 415)."""

    code = "unsupported-media-type"


# --- base64 bodies ------------------------------------------------------------------------


def decode_base64_body(body: bytes, *, limit: int = MAX_BODY) -> bytes:
    """The DER inside a base64 EST body (RFC 7030 section 4, Content-Transfer-Encoding base64).

    Line breaks and spaces anywhere are ignored; anything else outside the alphabet,
    missing or excess padding, and non-canonical final bits are refused.
    """
    if len(body) > limit:
        raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is {limit}")
    compact = body.translate(None, _WHITESPACE)
    if not compact:
        raise MalformedInput("body is empty; expected base64-encoded DER")
    if compact.startswith(b"-----BEGIN"):
        raise MalformedInput("body is PEM; send the base64 DER without the BEGIN/END lines")
    stray = _B64_STRAY.search(compact)
    if stray:
        raise MalformedInput(
            f"body is not base64: byte 0x{compact[stray.start()]:02x} (after removing line "
            f"breaks, offset {stray.start()}) is outside the base64 alphabet"
        )
    if not _B64_SHAPE.fullmatch(compact):
        raise MalformedInput("body is not base64: '=' padding is misplaced or too long")
    if len(compact) % 4:
        raise MalformedInput(
            f"body is not base64: {len(compact)} characters is not a multiple of 4 "
            "(padding missing or extra)"
        )
    try:
        der = base64.b64decode(compact, validate=True)
    except binascii.Error:
        raise MalformedInput("body is not base64: the padding is wrong") from None
    if base64.b64encode(der) != compact:
        raise MalformedInput("body is not canonical base64: the final bits before '=' are set")
    return der


# --- Content-Type -------------------------------------------------------------------------


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def check_content_type(header: str | None, expected: str) -> None:
    """Refuse a Content-Type whose media type is not the expected one (parameters ignored)."""
    want = _media_type(expected)
    if header is None or not header.strip():
        raise UnsupportedMediaType(f"expected Content-Type {want}, got none")
    if _media_type(header) != want:
        raise UnsupportedMediaType(f"expected Content-Type {want}, got {quote(header)}")


# --- PKCS#10 ------------------------------------------------------------------------------


def decode_csr(
    body: bytes,
    *,
    content_type: str | None,
    transfer_encoding: str | None = None,
    limit: int = MAX_BODY,
) -> x509.CertificateSigningRequest:
    """A verified PKCS#10 CSR from a simpleenroll, simplereenroll or serverkeygen request.

    ``transfer_encoding`` is the request's Content-Transfer-Encoding header: absent or
    ``base64`` (RFC 7030) means base64, ``binary`` tolerates clients that post raw DER.
    """
    check_content_type(content_type, CSR_TYPE)
    der = _decode_transfer(body, transfer_encoding, limit=limit)
    try:
        csr = x509.load_der_x509_csr(der)
        valid = csr.is_signature_valid
    except _PARSE_ERRORS:
        raise MalformedInput("body is not a DER PKCS#10 certification request") from None
    if not valid:
        raise MalformedInput("CSR signature does not verify")
    return csr


def _decode_transfer(body: bytes, transfer_encoding: str | None, *, limit: int) -> bytes:
    encoding = (transfer_encoding or "base64").strip().lower()
    if encoding == "base64":
        return decode_base64_body(body, limit=limit)
    if encoding == "binary":
        if len(body) > limit:
            raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is {limit}")
        if not body:
            raise MalformedInput("body is empty; expected DER")
        return body
    shown = quote(transfer_encoding or "", limit=60)
    raise MalformedInput(f"Content-Transfer-Encoding {shown} is not supported; use base64")


def build_csr(private_key: PrivateKey, *, device_id: str) -> x509.CertificateSigningRequest:
    """A CSR naming the device (CN and serialNumber), signed with its new key."""
    if not device_id:
        raise ValueError("device_id must not be empty")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            serial_number_attribute(device_id),
        ]
    )
    algorithm = None if isinstance(private_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(private_key, algorithm)
    )


def encode_csr(csr: x509.CertificateSigningRequest) -> bytes:
    """The base64 request body for a CSR (send with Content-Type application/pkcs10)."""
    return base64_lines(csr.public_bytes(serialization.Encoding.DER))


def csr_device_id(csr: x509.CertificateSigningRequest) -> str | None:
    """The device id a CSR names: subject serialNumber if present, else CN; None if neither."""
    try:
        subject = csr.subject
        for oid, name in ((NameOID.SERIAL_NUMBER, "serialNumber"), (NameOID.COMMON_NAME, "CN")):
            values = {a.value for a in subject.get_attributes_for_oid(oid)}
            if len(values) > 1:
                raise MalformedInput(f"CSR subject names {len(values)} different {name} values")
            for value in values:
                if isinstance(value, str) and value:
                    return value
    except (ValueError, TypeError):
        raise MalformedInput("CSR subject does not decode") from None
    return None


def spki_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """Hex SHA-256 of the SubjectPublicKeyInfo DER: equal for the same public key."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


# --- certs-only PKCS#7 ---------------------------------------------------------------------


def encode_certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """A base64 certs-only PKCS#7 body (cacerts, simpleenroll, simplereenroll answers)."""
    if not certs:
        raise ValueError("a certs-only answer needs at least one certificate")
    return base64_lines(pkcs7_certs_only(certs))


def decode_certs_only(body: bytes, *, limit: int = MAX_BODY) -> list[x509.Certificate]:
    """The certificates in a base64 certs-only PKCS#7 body, in the order they were sent."""
    der = decode_base64_body(body, limit=limit)
    try:
        return load_pkcs7_certs(der)
    except _PARSE_ERRORS:
        raise MalformedInput("body is not a DER PKCS#7 certs-only structure") from None


# --- serverkeygen multipart ----------------------------------------------------------------


@dataclass(frozen=True)
class ServerKeygenResponse:
    """A /serverkeygen answer: the new private key and the certificate issued for it."""

    # Unencrypted PKCS#8: the TLS channel protects it (RFC 7030 section 4.4.2).
    private_key_der: bytes = field(repr=False)
    certificates: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.certificates:
            raise ValueError("a serverkeygen answer needs the issued certificate")


def encode_serverkeygen(
    *, private_key_der: bytes, certificate: x509.Certificate, boundary: str | None = None
) -> tuple[str, bytes]:
    """(Content-Type header value, body) of a multipart/mixed serverkeygen answer.

    Part one is the PKCS#8 key, part two the certs-only PKCS#7 with the issued certificate;
    both base64 with CRLF line ends. The boundary is random unless given (tests).
    """
    if not private_key_der:
        raise ValueError("private_key_der must not be empty")
    if boundary is None:
        boundary = "est-" + secrets.token_hex(16)
    # RFC 2046 also allows "'", but parsers read it as RFC 2231 charset syntax: leave it out.
    if not re.fullmatch(r"[0-9A-Za-z()+_,./:=?-]{1,70}", boundary):
        raise ValueError("boundary must be 1-70 MIME boundary characters without spaces or quotes")
    delimiter = b"--" + boundary.encode("ascii")
    parts = [
        (PKCS8_TYPE, private_key_der),
        (CERTS_ONLY_TYPE, pkcs7_certs_only([certificate])),
    ]
    chunks: list[bytes] = []
    for media_type, der in parts:
        chunks += [
            delimiter + b"\r\n",
            b"Content-Type: " + media_type.encode("ascii") + b"\r\n",
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            base64_lines(der, newline=b"\r\n"),
        ]
    chunks.append(delimiter + b"--\r\n")
    # RFC 2045 tspecials in a parameter value need quotes; the random default has none.
    value = f'"{boundary}"' if re.search(r"[()<>@,;:/?=]", boundary) else boundary
    return f"{MULTIPART_TYPE}; boundary={value}", b"".join(chunks)


_STRUCTURAL_DEFECTS = (
    email.errors.NoBoundaryInMultipartDefect,
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
    email.errors.MissingHeaderBodySeparatorDefect,
    email.errors.FirstHeaderLineIsContinuationDefect,
)


def decode_serverkeygen(
    content_type: str, body: bytes, *, limit: int = MAX_BODY
) -> ServerKeygenResponse:
    """Split and check a multipart/mixed serverkeygen answer (client side)."""
    check_content_type(content_type, MULTIPART_TYPE)
    if len(body) > limit:
        raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is {limit}")
    if len(content_type) > _MAX_HEADER or not content_type.isascii():
        raise MalformedInput("Content-Type header is too long or not ASCII")
    if any(c in content_type for c in "\r\n\0"):
        raise MalformedInput("Content-Type header contains a line break")
    parts = _split_multipart(content_type, body)
    keys = [p for p in parts if p[0] == PKCS8_TYPE]
    certs = [p for p in parts if p[0] == "application/pkcs7-mime"]
    if len(parts) != 2 or len(keys) != 1 or len(certs) != 1:
        found = ", ".join(p[0] for p in parts) or "none"
        raise MalformedInput(
            "serverkeygen answer must hold one application/pkcs8 and one "
            f"application/pkcs7-mime part; found: {found}"
        )
    if certs[0][1] not in ("", "certs-only"):
        raise MalformedInput(
            f"certificate part has smime-type {certs[0][1]!r}; expected certs-only "
            "(encrypted server-generated keys are not supported)"
        )
    key_der = _part_der(keys[0][2], "private key part", limit=limit)
    _check_pkcs8_shape(key_der)
    cert_der = _part_der(certs[0][2], "certificate part", limit=limit)
    try:
        issued = load_pkcs7_certs(cert_der)
    except (*_PARSE_ERRORS, MalformedInput):
        raise MalformedInput("certificate part is not a DER PKCS#7 certs-only structure") from None
    return ServerKeygenResponse(private_key_der=key_der, certificates=tuple(issued))


def _split_multipart(content_type: str, body: bytes) -> list[tuple[str, str, Message]]:
    """(media type, smime-type, part) for each part of the body."""
    head = b"Content-Type: " + content_type.encode("ascii") + b"\r\nMIME-Version: 1.0\r\n\r\n"
    # The stdlib parser is lenient by design and its header parser has raised stray
    # IndexError/AttributeError on hostile input in past releases: at this boundary any
    # failure of the parser means the body is malformed.
    try:
        message = email.message_from_bytes(head + body, policy=email.policy.default)
        if not message.get_boundary():
            raise MalformedInput("multipart/mixed Content-Type has no boundary parameter")
        if not message.is_multipart() or _has_structural_defect(message):
            raise MalformedInput(
                "serverkeygen body is not a complete multipart/mixed body "
                "(boundary missing, misplaced or not closed)"
            )
        parts: list[tuple[str, str, Message]] = []
        for part in message.iter_parts():
            if part.is_multipart() or _has_structural_defect(part):
                raise MalformedInput("serverkeygen part is malformed or nested multipart")
            encoding = str(part.get("Content-Transfer-Encoding", "base64")).strip().lower()
            if encoding != "base64":
                raise MalformedInput(
                    f"serverkeygen part uses Content-Transfer-Encoding {encoding[:40]!r}; "
                    "expected base64"
                )
            smime = str(part.get_param("smime-type", "")).strip().lower()
            parts.append((part.get_content_type(), smime, part))
    except MalformedInput:
        raise
    except Exception:
        raise MalformedInput("serverkeygen body is not a parseable multipart/mixed body") from None
    return parts


def _has_structural_defect(message: Message) -> bool:
    return any(isinstance(d, _STRUCTURAL_DEFECTS) for d in message.defects)


def _part_der(part: Message, what: str, *, limit: int) -> bytes:
    payload = part.get_payload(decode=False)
    if not isinstance(payload, str):
        raise MalformedInput(f"{what} is not a leaf MIME part")
    try:
        raw = payload.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedInput(f"{what} is not base64: it holds non-ASCII bytes") from None
    try:
        return decode_base64_body(raw, limit=limit)
    except MalformedInput as exc:
        raise MalformedInput(f"{what}: {exc.message}") from None


def _check_pkcs8_shape(der: bytes) -> None:
    """A PrivateKeyInfo / OneAsymmetricKey (version 0 or 1), checked structurally only (no key
    loading): enough to catch a truncated or swapped part."""
    try:
        info = decode_der(der, rfc5958.OneAsymmetricKey(), what="private key part")
    except MalformedInput:
        raise MalformedInput("private key part is not a DER PKCS#8 PrivateKeyInfo") from None
    if int(info["version"]) not in (0, 1):
        raise MalformedInput("private key part is not a DER PKCS#8 PrivateKeyInfo")


# --- csrattrs (the DER codec is protocol/csrattrs.py) --------------------------------------


def encode_csrattrs(
    oids: Sequence[x509.ObjectIdentifier] = (),
    *,
    attributes: Sequence[tuple[x509.ObjectIdentifier, Sequence[x509.ObjectIdentifier]]] = (),
) -> bytes:
    """The base64 body of a /csrattrs answer (RFC 7030 section 4.5.2).

    ``oids`` become bare OBJECT IDENTIFIER entries (e.g. ecdsa-with-SHA256: sign the CSR so);
    ``attributes`` become Attribute { type, SET OF OID } entries (e.g. id-ecPublicKey with
    secp256r1: the key type to generate). An empty list is valid; the HTTP adapter may
    answer 204 instead.
    """
    return base64_lines(csrattrs_der(oids, attributes=attributes))


def decode_csrattrs(body: bytes, *, limit: int = MAX_BODY) -> list[str]:
    """Dotted OIDs named by a /csrattrs answer: bare OIDs, and each Attribute's type."""
    return oids_of_csrattrs(decode_base64_body(body, limit=limit))
