"""Attacks on the request-id idempotency that makes failing over between CA-system instances
safe (issue 16): a request sent again is answered with the certificate recorded for it.

The target is the factory CA system of the deployment (`ztpki ca serve`), over real TLS with
registered CA-clients. What a replay may return is bounded: only to the CA-client that sent
the request, only for the very same request (a reused id for another one is refused), only
while the certificate is live, and the key only encrypted under the requester's one-time
passphrase. Each case checks that nothing was issued.
"""

from __future__ import annotations

import secrets

import pytest
from cryptography import x509
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.attacks.test_attack_entitlement_ca import _ask, _client

from ztpki.protocol.enrollment import (
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentParameters,
    EnrollmentRequest,
    ErrorCode,
)

pytestmark = pytest.mark.timeout(240)
CATEGORY = "failover"


def _record(report: AttackReport, case: str, attack: str, observed: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed=observed,
        verdict="refused",
    )


def _issued_by_line(d: Deployment) -> tuple[EnrollmentRequest, EnrollmentAnswer]:
    """The loading station's client obtains a birth certificate and an encrypted key."""
    request = EnrollmentRequest(
        request_id=f"line-{secrets.token_hex(6)}",
        device_id=f"ACME-{secrets.token_hex(4)}",
        parameters=EnrollmentParameters(encrypt_private_key=secrets.token_urlsafe(24).encode()),
    )
    answer = _ask(d, "cred-line1", request)
    assert isinstance(answer, EnrollmentAnswer)
    return request, answer


def _refusal(d: Deployment, answer: EnrollmentAnswer | EnrollmentError, case: str) -> str:
    assert isinstance(answer, EnrollmentError), "the CA system answered with a certificate"
    text = f"XML error {answer.code.value}: {answer.message}"
    d.transcript.add(f"ca {case}", text)
    return text


def test_fail_other_client_replays_a_request_id(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """Another registered client, entitled to the same CA, sends the line's request (same id,
    same device, same passphrase) hoping to be answered with the line's certificate and key."""
    d = deployment
    request, first = _issued_by_line(d)
    other = _client(d, "--ca", "factory")
    before = d.issued_count("factory")
    answer = _ask(d, f"cred-{other}", request)
    text = _refusal(d, answer, "replay-other-client")
    assert isinstance(answer, EnrollmentError) and answer.code is ErrorCode.NOT_AUTHORIZED, text
    serial = format(x509.load_der_x509_certificate(first.certificate_der).serial_number, "x")
    assert serial not in answer.message, "the refusal names the other client's serial"
    assert d.issued_count("factory") == before, "the CA system issued a certificate"
    # Control: the line itself, sending it again, gets its own certificate back.
    again = _ask(d, "cred-line1", request)
    assert isinstance(again, EnrollmentAnswer) and again.certificate_der == first.certificate_der
    assert again.private_key_der == first.private_key_der
    assert d.issued_count("factory") == before
    _record(
        attack_report,
        "replay-other-client",
        "a second registered CA-client of the factory CA replays the loading station's "
        "request (same id, device and one-time passphrase) to get its certificate and key",
        f"{text}; no certificate, key or serial of the line's; nothing issued; the line "
        "itself is answered again with its own certificate",
    )


def test_fail_reused_request_id_for_another_device(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    request, _ = _issued_by_line(d)
    before = d.issued_count("factory")
    forged = EnrollmentRequest(
        request_id=request.request_id,
        device_id=f"ACME-{secrets.token_hex(4)}",
        parameters=request.parameters,
    )
    answer = _ask(d, "cred-line1", forged)
    text = _refusal(d, answer, "reused-id")
    assert isinstance(answer, EnrollmentError) and answer.code is ErrorCode.MALFORMED, text
    assert "used for another request" in answer.message
    assert d.issued_count("factory") == before, "the CA system issued a certificate"
    _record(
        attack_report,
        "reused-request-id",
        "a client reuses a request id already answered, for another device, hoping to be "
        "answered with the first device's certificate or to have a second one issued",
        f"{text}; nothing issued",
    )


def test_fail_replay_with_another_passphrase(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """Someone who saw the request id but not the one-time passphrase replays it."""
    d = deployment
    request, _ = _issued_by_line(d)
    before = d.issued_count("factory")
    guessed = EnrollmentRequest(
        request_id=request.request_id,
        device_id=request.device_id,
        parameters=EnrollmentParameters(encrypt_private_key=b"guessed-passphrase"),
    )
    answer = _ask(d, "cred-line1", guessed)
    text = _refusal(d, answer, "replay-passphrase")
    assert isinstance(answer, EnrollmentError) and answer.code is ErrorCode.MALFORMED, text
    assert d.issued_count("factory") == before
    _record(
        attack_report,
        "replay-other-passphrase",
        "a request id already answered is sent again with another key passphrase, to get "
        "the kept key encrypted under a passphrase the sender knows",
        f"{text}; no key sent; nothing issued",
    )


def test_fail_replay_after_revocation(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    request, first = _issued_by_line(d)
    serial = format(x509.load_der_x509_certificate(first.certificate_der).serial_number, "x")
    revoked = d.cli(
        "ca", "revoke", "--dir", str(d.factory_dir), "--name", "factory", "--serial", serial,
        "--reason", "keyCompromise", system="factory",
    )  # fmt: skip
    assert revoked.status == 0, revoked.err
    before = d.issued_count("factory")
    answer = _ask(d, "cred-line1", request)
    text = _refusal(d, answer, "replay-revoked")
    assert isinstance(answer, EnrollmentError) and answer.code is ErrorCode.NOT_AUTHORIZED, text
    assert "revoked now" in answer.message
    assert d.issued_count("factory") == before
    _record(
        attack_report,
        "replay-after-revocation",
        "a request answered with a certificate revoked since (key compromise) is sent again, "
        "to be handed the revoked certificate and its key once more",
        f"{text}; nothing sent, nothing issued",
    )
