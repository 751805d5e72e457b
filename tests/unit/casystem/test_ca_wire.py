"""The one table between ztpki errors and the XML protocol's error codes."""

from __future__ import annotations

import pytest

from ztpki.casystem.wire import LiveCertificateExists, error_answer, error_code, raise_for
from ztpki.errors import (
    ConfigurationError,
    MalformedInput,
    NotAuthorized,
    PayloadTooLarge,
    StorageError,
    Unavailable,
    UnknownCA,
    UnsupportedParameter,
    ZtpkiError,
)
from ztpki.protocol.enrollment import EnrollmentError, ErrorCode, decode_answer, encode_answer
from ztpki.store.records import AlreadyIssued

CASES = [
    (MalformedInput("m"), ErrorCode.MALFORMED, MalformedInput),
    (PayloadTooLarge("m"), ErrorCode.MALFORMED, MalformedInput),
    (UnsupportedParameter("m"), ErrorCode.UNSUPPORTED_PARAMETER, UnsupportedParameter),
    (UnknownCA("m"), ErrorCode.UNKNOWN_CA, UnknownCA),
    (NotAuthorized("m"), ErrorCode.NOT_AUTHORIZED, NotAuthorized),
    (
        AlreadyIssued(ca_name="f", device_id="d", serial="1"),
        ErrorCode.ALREADY_ISSUED,
        LiveCertificateExists,
    ),
    (Unavailable("m"), ErrorCode.UNAVAILABLE, Unavailable),
    (StorageError("m"), ErrorCode.INTERNAL, ZtpkiError),
    (ConfigurationError("m"), ErrorCode.INTERNAL, ZtpkiError),
]


@pytest.mark.parametrize(
    ("exc", "code", "raised"), CASES, ids=[f"{type(c[0]).__name__}" for c in CASES]
)
def test_round_trip_over_the_wire(exc: ZtpkiError, code: ErrorCode, raised: type) -> None:
    assert error_code(exc) is code
    answer = error_answer("req-1", exc)
    decoded = decode_answer(encode_answer(answer))
    assert isinstance(decoded, EnrollmentError) and decoded == answer
    again = raise_for(decoded)
    assert type(again) is raised
    if code is ErrorCode.ALREADY_ISSUED:  # still a refusal for callers that catch those
        assert isinstance(again, NotAuthorized)
    assert "req-1" in again.message


def test_internal_details_stay_in_the_log() -> None:
    answer = error_answer("r", StorageError("disk /var/lib/secret-path failed"))
    assert answer.code is ErrorCode.INTERNAL and "secret-path" not in answer.message
    assert "log" in answer.message


def test_unknown_request_id_and_long_message() -> None:
    answer = error_answer(None, MalformedInput("x" * 5000))
    assert answer.request_id == "unknown"
    assert len(answer.message) <= 1024
    decode_answer(encode_answer(answer))  # still a valid message
