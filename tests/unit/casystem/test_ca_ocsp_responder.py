"""The OCSP responder over a real SQLite issuance store, with the clock passed in: status from
the revocation records, the pre-signed cache and what invalidates it, nonces, the delegated
responder's renewal."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp
from tests.support.ocsp import request_der, verify_signed_by

from ztpki.casystem.ocsp_responder import OCSPResponder, SignerPolicy
from ztpki.errors import Unavailable
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key, key_spec_of
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import certificate_der, serial_hex
from ztpki.pki.profiles import CertificateProfile
from ztpki.store.records import (
    CertificateStatus,
    IssuedCertificate,
    Revocation,
    RevocationReason,
)
from ztpki.store.sqlite import open_sqlite_ca_store
from ztpki.store.sqlite_ca import SQLiteIssuanceStore

NOW = datetime.now(UTC).replace(microsecond=0)


def make_ca(name: str, spec: KeySpec = KeySpec.EC_P256) -> CertificateAuthority:
    key = generate_private_key(spec)
    subject = build_subject(name, SubjectFields(), serial_number=None)
    cert = create_self_signed_ca(key, subject, now=NOW, validity=timedelta(days=365))
    return CertificateAuthority(name=name, key=key, certificate=cert)


CA = make_ca("factory")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteIssuanceStore]:
    opened = open_sqlite_ca_store(tmp_path / "store.sqlite", durable=False)
    try:
        yield opened
    finally:
        opened.close()


def device_leaf(ca: CertificateAuthority, device: str) -> x509.Certificate:
    """A 30-day device certificate of ``ca``, recorded nowhere."""
    grant = IssuanceGrant(
        subject=build_subject(device, SubjectFields(), serial_number=None),
        profile=CertificateProfile.DEVICE,
        not_before=NOW,
        not_after=NOW + timedelta(days=30),
    )
    return ca.issue(generate_private_key(KeySpec.EC_P256).public_key(), grant)


def issue(store: SQLiteIssuanceStore, *, record: bool = True) -> x509.Certificate:
    device = f"dev-{os.urandom(4).hex()}"
    leaf = device_leaf(CA, device)
    if record:
        der = certificate_der(leaf)
        store.record_issuance(
            IssuedCertificate(
                serial=serial_hex(leaf), ca_name="factory", device_id=device,
                subject=leaf.subject.rfc4514_string(), not_before=leaf.not_valid_before_utc,
                not_after=leaf.not_valid_after_utc, status=CertificateStatus.ACTIVE,
                request_id=device, fingerprint=hashlib.sha256(der).hexdigest(), issued_at=NOW,
                certificate_der=der,
            ),
            supersede=False,
        )  # fmt: skip
    return leaf


def status_of(body: bytes) -> ocsp.OCSPCertStatus:
    return ocsp.load_der_ocsp_response(body).certificate_status


def test_ok_good_revoked_unknown(store: SQLiteIssuanceStore) -> None:
    responder = OCSPResponder({"factory": CA}, store, now=NOW)
    good, revoked, stray = issue(store), issue(store), issue(store, record=False)
    store.revoke("factory", serial_hex(revoked), reason=RevocationReason.CERTIFICATE_HOLD, at=NOW)
    assert status_of(responder.answer(request_der(good, CA.certificate), now=NOW).body) is (
        ocsp.OCSPCertStatus.GOOD
    )
    answer = ocsp.load_der_ocsp_response(
        responder.answer(request_der(revoked, CA.certificate), now=NOW).body
    )
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason is x509.ReasonFlags.certificate_hold
    assert answer.revocation_time_utc == NOW
    assert status_of(responder.answer(request_der(stray, CA.certificate), now=NOW).body) is (
        ocsp.OCSPCertStatus.UNKNOWN
    )


def test_ok_cache_serves_until_version_moves_then_resigns(store: SQLiteIssuanceStore) -> None:
    responder = OCSPResponder({"factory": CA}, store, now=NOW)
    leaf = issue(store)
    first = responder.answer(request_der(leaf, CA.certificate), now=NOW)
    later = responder.answer(request_der(leaf, CA.certificate), now=NOW + timedelta(hours=1))
    assert later.body == first.body and first.max_age == 24 * 3600
    assert later.max_age == 23 * 3600
    store.revoke("factory", serial_hex(leaf), reason=RevocationReason.KEY_COMPROMISE, at=NOW)
    after = responder.answer(request_der(leaf, CA.certificate), now=NOW + timedelta(hours=1))
    assert status_of(after.body) is ocsp.OCSPCertStatus.REVOKED
    # Negative control: another certificate's answer keeps working after the version moved.
    other = issue(store)
    assert status_of(responder.answer(request_der(other, CA.certificate), now=NOW).body) is (
        ocsp.OCSPCertStatus.GOOD
    )


class CountingSource:
    """The store, counting its revocation-version reads."""

    def __init__(self, store: SQLiteIssuanceStore) -> None:
        self.store = store
        self.version_reads = 0

    def certificate(self, ca_name: str, serial: str) -> IssuedCertificate | None:
        return self.store.certificate(ca_name, serial)

    def revocation(self, ca_name: str, serial: str) -> Revocation | None:
        return self.store.revocation(ca_name, serial)

    def revocation_version(self, ca_name: str) -> int:
        self.version_reads += 1
        return self.store.revocation_version(ca_name)


def test_ok_one_version_read_per_turn_and_a_new_turn_sees_a_revocation(
    store: SQLiteIssuanceStore,
) -> None:
    source = CountingSource(store)
    responder = OCSPResponder({"factory": CA}, source, now=NOW)
    leaf = issue(store)
    der = request_der(leaf, CA.certificate)
    first_turn = object()
    answers = [responder.answer(der, now=NOW, turn=first_turn) for _ in range(3)]
    assert source.version_reads == 1  # the requests of one turn share one read
    assert all(status_of(a.body) is ocsp.OCSPCertStatus.GOOD for a in answers)
    store.revoke("factory", serial_hex(leaf), reason=RevocationReason.KEY_COMPROMISE, at=NOW)
    # The next turn reads again and sees the revocation at once, nonce or not.
    second_turn = object()
    plain = responder.answer(der, now=NOW, turn=second_turn)
    nonced = responder.answer(
        request_der(leaf, CA.certificate, nonce=os.urandom(16)), now=NOW, turn=second_turn
    )
    assert source.version_reads == 2
    assert status_of(plain.body) is status_of(nonced.body) is ocsp.OCSPCertStatus.REVOKED
    # Without a turn every request reads for itself.
    responder.answer(der, now=NOW)
    responder.answer(der, now=NOW)
    assert source.version_reads == 4


def test_ok_cache_refreshed_after_half_its_validity(store: SQLiteIssuanceStore) -> None:
    responder = OCSPResponder(
        {"factory": CA}, store, now=NOW, next_update={"factory": timedelta(hours=4)}
    )
    leaf = issue(store)
    first = responder.answer(request_der(leaf, CA.certificate), now=NOW)
    assert (
        responder.answer(request_der(leaf, CA.certificate), now=NOW + timedelta(hours=1)).body
        == first.body
    )
    fresh = responder.answer(request_der(leaf, CA.certificate), now=NOW + timedelta(hours=2))
    assert fresh.body != first.body
    parsed = ocsp.load_der_ocsp_response(fresh.body)
    assert parsed.this_update_utc == NOW + timedelta(hours=2)
    assert parsed.next_update_utc == NOW + timedelta(hours=6)


def test_ok_sha1_and_sha256_cert_ids_are_answered_each_in_kind(store: SQLiteIssuanceStore) -> None:
    responder = OCSPResponder({"factory": CA}, store, now=NOW)
    leaf = issue(store)
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA1()):
        body = responder.answer(
            request_der(leaf, CA.certificate, algorithm=algorithm), now=NOW
        ).body
        assert ocsp.load_der_ocsp_response(body).hash_algorithm.name == algorithm.name


def test_ok_nonce_answers_are_signed_each_time_and_never_cached(store: SQLiteIssuanceStore) -> None:
    responder = OCSPResponder({"factory": CA}, store, now=NOW)
    leaf = issue(store)
    plain = responder.answer(request_der(leaf, CA.certificate), now=NOW)
    nonces = [os.urandom(16) for _ in range(2)]
    answers = [
        responder.answer(request_der(leaf, CA.certificate, nonce=n), now=NOW) for n in nonces
    ]
    for nonce, answer in zip(nonces, answers, strict=True):
        assert answer.max_age is None
        parsed = ocsp.load_der_ocsp_response(answer.body)
        assert parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    # The plain request still gets the pre-signed answer, without any nonce.
    again = responder.answer(request_der(leaf, CA.certificate), now=NOW)
    assert again.body == plain.body
    assert not list(ocsp.load_der_ocsp_response(again.body).extensions)


def test_fail_malformed_and_foreign_issuer(store: SQLiteIssuanceStore) -> None:
    responder = OCSPResponder({"factory": CA}, store, now=NOW)
    garbage = ocsp.load_der_ocsp_response(responder.answer(b"\x30\x03\x02\x01\x01", now=NOW).body)
    assert garbage.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    stranger = make_ca("factory")
    foreign = device_leaf(stranger, "x")
    body = responder.answer(request_der(foreign, stranger.certificate), now=NOW).body
    assert ocsp.load_der_ocsp_response(body).response_status is (
        ocsp.OCSPResponseStatus.UNAUTHORIZED
    )


def test_ok_delegated_responder_renewed_before_expiry(store: SQLiteIssuanceStore) -> None:
    responder = OCSPResponder({"factory": CA}, store, now=NOW)
    first = responder.signer_of("factory").certificate
    assert responder.renew_if_due(NOW + timedelta(days=4)) == []
    assert responder.signer_of("factory").certificate == first
    assert responder.renew_if_due(NOW + timedelta(days=5, minutes=1)) == ["factory"]
    renewed = responder.signer_of("factory").certificate
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key() != first.public_key()  # a new key, not only a new certificate
    leaf = issue(store)
    later = NOW + timedelta(days=5, minutes=2)
    answer = ocsp.load_der_ocsp_response(
        responder.answer(request_der(leaf, CA.certificate), now=later).body
    )
    assert answer.certificates == [renewed]


@pytest.mark.parametrize("spec", [KeySpec.RSA_2048, KeySpec.EC_P384])
def test_ok_delegated_responder_key_follows_the_ca_key(
    store: SQLiteIssuanceStore, spec: KeySpec
) -> None:
    ca = make_ca("factory", spec)
    responder = OCSPResponder({"factory": ca}, store, now=NOW)
    signer = responder.signer_of("factory")
    assert key_spec_of(signer.key) is spec
    assert key_spec_of(signer.certificate.public_key()) is spec
    assert responder.renew_if_due(NOW + timedelta(days=5, minutes=1)) == ["factory"]
    assert key_spec_of(responder.signer_of("factory").key) is spec
    # A request about a certificate of this CA is answered, signed by that key (an unknown
    # serial is enough: the signature is what is checked).
    stray = device_leaf(ca, "stray")
    later = NOW + timedelta(days=5, minutes=2)
    der = responder.answer(request_der(stray, ca.certificate), now=later).body
    answer = ocsp.load_der_ocsp_response(der)
    assert answer.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    verify_signed_by(answer, responder.signer_of("factory").certificate)


def test_ok_ca_signer_never_renews(store: SQLiteIssuanceStore) -> None:
    responder = OCSPResponder({"factory": CA}, store, now=NOW, signer=SignerPolicy.CA)
    assert responder.signer_of("factory").certificate == CA.certificate
    assert responder.renew_if_due(NOW + timedelta(days=300)) == []


def test_ok_publisher_renews_on_schedule_and_survives_a_failure(
    store: SQLiteIssuanceStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The running publisher checks every hour (a fake sleep here) and renews the delegated
    responder when due; a failed renewal is logged and retried at the next check."""
    import asyncio

    from ztpki.casystem.publisher import RENEW_CHECK_EVERY, RevocationPublisher

    responder = OCSPResponder({"factory": CA}, store, now=NOW)
    first = responder.signer_of("factory").certificate
    times = iter([NOW + timedelta(days=1), NOW + timedelta(days=6), NOW + timedelta(days=6)])
    publisher = RevocationPublisher({}, responder, clock=lambda: next(times))
    real = responder.renew_if_due
    calls: list[datetime] = []

    def flaky(now: datetime) -> list[str]:
        calls.append(now)
        if len(calls) == 2:
            raise OSError("simulated failure")
        return real(now)

    monkeypatch.setattr(responder, "renew_if_due", flaky)
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        if len(delays) == 3:
            raise asyncio.CancelledError
        delays.append(seconds)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(publisher._keep_renewed(sleep=sleep))
    assert delays == [RENEW_CHECK_EVERY] * 3 and len(calls) == 3
    assert "renewing an OCSP responder certificate failed" in caplog.text
    renewed = responder.signer_of("factory").certificate
    assert renewed != first and renewed.not_valid_before_utc > first.not_valid_before_utc


class _FailingStore:
    """The real store, failing its reads the way a busy or broken database does."""

    def __init__(self, store: SQLiteIssuanceStore, failure: Exception) -> None:
        self.store, self.failure = store, failure

    def revocation_version(self, ca_name: str) -> int:
        raise self.failure

    def revocation(self, ca_name: str, serial: str) -> None:
        raise self.failure

    def certificate(self, ca_name: str, serial: str) -> None:
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (Unavailable("the database is busy; retry shortly"), ocsp.OCSPResponseStatus.TRY_LATER),
        (RuntimeError("a bug"), ocsp.OCSPResponseStatus.INTERNAL_ERROR),
    ],
    ids=["busy-try-later", "bug-internal-error"],
)
def test_fail_store_failure_is_an_ocsp_status_not_a_crash(
    store: SQLiteIssuanceStore, failure: Exception, expected: ocsp.OCSPResponseStatus
) -> None:
    leaf = issue(store)
    responder = OCSPResponder({"factory": CA}, _FailingStore(store, failure), now=NOW)
    body = responder.answer(request_der(leaf, CA.certificate), now=NOW).body
    assert ocsp.load_der_ocsp_response(body).response_status is expected
    # Negative control: the same request over the working store is answered.
    working = OCSPResponder({"factory": CA}, store, now=NOW)
    assert status_of(working.answer(request_der(leaf, CA.certificate), now=NOW).body) is (
        ocsp.OCSPCertStatus.GOOD
    )


def test_ok_subordinate_ca_of_the_system_is_good_under_its_root(
    store: SQLiteIssuanceStore,
) -> None:
    """A relying party checking the whole chain asks the root's responder about the
    subordinate CA: the system holds both, so the answer is good, not unknown."""
    sub_key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject("Sub CA", SubjectFields(), serial_number=None),
        profile=CertificateProfile.CA,
        not_before=NOW,
        not_after=NOW + timedelta(days=30),
        path_length=0,
    )
    sub_cert = CA.issue(sub_key.public_key(), grant)
    sub = CertificateAuthority(
        name="sub", key=sub_key, certificate=sub_cert, parents=(CA.certificate,)
    )
    responder = OCSPResponder({"factory": CA, "sub": sub}, store, now=NOW)
    body = responder.answer(request_der(sub_cert, CA.certificate), now=NOW).body
    assert status_of(body) is ocsp.OCSPCertStatus.GOOD
    # Negative control: a CA certificate the root signed but the system does not hold.
    stray = CA.issue(generate_private_key(KeySpec.EC_P256).public_key(), grant)
    body = responder.answer(request_der(stray, CA.certificate), now=NOW).body
    assert status_of(body) is ocsp.OCSPCertStatus.UNKNOWN
