"""The relying party's revocation decision (pki.revocation_check): CRLs and OCSP responses."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.revocation_pki import NOW, RevocationCA

from ztpki.errors import MalformedInput
from ztpki.pki.revocation_check import (
    RevocationStatus,
    check_crl,
    check_ocsp_response,
    crl_urls,
    load_crl,
    ocsp_request,
    ocsp_urls,
)

GOOD, REVOKED, UNKNOWN = RevocationStatus.GOOD, RevocationStatus.REVOKED, RevocationStatus.UNKNOWN
CA = RevocationCA.create()
OTHER = RevocationCA.create("other CA")
_, CERT = CA.issue("device")


def test_ok_current_crl_without_the_serial_is_good() -> None:
    verdict = check_crl(CERT, CA.certificate, CA.crl([CERT.serial_number + 1]), now=NOW)
    assert verdict.status is GOOD
    assert verdict.next_update == NOW + timedelta(hours=23)


@pytest.mark.parametrize(
    "reason",
    [x509.ReasonFlags.key_compromise, x509.ReasonFlags.certificate_hold, None],
    ids=["fail-keyCompromise", "fail-certificateHold", "fail-no-reason-unspecified"],
)
def test_fail_listed_serial_is_revoked_with_its_reason(reason: x509.ReasonFlags | None) -> None:
    verdict = check_crl(CERT, CA.certificate, CA.crl([CERT.serial_number], reason=reason), now=NOW)
    assert verdict.status is REVOKED and verdict.revoked
    assert verdict.reason == (reason or x509.ReasonFlags.unspecified).value
    assert verdict.revoked_at == NOW - timedelta(hours=1)


def test_fail_stale_crl_is_unknown_but_still_revokes() -> None:
    stale = CA.crl(
        [CERT.serial_number + 1],
        this_update=NOW - timedelta(days=2),
        next_update=NOW - timedelta(seconds=1),
    )
    verdict = check_crl(CERT, CA.certificate, stale, now=NOW)
    assert verdict.status is UNKNOWN and "stale" in verdict.detail
    # A revocation is not undone by time: a stale CRL that lists it still says revoked.
    listed = CA.crl(
        [CERT.serial_number], this_update=NOW - timedelta(days=2), next_update=NOW - timedelta(1)
    )
    assert check_crl(CERT, CA.certificate, listed, now=NOW).status is REVOKED


@pytest.mark.parametrize(
    "case",
    [
        "fail-this-update-ahead",
        "fail-bad-signature",
        "fail-crl-of-another-ca",
        "fail-certificate-of-another-ca",
        "fail-issuer-may-not-sign-crls",
    ],
)
def test_fail_unusable_crl_is_unknown(case: str) -> None:
    cert, issuer, crl = CERT, CA.certificate, CA.crl()
    if case == "fail-this-update-ahead":
        crl = CA.crl(this_update=NOW + timedelta(hours=1))
    elif case == "fail-bad-signature":
        crl = CA.crl([], signer=ec.generate_private_key(ec.SECP256R1()))  # same name, other key
    elif case == "fail-crl-of-another-ca":
        crl = OTHER.crl()
    elif case == "fail-certificate-of-another-ca":
        cert = OTHER.issue("device")[1]
    else:
        no_sign = RevocationCA.create("no crlSign", crl_sign=False)
        cert, issuer, crl = no_sign.issue("device")[1], no_sign.certificate, no_sign.crl()
    verdict = check_crl(cert, issuer, crl, now=NOW)
    assert verdict.status is UNKNOWN
    assert verdict.detail


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(min_value=1, max_value=2**64), max_size=20), st.booleans())
def test_ok_verdict_is_revoked_exactly_when_listed(serials: set[int], listed: bool) -> None:
    revoked = serials | {CERT.serial_number} if listed else serials - {CERT.serial_number}
    crl = load_crl(CA.crl(revoked).public_bytes(serialization.Encoding.DER))
    verdict = check_crl(CERT, CA.certificate, crl, now=NOW)
    assert verdict.status is (REVOKED if listed else GOOD)


def test_ok_load_crl_takes_der_and_pem() -> None:
    crl = CA.crl([5])
    for encoding in (serialization.Encoding.DER, serialization.Encoding.PEM):
        assert load_crl(crl.public_bytes(encoding)) == crl


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fail_garbage_is_malformed_input(data: bytes) -> None:
    try:
        load_crl(data)
    except MalformedInput as exc:
        assert "CRL" in exc.message


def test_fail_truncated_crl_is_malformed_input() -> None:
    der = CA.crl([5]).public_bytes(serialization.Encoding.DER)
    with pytest.raises(MalformedInput):
        load_crl(der[:-10])


def test_ok_urls_of_http_distribution_points_and_responders_only() -> None:
    _, cert = CA.issue(
        "server",
        crl_urls=["http://ca.example/crl/a.crl", "ldap://ca.example/cn=a", "https://x/a.crl"],
        ocsp_urls=["http://ca.example/ocsp", "https://ca.example/ocsp"],
    )
    assert crl_urls(cert) == ("http://ca.example/crl/a.crl",)
    assert ocsp_urls(cert) == ("http://ca.example/ocsp",)
    assert crl_urls(CERT) == () and ocsp_urls(CERT) == ()


def test_ok_ocsp_request_names_the_certificate() -> None:
    request = ocsp.load_der_ocsp_request(ocsp_request(CERT, CA.certificate))
    assert request.serial_number == CERT.serial_number


@pytest.mark.parametrize(
    "case",
    [
        "ok-good-signed-by-ca",
        "ok-good-signed-by-delegated-responder",
        "fail-revoked",
        "fail-unknown-status",
        "fail-signed-by-stranger",
        "fail-responder-without-ocsp-signing",
        "fail-answers-another-certificate",
        "fail-stale",
        "fail-not-der",
    ],
)
def test_ocsp_response_verdicts(case: str) -> None:
    data: bytes
    expected = UNKNOWN
    if case == "ok-good-signed-by-ca":
        data, expected = CA.ocsp_response(CERT), GOOD
    elif case == "ok-good-signed-by-delegated-responder":
        data, expected = CA.ocsp_response(CERT, responder=CA.ocsp_responder()), GOOD
    elif case == "fail-revoked":
        data, expected = (
            CA.ocsp_response(
                CERT,
                status=ocsp.OCSPCertStatus.REVOKED,
                reason=x509.ReasonFlags.key_compromise,
            ),
            REVOKED,
        )
    elif case == "fail-unknown-status":
        data = CA.ocsp_response(CERT, status=ocsp.OCSPCertStatus.UNKNOWN)
    elif case == "fail-signed-by-stranger":
        data = CA.ocsp_response(CERT, responder=OTHER.ocsp_responder())
    elif case == "fail-responder-without-ocsp-signing":
        data = CA.ocsp_response(CERT, responder=CA.ocsp_responder(eku=False))
    elif case == "fail-answers-another-certificate":
        data = CA.ocsp_response(CA.issue("another")[1])
    elif case == "fail-stale":
        data = CA.ocsp_response(CERT, next_update=NOW - timedelta(seconds=1))
    else:
        data = b"\x30\x03junk"
    verdict = check_ocsp_response(data, CERT, CA.certificate, now=NOW)
    assert verdict.status is expected, verdict.detail
    if expected is REVOKED:
        assert verdict.reason == "keyCompromise"
    if expected is UNKNOWN:
        assert verdict.detail
