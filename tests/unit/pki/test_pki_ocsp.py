"""The OCSP codec without I/O: request parsing (any bytes give a request or a typed error),
issuer matching by SHA-1 and SHA-256 CertIDs, signed answers, the delegated responder."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.ocsp import verify_signed_by

from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.ocsp import (
    MAX_REQUEST_SIZE,
    CertStatus,
    IssuerIndex,
    MalformedOCSPRequest,
    OCSPRequestTooLarge,
    ResponseSigner,
    StatusAnswer,
    build_response,
    issue_responder_certificate,
    parse_request,
)
from ztpki.pki.profiles import CertificateProfile

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def make_ca(name: str, spec: KeySpec = KeySpec.EC_P256) -> CertificateAuthority:
    key = generate_private_key(spec)
    subject = build_subject(name, SubjectFields(organization="Test"), serial_number=None)
    cert = create_self_signed_ca(key, subject, now=NOW, validity=timedelta(days=365))
    return CertificateAuthority(name=name, key=key, certificate=cert)


def make_leaf(ca: CertificateAuthority) -> x509.Certificate:
    grant = IssuanceGrant(
        subject=build_subject("dev-1", SubjectFields(), serial_number=None),
        profile=CertificateProfile.DEVICE,
        not_before=NOW,
        not_after=NOW + timedelta(days=30),
    )
    return ca.issue(generate_private_key(KeySpec.EC_P256).public_key(), grant)


def request_der(
    leaf: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm = hashes.SHA1(),
    *,
    nonce: bytes | None = None,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def factory() -> CertificateAuthority:
    return make_ca("Factory CA")


@pytest.fixture(scope="module")
def customer() -> CertificateAuthority:
    return make_ca("Customer CA", KeySpec.RSA_2048)


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=["sha1", "sha256"])
def test_ok_issuer_found_by_either_hash(
    factory: CertificateAuthority, customer: CertificateAuthority, algorithm: hashes.HashAlgorithm
) -> None:
    index = IssuerIndex({"factory": factory.certificate, "customer": customer.certificate})
    for ca, name in ((factory, "factory"), (customer, "customer")):
        leaf = make_leaf(ca)
        request = parse_request(request_der(leaf, ca.certificate, algorithm))
        assert request.cert_id.hash_name == algorithm.name
        assert request.cert_id.serial_number == leaf.serial_number
        assert index.issuer_of(request.cert_id) == name


def test_fail_foreign_issuer_is_not_found(factory: CertificateAuthority) -> None:
    stranger = make_ca("Factory CA")  # same name, other key: the key hash tells them apart
    index = IssuerIndex({"factory": factory.certificate})
    request = parse_request(request_der(make_leaf(stranger), stranger.certificate))
    assert index.issuer_of(request.cert_id) is None


def test_ok_nonce_is_read(factory: CertificateAuthority) -> None:
    leaf = make_leaf(factory)
    assert parse_request(request_der(leaf, factory.certificate, nonce=b"n" * 16)).nonce == b"n" * 16
    assert parse_request(request_der(leaf, factory.certificate)).nonce is None


@pytest.mark.parametrize("size", [0, 33], ids=["fail-empty-nonce", "fail-33-octet-nonce"])
def test_fail_nonce_length_outside_rfc8954(factory: CertificateAuthority, size: int) -> None:
    leaf = make_leaf(factory)
    with pytest.raises(MalformedOCSPRequest, match="RFC 8954"):
        parse_request(request_der(leaf, factory.certificate, nonce=b"n" * size))


def test_fail_oversized_request_is_refused_before_parsing() -> None:
    with pytest.raises(OCSPRequestTooLarge, match=str(MAX_REQUEST_SIZE)):
        parse_request(b"\x30" * (MAX_REQUEST_SIZE + 1))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_a_request_or_a_typed_error(data: bytes) -> None:
    try:
        request = parse_request(data)
    except (MalformedOCSPRequest, OCSPRequestTooLarge) as exc:
        assert exc.message  # a sentence, never an empty refusal
        return
    assert request.cert_id.serial_number >= 0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=120), st.integers(min_value=0, max_value=255))
def test_mutated_valid_request_gives_a_request_or_a_typed_error(at: int, byte: int) -> None:
    ca = _SHARED_CA
    der = bytearray(request_der(_SHARED_LEAF, ca.certificate, nonce=b"x" * 16))
    der[at % len(der)] = byte
    with contextlib.suppress(MalformedOCSPRequest):
        parse_request(bytes(der))


_SHARED_CA = make_ca("Mutation CA")
_SHARED_LEAF = make_leaf(_SHARED_CA)


@pytest.mark.parametrize("delegated", [True, False], ids=["delegated", "ca-signed"])
def test_ok_revoked_answer_verifies_and_echoes_nonce(
    factory: CertificateAuthority, delegated: bool
) -> None:
    leaf = make_leaf(factory)
    request = parse_request(
        request_der(leaf, factory.certificate, hashes.SHA256(), nonce=b"q" * 20)
    )
    if delegated:
        key = generate_private_key(KeySpec.EC_P256)
        cert = issue_responder_certificate(factory.certificate, factory.key, key, now=NOW)
        signer = ResponseSigner(factory.certificate, cert, key)
    else:
        signer = ResponseSigner(factory.certificate, factory.certificate, factory.key)
    revoked_at = NOW - timedelta(hours=1)
    answer = StatusAnswer(CertStatus.REVOKED, revoked_at, x509.ReasonFlags.key_compromise)
    der = build_response(
        request, answer, signer, this_update=NOW, next_update=NOW + timedelta(hours=24)
    )
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_time_utc == revoked_at
    assert response.revocation_reason is x509.ReasonFlags.key_compromise
    assert response.serial_number == leaf.serial_number
    assert response.hash_algorithm.name == "sha256"
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"q" * 20
    assert response.certificates == ([signer.certificate] if delegated else [])
    verify_signed_by(response, signer.certificate)


def test_ok_next_update_never_outlives_the_signer(factory: CertificateAuthority) -> None:
    key = generate_private_key(KeySpec.EC_P256)
    cert = issue_responder_certificate(
        factory.certificate, factory.key, key, now=NOW, lifetime=timedelta(hours=2)
    )
    request = parse_request(request_der(make_leaf(factory), factory.certificate))
    der = build_response(
        request,
        StatusAnswer(CertStatus.GOOD),
        ResponseSigner(factory.certificate, cert, key),
        this_update=NOW,
        next_update=NOW + timedelta(hours=24),
    )
    assert ocsp.load_der_ocsp_response(der).next_update_utc == cert.not_valid_after_utc


def test_ok_responder_certificate_profile(factory: CertificateAuthority) -> None:
    key = generate_private_key(KeySpec.EC_P256)
    cert = issue_responder_certificate(factory.certificate, factory.key, key, now=NOW)
    assert cert.issuer == factory.certificate.subject
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - NOW == timedelta(days=7)
    cert.verify_directly_issued_by(factory.certificate)


def test_fail_status_answer_inconsistent() -> None:
    with pytest.raises(ValueError, match="revocation time"):
        StatusAnswer(CertStatus.GOOD, revoked_at=NOW)
    with pytest.raises(ValueError, match="revocation time"):
        StatusAnswer(CertStatus.REVOKED)


@pytest.mark.parametrize(
    "spec", [KeySpec.EC_P256, KeySpec.EC_P384, KeySpec.RSA_2048, KeySpec.ED25519]
)
@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (CertStatus.GOOD, None),
        (CertStatus.UNKNOWN, None),
        (CertStatus.REVOKED, x509.ReasonFlags.unspecified),
        (CertStatus.REVOKED, x509.ReasonFlags.aa_compromise),
    ],
    ids=["good", "unknown", "revoked-unspecified", "revoked-aa-compromise"],
)
def test_ok_every_ca_key_and_status_reads_back_and_verifies(
    spec: KeySpec, status: CertStatus, reason: x509.ReasonFlags | None
) -> None:
    """The hand-written DER, read by cryptography: every field as given, signature valid."""
    ca = make_ca(f"CA {spec.value}", spec)
    leaf = make_leaf(ca)
    nonce = b"z" * 32
    request = parse_request(request_der(leaf, ca.certificate, hashes.SHA256(), nonce=nonce))
    revoked_at = NOW - timedelta(days=1) if status is CertStatus.REVOKED else None
    der = build_response(
        request,
        StatusAnswer(status, revoked_at, reason),
        ResponseSigner(ca.certificate, ca.certificate, ca.key),
        this_update=NOW,
        next_update=NOW + timedelta(hours=24),
    )
    response = ocsp.load_der_ocsp_response(der)
    assert response.certificate_status is _OCSP_STATUS[status]
    assert response.produced_at_utc == response.this_update_utc == NOW
    assert response.next_update_utc == NOW + timedelta(hours=24)
    assert response.serial_number == leaf.serial_number
    assert response.issuer_key_hash == request.cert_id.issuer_key_hash
    assert response.issuer_name_hash == request.cert_id.issuer_name_hash
    assert response.responder_key_hash == (
        x509.SubjectKeyIdentifier.from_public_key(ca.certificate.public_key()).digest
    )
    assert response.certificates == []
    if status is CertStatus.REVOKED:
        assert response.revocation_time_utc == revoked_at
        # RFC 5280 5.3.1: unspecified is left out, never encoded.
        expected = None if reason is x509.ReasonFlags.unspecified else reason
        assert response.revocation_reason is expected
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    verify_signed_by(response, ca.certificate)


_OCSP_STATUS = {
    CertStatus.GOOD: ocsp.OCSPCertStatus.GOOD,
    CertStatus.REVOKED: ocsp.OCSPCertStatus.REVOKED,
    CertStatus.UNKNOWN: ocsp.OCSPCertStatus.UNKNOWN,
}


def test_fail_no_responder_under_an_expired_ca(factory: CertificateAuthority) -> None:
    from ztpki.errors import UnsupportedParameter

    key = generate_private_key(KeySpec.EC_P256)
    later = factory.certificate.not_valid_after_utc + timedelta(days=1)
    with pytest.raises(UnsupportedParameter, match="renew the CA certificate"):
        issue_responder_certificate(factory.certificate, factory.key, key, now=later)
    # Control: a day before the CA expires, the responder is issued, cut to the CA's end.
    almost = factory.certificate.not_valid_after_utc - timedelta(days=1)
    cert = issue_responder_certificate(factory.certificate, factory.key, key, now=almost)
    assert cert.not_valid_after_utc == factory.certificate.not_valid_after_utc
