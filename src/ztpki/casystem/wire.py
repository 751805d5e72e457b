"""The one table between ztpki errors and the XML protocol's error codes, both directions."""

from __future__ import annotations

from ztpki.errors import (
    MalformedInput,
    NotAuthorized,
    PayloadTooLarge,
    Unavailable,
    UnknownCA,
    UnknownCertificate,
    UnsupportedParameter,
    ZtpkiError,
)
from ztpki.protocol.enrollment import EnrollmentError, ErrorCode
from ztpki.store.records import AlreadyIssued


class LiveCertificateExists(NotAuthorized):
    """The CA system refused: the device already holds a live certificate (`already-issued`)."""


_TO_CODE: tuple[tuple[type[ZtpkiError], ErrorCode], ...] = (
    (AlreadyIssued, ErrorCode.ALREADY_ISSUED),
    (MalformedInput, ErrorCode.MALFORMED),
    (PayloadTooLarge, ErrorCode.MALFORMED),
    (UnsupportedParameter, ErrorCode.UNSUPPORTED_PARAMETER),
    (UnknownCA, ErrorCode.UNKNOWN_CA),
    (UnknownCertificate, ErrorCode.UNKNOWN_CERTIFICATE),
    (NotAuthorized, ErrorCode.NOT_AUTHORIZED),
    (Unavailable, ErrorCode.UNAVAILABLE),
)

_FROM_CODE: dict[ErrorCode, type[ZtpkiError]] = {
    ErrorCode.MALFORMED: MalformedInput,
    ErrorCode.UNSUPPORTED_PARAMETER: UnsupportedParameter,
    ErrorCode.UNKNOWN_CA: UnknownCA,
    ErrorCode.NOT_AUTHORIZED: NotAuthorized,
    ErrorCode.ALREADY_ISSUED: LiveCertificateExists,
    ErrorCode.UNKNOWN_CERTIFICATE: UnknownCertificate,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.INTERNAL: ZtpkiError,
}


def error_code(exc: ZtpkiError) -> ErrorCode:
    for cls, code in _TO_CODE:
        if isinstance(exc, cls):
            return code
    return ErrorCode.INTERNAL


def error_answer(request_id: str | None, exc: ZtpkiError) -> EnrollmentError:
    code = error_code(exc)
    message = (
        exc.message
        if code is not ErrorCode.INTERNAL
        else "internal error in the CA system; see its log"
    )
    return EnrollmentError(request_id=request_id or "unknown", code=code, message=message[:1000])


def raise_for(error: EnrollmentError) -> ZtpkiError:
    """The ztpki exception a CA-client raises for an error answer."""
    cls = _FROM_CODE.get(error.code, ZtpkiError)
    return cls(f"CA system refused request {error.request_id}: {error.message}")
