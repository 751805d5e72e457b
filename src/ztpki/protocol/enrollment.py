"""The patent's XML enrollment messages (request, answer, error), sans I/O.

Bytes in, frozen dataclasses out, and back. Every message is checked against the published
schema (``enrollment.xsd``) in both directions; decoders raise only ``MalformedInput``, with
a message that names the offending element and never repeats a passphrase or key.
Wire names meet Python names only in the encode/decode functions at the end of this module.
Protocol description, with the rationale for each rule: docs/xml-enrollment.md.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from lxml import etree

from ztpki.pki.keys import KeySpec
from ztpki.protocol import enrollment_schema as schema
from ztpki.protocol.enrollment_fields import (
    CONTROL_RUN,
    COUNTRY,
    DNS_NAME,
    EMAIL,
    IP_TEXT,
    PASSPHRASE,
    TEXT,
    check,
    check_der,
    check_identifier,
    check_optional,
    check_pattern,
    is_ip_address,
    sequence,
    typed,
)
from ztpki.protocol.enrollment_schema import (
    NAMESPACE,
    PROTOCOL_VERSION,
    InvalidEnrollmentMessage,
    invalid_value,
    request_id_of,
)

__all__ = [
    "NAMESPACE",
    "PROTOCOL_VERSION",
    "EnrollmentAnswer",
    "EnrollmentError",
    "EnrollmentParameters",
    "EnrollmentRequest",
    "ErrorCode",
    "InvalidEnrollmentMessage",
    "decode_answer",
    "decode_request",
    "encode_answer",
    "encode_request",
    "request_id_of",
]

MAX_CA_CERTIFICATES: Final = 10
MAX_ALT_NAMES: Final = 16
MAX_VALIDITY_DAYS: Final = 36500
MAX_ERROR_MESSAGE: Final = 1024


class ErrorCode(StrEnum):
    """The ``code`` attribute of an EnrollmentError."""

    MALFORMED = "malformed"
    UNSUPPORTED_PARAMETER = "unsupported-parameter"
    UNKNOWN_CA = "unknown-ca"
    NOT_AUTHORIZED = "not-authorized"
    ALREADY_ISSUED = "already-issued"
    UNKNOWN_CERTIFICATE = "unknown-certificate"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True)
class EnrollmentParameters:
    """The request's optional parameters; None (or empty) means the CA's policy default.

    ``encrypt_private_key`` is the passphrase for the generated key as UTF-8 bytes (8-256
    characters, no control characters); it is left out of repr and of every error message.
    ``dns_names`` and ``ip_addresses`` (at most 16 each) become subjectAltNames, for CAs
    with the server profile. Lists are accepted and stored as tuples.
    """

    key_algorithm: KeySpec | None = None
    validity_days: int | None = None
    organization: str | None = None
    organizational_unit: str | None = None
    locality: str | None = None
    country: str | None = None
    email: str | None = None
    encrypt_private_key: bytes | None = field(default=None, repr=False)
    include_ca_certificates: bool = True
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.key_algorithm is not None and not isinstance(self.key_algorithm, KeySpec):
            typed("KeyAlgorithm", self.key_algorithm, str)
            try:
                object.__setattr__(self, "key_algorithm", KeySpec(self.key_algorithm))
            except ValueError:
                raise invalid_value("KeyAlgorithm", self.key_algorithm) from None
        if self.validity_days is not None:
            typed("ValidityDays", self.validity_days, int)
            check(0 < self.validity_days <= MAX_VALIDITY_DAYS, "ValidityDays", self.validity_days)
        check_optional("Organization", self.organization, TEXT, 64)
        check_optional("OrganizationalUnit", self.organizational_unit, TEXT, 64)
        check_optional("Locality", self.locality, TEXT, 64)
        check_optional("Country", self.country, COUNTRY, 2)
        check_optional("Email", self.email, EMAIL, 128)
        if self.encrypt_private_key is not None:
            typed("EncryptPrivateKey", self.encrypt_private_key, bytes)
            check(_passphrase_ok(self.encrypt_private_key), "EncryptPrivateKey", None)
        typed("IncludeCACertificates", self.include_ca_certificates, bool)
        for name in sequence(self, "dns_names", "DnsName", MAX_ALT_NAMES):
            check_pattern("DnsName", name, DNS_NAME, 253)
        for address in sequence(self, "ip_addresses", "IpAddress", MAX_ALT_NAMES):
            check_pattern("IpAddress", address, IP_TEXT, 45)
            check(is_ip_address(str(address)), "IpAddress", address)


def _passphrase_ok(passphrase: bytes) -> bool:
    try:
        text = passphrase.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return PASSPHRASE.fullmatch(text) is not None


@dataclass(frozen=True)
class EnrollmentRequest:
    """A CA-client asks the CA system for a certificate (and a key, unless it sends a CSR)."""

    request_id: str
    device_id: str
    ca: str | None = None
    parameters: EnrollmentParameters = EnrollmentParameters()
    csr_der: bytes | None = None
    reissue: bool = False
    # A SubjectPublicKeyInfo whose possession the CA-client verified (CMP POPO), not a CSR.
    public_key_der: bytes | None = None

    def __post_init__(self) -> None:
        check_identifier("id", self.request_id)
        check_identifier("DeviceId", self.device_id)
        if self.ca is not None:
            check_identifier("CA", self.ca)
        typed("parameters", self.parameters, EnrollmentParameters)
        check_der("CSR", self.csr_der, optional=True)
        typed("reissue", self.reissue, bool)
        check_der("PublicKey", self.public_key_der, optional=True)
        if self.csr_der is not None and self.public_key_der is not None:
            raise InvalidEnrollmentMessage("a request carries a CSR or a PublicKey, not both")


@dataclass(frozen=True)
class EnrollmentAnswer:
    """The CA system's answer: certificate, CA chain (issuing CA first), and the new key
    (PKCS#8 DER, encrypted when the request asked) unless the request carried a CSR."""

    request_id: str
    certificate_der: bytes
    ca_certificates_der: tuple[bytes, ...] = ()
    private_key_der: bytes | None = field(default=None, repr=False)
    private_key_encrypted: bool = False

    def __post_init__(self) -> None:
        check_identifier("requestId", self.request_id)
        check_der("Certificate", self.certificate_der)
        for der in sequence(
            self, "ca_certificates_der", "CACertificates/Certificate", MAX_CA_CERTIFICATES
        ):
            check_der("Certificate", der)
        check_der("PrivateKey", self.private_key_der, optional=True)
        typed("encrypted", self.private_key_encrypted, bool)
        if self.private_key_encrypted and self.private_key_der is None:
            raise InvalidEnrollmentMessage("private_key_encrypted is true but there is no key")


@dataclass(frozen=True)
class EnrollmentError:
    """A typed refusal. The message is made wire-safe when built: control characters
    become spaces and text beyond 1024 characters is cut, so an error can always be sent."""

    request_id: str
    code: ErrorCode
    message: str

    def __post_init__(self) -> None:
        check_identifier("requestId", self.request_id)
        if not isinstance(self.code, ErrorCode):
            typed("code", self.code, str)
            try:
                object.__setattr__(self, "code", ErrorCode(self.code))
            except ValueError:
                raise invalid_value("code", self.code) from None
        typed("message", self.message, str)
        message = CONTROL_RUN.sub(" ", self.message)
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[: MAX_ERROR_MESSAGE - 1] + "\u2026"
        check(bool(message), "EnrollmentError", message)
        object.__setattr__(self, "message", message)


# --- encoding ---------------------------------------------------------------------------

_BOOL_TEXT = {True: "true", False: "false"}


def _b64(der: bytes) -> str:
    return binascii.b2a_base64(der, newline=False).decode("ascii")


def _add(parent: etree._Element, name: str, text: str) -> etree._Element:
    child = etree.SubElement(parent, schema.qualified(name))
    child.text = text
    return child


def _build_parameters(parent: etree._Element, params: EnrollmentParameters) -> None:
    element = etree.SubElement(parent, schema.qualified("Parameters"))
    texts = (
        ("KeyAlgorithm", params.key_algorithm and params.key_algorithm.value),
        ("ValidityDays", None if params.validity_days is None else str(params.validity_days)),
        ("Organization", params.organization),
        ("OrganizationalUnit", params.organizational_unit),
        ("Locality", params.locality),
        ("Country", params.country),
        ("Email", params.email),
        ("EncryptPrivateKey", _passphrase_text(params.encrypt_private_key)),
        ("IncludeCACertificates", None if params.include_ca_certificates else "false"),
    )
    for name, text in texts:
        if text is not None:
            _add(element, name, text)
    for dns_name in params.dns_names:
        _add(element, "DnsName", dns_name)
    for address in params.ip_addresses:
        _add(element, "IpAddress", address)


_NO_PARAMETERS = EnrollmentParameters()


def _passphrase_text(passphrase: bytes | None) -> str | None:
    return None if passphrase is None else passphrase.decode("utf-8")


def encode_request(request: EnrollmentRequest) -> bytes:
    """The UTF-8 XML document of ``request``, checked against the schema."""
    typed("request", request, EnrollmentRequest)
    root = schema.new_root("EnrollmentRequest", id=request.request_id)
    if request.reissue:
        root.set("reissue", "true")
    _add(root, "DeviceId", request.device_id)
    if request.ca is not None:
        _add(root, "CA", request.ca)
    if request.parameters != _NO_PARAMETERS:
        _build_parameters(root, request.parameters)
    if request.csr_der is not None:
        _add(root, "CSR", _b64(request.csr_der))
    if request.public_key_der is not None:
        _add(root, "PublicKey", _b64(request.public_key_der))
    return schema.serialize(root)


def encode_answer(answer: EnrollmentAnswer | EnrollmentError, *, validate: bool = True) -> bytes:
    """The UTF-8 XML document of an answer or an error, checked against the schema.

    ``validate=False`` skips the schema check of an EnrollmentAnswer (never of an error):
    its constructor already checked every value the schema constrains, so a service that
    built the answer itself need not pay for the check again. Decoders always validate.
    """
    if isinstance(answer, EnrollmentError):
        root = schema.new_root(
            "EnrollmentError", requestId=answer.request_id, code=answer.code.value
        )
        root.text = answer.message
        return schema.serialize(root)
    typed("answer", answer, EnrollmentAnswer)
    if not validate:
        return _answer_document(answer)
    root = schema.new_root("EnrollmentAnswer", requestId=answer.request_id)
    if answer.private_key_der is not None:
        key = _add(root, "PrivateKey", _b64(answer.private_key_der))
        key.set("encrypted", _BOOL_TEXT[answer.private_key_encrypted])
    _add(root, "Certificate", _b64(answer.certificate_der))
    if answer.ca_certificates_der:
        chain = etree.SubElement(root, schema.qualified("CACertificates"))
        for der in answer.ca_certificates_der:
            _add(chain, "Certificate", _b64(der))
    return schema.serialize(root, validate=validate)


def _answer_document(answer: EnrollmentAnswer) -> bytes:
    # The same bytes lxml writes for the tree above (a property test holds the two
    # together), put together directly: every value is an identifier or base64, which
    # never needs escaping, and building and serialising a tree cost more than the check.
    parts = [
        f"<?xml version='1.0' encoding='UTF-8'?>\n<EnrollmentAnswer "
        f'xmlns="{NAMESPACE}" requestId="{answer.request_id}">'
    ]
    if answer.private_key_der is not None:
        encrypted = _BOOL_TEXT[answer.private_key_encrypted]
        parts.append(
            f'<PrivateKey encrypted="{encrypted}">{_b64(answer.private_key_der)}</PrivateKey>'
        )
    parts.append(f"<Certificate>{_b64(answer.certificate_der)}</Certificate>")
    if answer.ca_certificates_der:
        parts.append("<CACertificates>")
        parts.extend(
            f"<Certificate>{_b64(der)}</Certificate>" for der in answer.ca_certificates_der
        )
        parts.append("</CACertificates>")
    parts.append("</EnrollmentAnswer>")
    return "".join(parts).encode("ascii")


# --- decoding ---------------------------------------------------------------------------

_XML_SPACE = " \t\n\r"
# What cryptography raises for bytes that are not the structure asked for (a version-1
# certificate number flipped to an unknown one is InvalidVersion, not ValueError).
_NOT_DER = (ValueError, UnsupportedAlgorithm, x509.InvalidVersion)
_BOOLEAN = {"true": True, "1": True, "false": False, "0": False}


def _text(element: etree._Element) -> str:
    return element.text or ""


def _boolean(text: str | None, *, default: bool) -> bool:
    return default if text is None else _BOOLEAN[text.strip(_XML_SPACE)]


def _der(element: etree._Element) -> bytes:
    name = schema.local_name(element)
    compact = "".join(_text(element).split())
    try:
        return binascii.a2b_base64(compact, strict_mode=True)
    except ValueError:  # binascii.Error, or non-ASCII text that libxml2 let through
        raise InvalidEnrollmentMessage(f"{name} is not valid base64 (RFC 4648, padded)") from None


def _read_parameters(element: etree._Element) -> EnrollmentParameters:
    values: dict[str, str] = {}
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    for child in element:
        name = schema.local_name(child)
        if name == "DnsName":
            dns_names.append(_text(child))
        elif name == "IpAddress":
            ip_addresses.append(_text(child))
        else:
            values[name] = _text(child)
    key = values.get("KeyAlgorithm")
    days = values.get("ValidityDays")
    passphrase = values.get("EncryptPrivateKey")
    return EnrollmentParameters(
        key_algorithm=None if key is None else KeySpec(key.strip(_XML_SPACE)),
        validity_days=None if days is None else int(days.strip(_XML_SPACE)),
        organization=values.get("Organization"),
        organizational_unit=values.get("OrganizationalUnit"),
        locality=values.get("Locality"),
        country=values.get("Country"),
        email=values.get("Email"),
        encrypt_private_key=None if passphrase is None else passphrase.encode("utf-8"),
        include_ca_certificates=_boolean(values.get("IncludeCACertificates"), default=True),
        dns_names=tuple(dns_names),
        ip_addresses=tuple(ip_addresses),
    )


def decode_request(data: bytes) -> EnrollmentRequest:
    """The EnrollmentRequest in ``data``; MalformedInput for anything else."""
    return request_of(schema.parse(data, expected=("EnrollmentRequest",)))


def request_of(root: etree._Element) -> EnrollmentRequest:
    """The EnrollmentRequest of a schema-valid root element (``schema.parse`` checked it)."""
    children = {schema.local_name(child): child for child in root}
    csr_der = _der(children["CSR"]) if "CSR" in children else None
    if csr_der is not None:
        try:
            x509.load_der_x509_csr(csr_der)
        except _NOT_DER:
            raise InvalidEnrollmentMessage(
                "CSR is not a DER PKCS#10 certification request"
            ) from None
    public_key_der = _der(children["PublicKey"]) if "PublicKey" in children else None
    if public_key_der is not None:
        try:
            serialization.load_der_public_key(public_key_der)
        except _NOT_DER:
            raise InvalidEnrollmentMessage(
                "PublicKey is not a DER SubjectPublicKeyInfo of a supported key"
            ) from None
    ca = children.get("CA")
    parameters = children.get("Parameters")
    return EnrollmentRequest(
        request_id=root.get("id", ""),
        device_id=_text(children["DeviceId"]),
        ca=None if ca is None else _text(ca),
        parameters=_NO_PARAMETERS if parameters is None else _read_parameters(parameters),
        csr_der=csr_der,
        reissue=_boolean(root.get("reissue"), default=False),
        public_key_der=public_key_der,
    )


def _certificate(element: etree._Element, where: str) -> bytes:
    der = _der(element)
    try:
        x509.load_der_x509_certificate(der)
    except _NOT_DER:
        raise InvalidEnrollmentMessage(f"{where} is not a DER X.509 certificate") from None
    return der


def decode_answer(data: bytes) -> EnrollmentAnswer | EnrollmentError:
    """The EnrollmentAnswer or EnrollmentError in ``data``; MalformedInput for anything else."""
    root = schema.parse(data, expected=("EnrollmentAnswer", "EnrollmentError"))
    if schema.local_name(root) == "EnrollmentError":
        return error_of(root)
    request_id = root.get("requestId", "")
    children = {schema.local_name(child): child for child in root}
    key = children.get("PrivateKey")
    chain = children.get("CACertificates")
    chain_der = (
        ()
        if chain is None
        else tuple(_certificate(cert, f"CA certificate {n}") for n, cert in enumerate(chain, 1))
    )
    return EnrollmentAnswer(
        request_id=request_id,
        certificate_der=_certificate(children["Certificate"], "Certificate"),
        ca_certificates_der=chain_der,
        private_key_der=None if key is None else _der(key),
        private_key_encrypted=key is not None and _boolean(key.get("encrypted"), default=False),
    )


def error_of(root: etree._Element) -> EnrollmentError:
    """The EnrollmentError of a schema-valid root element (the answer to any request)."""
    code = ErrorCode(root.get("code", "").strip(_XML_SPACE))
    return EnrollmentError(request_id=root.get("requestId", ""), code=code, message=_text(root))
