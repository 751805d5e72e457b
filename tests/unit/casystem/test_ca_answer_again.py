"""A request sent again: its digest, and the answer rebuilt from its record (no I/O)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_ca_issuer import EVERY_CA, NOW, csr_der, system  # noqa: F401 (fixture)

from ztpki.casystem.issuer import CASystem, request_digest
from ztpki.errors import MalformedInput, NotAuthorized
from ztpki.pki.keys import KeySpec, decode_pkcs8, generate_private_key, keys_match
from ztpki.protocol.enrollment import EnrollmentParameters, EnrollmentRequest
from ztpki.store.records import AlreadyIssued, AnsweredRequest, CertificateStatus

PASSPHRASE = b"one-time-passphrase-1234"
REQUEST = EnrollmentRequest(
    "r-1", "dev-1", parameters=EnrollmentParameters(encrypt_private_key=PASSPHRASE)
)


def answered(system: CASystem, request: EnrollmentRequest) -> AnsweredRequest:  # noqa: F811
    """What the CA system records for ``request``, as it would answer it the first time."""
    plan = system.plan(request, now=NOW, **EVERY_CA)  # type: ignore[arg-type]
    if plan.csr_public_key is not None:
        key, public = None, plan.csr_public_key
    else:
        key = generate_private_key(plan.key_spec)
        public = key.public_key()
    certificate = system.sign(plan, public)
    first = system.answer(plan, certificate, key)
    kept = first.private_key_der if first.private_key_encrypted else None
    record = system.record_of(plan, certificate, now=NOW, answer_key_der=kept)
    assert record.request_digest is not None
    return AnsweredRequest(record, record.request_digest, record.answer_key_der)


@pytest.mark.parametrize(
    "other",
    [
        replace(REQUEST, device_id="dev-2"),
        replace(REQUEST, reissue=True),
        replace(REQUEST, ca="root"),
        replace(REQUEST, parameters=EnrollmentParameters(encrypt_private_key=b"another-pass-1234")),
        replace(REQUEST, parameters=replace(REQUEST.parameters, validity_days=9)),
    ],
    ids=["fail-device", "fail-reissue", "fail-ca", "fail-passphrase", "fail-validity"],
)
def test_fail_digest_differs_for_another_request(other: EnrollmentRequest) -> None:
    assert request_digest(other) != request_digest(REQUEST)
    assert request_digest(replace(REQUEST, request_id="r-2")) == request_digest(REQUEST)


def test_ok_same_request_gets_the_same_certificate_and_key(system: CASystem) -> None:  # noqa: F811
    recorded = answered(system, REQUEST)
    plan = system.plan(REQUEST, now=NOW, **EVERY_CA)  # type: ignore[arg-type]
    again = system.answer_again(plan, recorded)
    assert again.certificate_der == recorded.certificate.certificate_der
    assert again.private_key_encrypted and again.private_key_der == recorded.answer_key_der
    assert again.private_key_der is not None
    key = decode_pkcs8(again.private_key_der, passphrase=PASSPHRASE)
    from ztpki.pki.pem import load_certificate_der

    assert keys_match(key, load_certificate_der(again.certificate_der).public_key())
    assert again.ca_certificates_der == plan.ca.chain_der


def test_ok_csr_request_again_needs_no_key(system: CASystem) -> None:  # noqa: F811
    request = EnrollmentRequest(
        "r-2", "dev-2", csr_der=csr_der(generate_private_key(KeySpec.EC_P256))
    )
    recorded = answered(system, request)
    plan = system.plan(request, now=NOW, **EVERY_CA)  # type: ignore[arg-type]
    again = system.answer_again(plan, recorded)
    assert again.private_key_der is None
    assert again.certificate_der == recorded.certificate.certificate_der


def test_fail_refusals_of_a_request_sent_again(system: CASystem) -> None:  # noqa: F811
    recorded = answered(system, REQUEST)
    other = replace(REQUEST, device_id="dev-9")
    with pytest.raises(MalformedInput, match="used for another request"):
        system.answer_again(system.plan(other, now=NOW, **EVERY_CA), recorded)  # type: ignore[arg-type]
    plan = system.plan(REQUEST, now=NOW, **EVERY_CA)  # type: ignore[arg-type]
    revoked = replace(
        recorded, certificate=replace(recorded.certificate, status=CertificateStatus.REVOKED)
    )
    with pytest.raises(NotAuthorized, match="revoked now"):
        system.answer_again(plan, revoked)
    # A key no longer kept (sent in the clear, or forgotten): the live certificate stands.
    with pytest.raises(AlreadyIssued):
        system.answer_again(plan, replace(recorded, answer_key_der=None))
