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
from collections.abc import Callable
from dataclasses import replace

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


def _replay_refused(
    d: Deployment, cred: str, request: EnrollmentRequest, code: ErrorCode, *, says: str, case: str
) -> str:
    """Send ``request``; expect the typed refusal ``code`` saying ``says`` and nothing issued.
    Returns the observation for the report."""
    before = d.issued_count("factory")
    answer = _ask(d, cred, request)
    assert isinstance(answer, EnrollmentError), "the CA system answered with a certificate"
    text = f"XML error {answer.code.value}: {answer.message}"
    d.transcript.add(f"ca {case}", text)
    assert answer.code is code and says in answer.message, text
    assert d.issued_count("factory") == before, "the CA system issued a certificate"
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
    # Refused as any request for a device another client holds, naming no serial of it.
    text = _replay_refused(
        d,
        f"cred-{other}",
        request,
        ErrorCode.NOT_AUTHORIZED,
        says="taken by another CA-client",
        case="replay-other",
    )
    serial = format(x509.load_der_x509_certificate(first.certificate_der).serial_number, "x")
    assert serial not in text, "the refusal names the other client's serial"
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


@pytest.mark.parametrize(
    ("case", "forged", "attack"),
    [
        pytest.param(
            "reused-request-id",
            lambda r: replace(r, device_id=f"ACME-{secrets.token_hex(4)}"),
            "a client reuses a request id already answered, for another device, hoping to be "
            "answered with the first device's certificate or to have a second one issued",
            id="fail-another-device",
        ),
        pytest.param(
            "replay-other-passphrase",
            lambda r: replace(
                r, parameters=EnrollmentParameters(encrypt_private_key=b"guessed-passphrase")
            ),
            "someone who saw a request id but not its one-time key passphrase sends it again "
            "with a passphrase of their own, to get the kept key encrypted under it",
            id="fail-another-passphrase",
        ),
    ],
)
def test_fail_request_id_reused_for_another_request(
    deployment: Deployment,
    attack_report: AttackReport,
    case: str,
    forged: Callable[[EnrollmentRequest], EnrollmentRequest],
    attack: str,
) -> None:
    request, _ = _issued_by_line(deployment)
    text = _replay_refused(
        deployment,
        "cred-line1",
        forged(request),
        ErrorCode.MALFORMED,
        says="used for another request",
        case=case,
    )
    _record(attack_report, case, attack, f"{text}; no key sent; nothing issued")


def test_fail_replay_after_revocation(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    request, first = _issued_by_line(d)
    serial = format(x509.load_der_x509_certificate(first.certificate_der).serial_number, "x")
    revoked = d.cli(
        "ca", "revoke", "--dir", str(d.factory_dir), "--name", "factory", "--serial", serial,
        "--reason", "keyCompromise", system="factory",
    )  # fmt: skip
    assert revoked.status == 0, revoked.err
    text = _replay_refused(
        d, "cred-line1", request, ErrorCode.NOT_AUTHORIZED, says="revoked now", case="revoked"
    )
    _record(
        attack_report,
        "replay-after-revocation",
        "a request answered with a certificate revoked since (key compromise) is sent again, "
        "to be handed the revoked certificate and its key once more",
        f"{text}; nothing sent, nothing issued",
    )
