"""The XML revocation request and answer: round trips, strict values, old messages unchanged."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztpki.errors import MalformedInput
from ztpki.protocol.enrollment import (
    NAMESPACE,
    EnrollmentError,
    EnrollmentRequest,
    ErrorCode,
    InvalidEnrollmentMessage,
    decode_request,
    encode_answer,
    encode_request,
    request_id_of,
)
from ztpki.protocol.revocation import (
    RevocationAnswer,
    RevocationReason,
    RevocationRequest,
    decode_client_message,
    decode_revocation_answer,
    decode_revocation_request,
    encode_revocation_answer,
    encode_revocation_request,
)

PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NS = f'xmlns="{NAMESPACE}"'
T = datetime(2026, 12, 7, 16, 25, 3, tzinfo=UTC)

IDENTIFIERS = st.from_regex(r"[A-Za-z0-9._\-]{1,64}", fullmatch=True)
SERIALS = st.from_regex(r"[1-9a-f][0-9a-f]{0,39}", fullmatch=True)
INSTANTS = st.datetimes(
    min_value=datetime(1950, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)


@st.composite
def requests(draw: st.DrawFn) -> RevocationRequest:
    by_serial = draw(st.booleans())
    return RevocationRequest(
        request_id=draw(IDENTIFIERS),
        ca=draw(st.none() | IDENTIFIERS),
        serial=draw(SERIALS) if by_serial else None,
        device_id=None if by_serial else draw(IDENTIFIERS),
        reason=draw(st.sampled_from(RevocationReason)),
        invalidity_date=draw(st.none() | INSTANTS),
        release_hold=draw(st.booleans()),
    )


ANSWERS = st.builds(
    RevocationAnswer,
    request_id=IDENTIFIERS,
    serial=SERIALS,
    revoked_at=INSTANTS,
    reason=st.sampled_from(RevocationReason),
    released=st.booleans(),
)


@PROPERTY
@given(requests())
def test_ok_request_round_trip(request: RevocationRequest) -> None:
    data = encode_revocation_request(request)
    assert decode_revocation_request(data) == request
    assert decode_client_message(data) == request
    assert encode_revocation_request(decode_revocation_request(data)) == data
    assert request_id_of(data) == request.request_id


@PROPERTY
@given(ANSWERS)
def test_ok_answer_round_trip(answer: RevocationAnswer) -> None:
    data = encode_revocation_answer(answer)
    assert decode_revocation_answer(data) == answer


def test_ok_error_answers_decode_too() -> None:
    error = EnrollmentError("r1", ErrorCode.UNKNOWN_CERTIFICATE, "no such certificate")
    assert decode_revocation_answer(encode_answer(error)) == error


def test_ok_enrollment_requests_still_decode() -> None:
    request = EnrollmentRequest("r1", "dev-1", ca="customer", reissue=True)
    assert decode_client_message(encode_request(request)) == request
    assert decode_request(encode_request(request)) == request


def test_ok_wire_form_and_normalised_values() -> None:
    request = RevocationRequest(
        "r1", "customer", "00AB:CD".replace(":", ""), None, "keyCompromise",  # type: ignore[arg-type]
        invalidity_date=datetime(2026, 12, 7, 17, 25, 3, tzinfo=timezone(timedelta(hours=1))),
    )  # fmt: skip
    assert request.serial == "abcd"
    assert request.reason is RevocationReason.KEY_COMPROMISE
    assert request.invalidity_date == T
    assert (
        encode_revocation_request(request)
        == (
            "<?xml version='1.0' encoding='UTF-8'?>\n"
            f'<RevocationRequest {NS} id="r1"><CA>customer</CA><Serial>abcd</Serial>'
            "<Reason>keyCompromise</Reason><InvalidityDate>2026-12-07T16:25:03Z</InvalidityDate>"
            "</RevocationRequest>"
        ).encode()
    )
    lenient = (
        f'<RevocationRequest {NS} id="r1" releaseHold="1"><DeviceId>dev-1</DeviceId>'
        "<Reason> certificateHold </Reason></RevocationRequest>"
    ).encode()
    decoded = decode_revocation_request(lenient)
    assert decoded.release_hold and decoded.device_id == "dev-1" and decoded.ca is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<Reason>keyCompromise</Reason>", "Serial"),  # neither Serial nor DeviceId
        ("<Serial>0a</Serial><DeviceId>d</DeviceId><Reason>keyCompromise</Reason>", "DeviceId"),
        ("<Serial>0x0a</Serial><Reason>keyCompromise</Reason>", "hexadecimal"),
        ("<Serial>" + "a" * 41 + "</Serial><Reason>keyCompromise</Reason>", "hexadecimal"),
        ("<Serial>0a</Serial><Reason>removeFromCRL</Reason>", "RFC 5280 reason"),
        ("<Serial>0a</Serial>", "Reason"),
        (
            "<Serial>0a</Serial><Reason>unspecified</Reason>"
            "<InvalidityDate>2026-12-07T16:25:03+01:00</InvalidityDate>",
            "UTC instant",
        ),
        (
            "<Serial>0a</Serial><Reason>unspecified</Reason>"
            "<InvalidityDate>2026-02-31T16:25:03Z</InvalidityDate>",
            "InvalidityDate",
        ),
        ("<Serial>0a</Serial><Reason>unspecified</Reason><CSR>AA==</CSR>", "CSR"),
    ],
    ids=[
        "fail-no-target",
        "fail-two-targets",
        "fail-0x",
        "fail-long-serial",
        "fail-remove-from-crl",
        "fail-no-reason",
        "fail-offset",
        "fail-no-such-day",
        "fail-foreign-element",
    ],
)
def test_fail_request(body: str, expected: str) -> None:
    data = f'<RevocationRequest {NS} id="r9">{body}</RevocationRequest>'.encode()
    with pytest.raises(MalformedInput) as caught:
        decode_client_message(data)
    assert expected in caught.value.message
    assert request_id_of(data) == "r9"  # the error answer still names the request


def test_fail_answer_is_not_a_request() -> None:
    answer = encode_revocation_answer(RevocationAnswer("r1", "0a", T, "superseded"))  # type: ignore[arg-type]
    with pytest.raises(MalformedInput, match="RevocationRequest"):
        decode_client_message(answer)
    with pytest.raises(MalformedInput, match="RevocationAnswer"):
        decode_revocation_answer(encode_revocation_request(
            RevocationRequest("r1", None, "0a", None, RevocationReason.SUPERSEDED)
        ))  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"serial": None, "device_id": None}, InvalidEnrollmentMessage),
        ({"serial": "0a", "device_id": "dev-1"}, InvalidEnrollmentMessage),
        ({"serial": "xyz", "device_id": None}, InvalidEnrollmentMessage),
        ({"serial": 10, "device_id": None}, TypeError),
        ({"reason": "removeFromCRL"}, InvalidEnrollmentMessage),
        ({"invalidity_date": datetime(2026, 1, 1)}, InvalidEnrollmentMessage),
        ({"release_hold": 1}, TypeError),
        ({"request_id": "has space"}, InvalidEnrollmentMessage),
    ],
    ids=[
        "fail-none",
        "fail-both",
        "fail-not-hex",
        "fail-int",
        "fail-reason",
        "fail-naive",
        "fail-int-flag",
        "fail-id",
    ],
)
def test_fail_request_values(kwargs: dict[str, object], error: type[Exception]) -> None:
    fields: dict[str, object] = {
        "request_id": "r1", "ca": None, "serial": "0a", "device_id": None,
        "reason": RevocationReason.SUPERSEDED,
    }  # fmt: skip
    with pytest.raises(error):
        RevocationRequest(**{**fields, **kwargs})  # type: ignore[arg-type]


DOC = Path(__file__).resolve().parents[3] / "docs" / "xml-enrollment.md"


def revocation_doc_examples() -> list[bytes]:
    found = re.findall(r"```xml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    return [x.encode() for x in found if "<Revocation" in x or "revoke" in x]


def test_ok_doc_examples_decode() -> None:
    examples = revocation_doc_examples()
    assert len(examples) == 4
    hold, by_serial, answer, refusal = examples
    held = decode_client_message(hold)
    assert isinstance(held, RevocationRequest)
    assert held.device_id == "device-0042" and held.reason is RevocationReason.CERTIFICATE_HOLD
    request = decode_revocation_request(by_serial)
    assert request.serial == "4f0a1b2c3d" and request.invalidity_date is not None
    decoded = decode_revocation_answer(answer)
    assert isinstance(decoded, RevocationAnswer) and decoded.request_id == request.request_id
    error = decode_revocation_answer(refusal)
    assert isinstance(error, EnrollmentError) and error.code is ErrorCode.NOT_AUTHORIZED
