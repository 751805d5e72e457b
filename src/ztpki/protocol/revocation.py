"""The XML revocation messages (request, answer) of the enrollment protocol, sans I/O.

They share the enrollment protocol's namespace, schema, framing and error message: a CA system
reads either request from the same connection (``decode_client_message``). Wire names meet
Python names only in the encode/decode functions below. Protocol description:
docs/xml-enrollment.md, "Revocation".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from ztpki.pki.crl import RevocationReason
from ztpki.protocol import enrollment_schema as schema
from ztpki.protocol.enrollment import (
    EnrollmentError,
    EnrollmentRequest,
    _add,
    _boolean,
    _text,
    error_of,
    request_of,
)
from ztpki.protocol.enrollment_fields import check, check_identifier, typed
from ztpki.protocol.enrollment_schema import InvalidEnrollmentMessage, invalid_value

__all__ = [
    "RevocationAnswer",
    "RevocationReason",
    "RevocationRequest",
    "decode_client_message",
    "decode_revocation_answer",
    "decode_revocation_request",
    "encode_revocation_answer",
    "encode_revocation_request",
]

_SERIAL = re.compile(r"[0-9a-f]{1,40}")
_INSTANT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")
_XML_SPACE = " \t\n\r"


def _serial(name: str, value: object) -> str:
    """A serial in the stores' form: lower-case hex without leading zeros."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    text = value.lower()
    check(_SERIAL.fullmatch(text) is not None, name, value)
    return text.lstrip("0") or "0"


def _reason(value: object) -> RevocationReason:
    if isinstance(value, RevocationReason):
        return value
    if not isinstance(value, str):
        raise TypeError(f"reason must be str, not {type(value).__name__}")
    try:
        return RevocationReason(value)
    except ValueError:
        raise invalid_value("Reason", value) from None


def _instant(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidEnrollmentMessage(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class RevocationRequest:
    """A CA-client asks the CA system to revoke one certificate it obtained.

    Exactly one of ``serial`` (hex; stored lower-case without leading zeros) and
    ``device_id`` (that device's live certificate of the CA). ``ca`` None: the system's
    default CA. ``release_hold``: lift a certificateHold instead (``reason`` is then not
    used). ``invalidity_date``: since when the key is not to be trusted (RFC 5280 5.3.2).
    """

    request_id: str
    ca: str | None
    serial: str | None
    device_id: str | None
    reason: RevocationReason
    invalidity_date: datetime | None = None
    release_hold: bool = False

    def __post_init__(self) -> None:
        check_identifier("id", self.request_id)
        if self.ca is not None:
            check_identifier("CA", self.ca)
        if (self.serial is None) == (self.device_id is None):
            raise InvalidEnrollmentMessage(
                "a revocation request names exactly one of Serial and DeviceId"
            )
        if self.serial is not None:
            object.__setattr__(self, "serial", _serial("Serial", self.serial))
        if self.device_id is not None:
            check_identifier("DeviceId", self.device_id)
        object.__setattr__(self, "reason", _reason(self.reason))
        if self.invalidity_date is not None:
            object.__setattr__(
                self, "invalidity_date", _instant("InvalidityDate", self.invalidity_date)
            )
        typed("release_hold", self.release_hold, bool)


@dataclass(frozen=True)
class RevocationAnswer:
    """The revocation as the CA system recorded it (the first record, when revoked before).

    For a release: ``released`` True when the certificate is off the list (also when it was
    not on it), with ``revoked_at`` the time of the answer and reason certificateHold; False
    when it stays revoked for good (``revoked_at`` and ``reason`` of that revocation).
    """

    request_id: str
    serial: str
    revoked_at: datetime
    reason: RevocationReason
    released: bool = False

    def __post_init__(self) -> None:
        check_identifier("requestId", self.request_id)
        object.__setattr__(self, "serial", _serial("Serial", self.serial))
        object.__setattr__(self, "revoked_at", _instant("RevokedAt", self.revoked_at))
        object.__setattr__(self, "reason", _reason(self.reason))
        typed("released", self.released, bool)


# --- encoding ---------------------------------------------------------------------------


def _instant_text(value: datetime) -> str:
    text = value.astimezone(UTC).replace(tzinfo=None).isoformat("T")
    return text + "Z"


def encode_revocation_request(request: RevocationRequest) -> bytes:
    """The UTF-8 XML document of ``request``, checked against the schema."""
    typed("request", request, RevocationRequest)
    root = schema.new_root("RevocationRequest", id=request.request_id)
    if request.release_hold:
        root.set("releaseHold", "true")
    if request.ca is not None:
        _add(root, "CA", request.ca)
    if request.serial is not None:
        _add(root, "Serial", request.serial)
    else:
        _add(root, "DeviceId", str(request.device_id))
    _add(root, "Reason", request.reason.value)
    if request.invalidity_date is not None:
        _add(root, "InvalidityDate", _instant_text(request.invalidity_date))
    return schema.serialize(root)


def encode_revocation_answer(answer: RevocationAnswer) -> bytes:
    """The UTF-8 XML document of ``answer``, checked against the schema (errors are sent
    with ``enrollment.encode_answer``: one error message for every request)."""
    typed("answer", answer, RevocationAnswer)
    root = schema.new_root("RevocationAnswer", requestId=answer.request_id)
    if answer.released:
        root.set("released", "true")
    _add(root, "Serial", answer.serial)
    _add(root, "RevokedAt", _instant_text(answer.revoked_at))
    _add(root, "Reason", answer.reason.value)
    return schema.serialize(root)


# --- decoding ---------------------------------------------------------------------------


def _read_instant(element: etree._Element) -> datetime:
    text = _text(element).strip(_XML_SPACE)
    if not _INSTANT.fullmatch(text):
        raise invalid_value(schema.local_name(element), text)
    try:
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except ValueError:  # the schema's pattern lets a 31st of February through
        raise invalid_value(schema.local_name(element), text) from None


def _revocation_request_of(root: etree._Element) -> RevocationRequest:
    children = {schema.local_name(child): child for child in root}
    ca = children.get("CA")
    serial = children.get("Serial")
    device_id = children.get("DeviceId")
    invalidity = children.get("InvalidityDate")
    return RevocationRequest(
        request_id=root.get("id", ""),
        ca=None if ca is None else _text(ca),
        serial=None if serial is None else _text(serial).strip(_XML_SPACE),
        device_id=None if device_id is None else _text(device_id),
        reason=_reason(_text(children["Reason"]).strip(_XML_SPACE)),
        invalidity_date=None if invalidity is None else _read_instant(invalidity),
        release_hold=_boolean(root.get("releaseHold"), default=False),
    )


def decode_revocation_request(data: bytes) -> RevocationRequest:
    """The RevocationRequest in ``data``; MalformedInput for anything else."""
    return _revocation_request_of(schema.parse(data, expected=("RevocationRequest",)))


def decode_client_message(data: bytes) -> EnrollmentRequest | RevocationRequest:
    """Either request a CA-client may send, parsed once; MalformedInput for anything else."""
    root = schema.parse(data, expected=("EnrollmentRequest", "RevocationRequest"))
    if schema.local_name(root) == "RevocationRequest":
        return _revocation_request_of(root)
    return request_of(root)


def decode_revocation_answer(data: bytes) -> RevocationAnswer | EnrollmentError:
    """The RevocationAnswer or EnrollmentError in ``data``; MalformedInput for anything else."""
    root = schema.parse(data, expected=("RevocationAnswer", "EnrollmentError"))
    if schema.local_name(root) == "EnrollmentError":
        return error_of(root)
    children = {schema.local_name(child): child for child in root}
    return RevocationAnswer(
        request_id=root.get("requestId", ""),
        serial=_text(children["Serial"]).strip(_XML_SPACE),
        revoked_at=_read_instant(children["RevokedAt"]),
        reason=_reason(_text(children["Reason"]).strip(_XML_SPACE)),
        released=_boolean(root.get("released"), default=False),
    )
