"""The CRL builder and the re-signing decision: pure functions, time passed in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.crl import RevocationReason, build_crl, crl_due, wake_in
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.profiles import CertificateProfile

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
DAY = timedelta(hours=24)


@dataclass(frozen=True)
class Entry:
    serial: str
    revoked_at: datetime
    reason: RevocationReason
    invalidity_date: datetime | None = None


def make_ca(spec: KeySpec = KeySpec.EC_P256) -> CertificateAuthority:
    key = generate_private_key(spec)
    subject = build_subject("crl-ca", SubjectFields(), serial_number=None)
    cert = create_self_signed_ca(key, subject, now=NOW, validity=timedelta(days=365))
    return CertificateAuthority(name="crl-ca", key=key, certificate=cert)


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return make_ca()


def test_ok_crl_carries_number_aki_dates_and_entries(authority: CertificateAuthority) -> None:
    entries = [
        Entry("0a", NOW - DAY, RevocationReason.KEY_COMPROMISE, NOW - 2 * DAY),
        Entry("0b", NOW - DAY, RevocationReason.UNSPECIFIED),
        Entry("0c", NOW, RevocationReason.CERTIFICATE_HOLD),
    ]
    crl = build_crl(authority, entries, number=7, now=NOW, next_update=timedelta(hours=6))
    assert crl.is_signature_valid(authority.certificate.public_key())
    assert crl.issuer == authority.certificate.subject
    assert crl.last_update_utc == NOW
    assert crl.next_update_utc == NOW + timedelta(hours=6)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.value.digest
    first = crl.get_revoked_certificate_by_serial_number(0x0A)
    assert first is not None
    assert first.revocation_date_utc == NOW - DAY
    assert first.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    invalid = first.extensions.get_extension_for_class(x509.InvalidityDate).value
    assert invalid.invalidity_date_utc == NOW - 2 * DAY
    # RFC 5280 5.3.1: unspecified is written as no reasonCode at all.
    second = crl.get_revoked_certificate_by_serial_number(0x0B)
    assert second is not None and len(second.extensions) == 0
    third = crl.get_revoked_certificate_by_serial_number(0x0C)
    assert third is not None
    assert third.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.certificate_hold
    )
    assert crl.get_revoked_certificate_by_serial_number(0x0D) is None
    assert len(crl) == 3


def test_ok_empty_crl_and_default_period(authority: CertificateAuthority) -> None:
    crl = build_crl(authority, [], number=1, now=NOW)
    assert len(crl) == 0
    assert crl.next_update_utc == NOW + DAY
    assert crl.is_signature_valid(authority.certificate.public_key())


@pytest.mark.parametrize("spec", [KeySpec.ED25519, KeySpec.EC_P384])
def test_ok_every_ca_key_signs_crls(spec: KeySpec) -> None:
    ca = make_ca(spec)
    crl = build_crl(ca, [Entry("01", NOW, RevocationReason.SUPERSEDED)], number=1, now=NOW)
    assert crl.is_signature_valid(ca.certificate.public_key())


def test_fail_bad_number_or_period(authority: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="positive"):
        build_crl(authority, [], number=0, now=NOW)
    with pytest.raises(ValueError, match="positive period"):
        build_crl(authority, [], number=1, now=NOW, next_update=timedelta(0))


def test_ok_reasons_are_cryptographys() -> None:
    for reason in RevocationReason:
        assert reason.flag.value == reason.value


@pytest.mark.parametrize(
    ("this_update", "changed_at", "now", "due"),
    [
        (None, None, NOW, True),  # no CRL yet
        (NOW, None, NOW + timedelta(hours=1), False),  # fresh, nothing changed
        (NOW, NOW - timedelta(seconds=1), NOW + timedelta(hours=1), False),  # change is on it
        (NOW, NOW, NOW, True),  # a change in the CRL's own second counts as newer
        (NOW, NOW + timedelta(seconds=5), NOW + timedelta(seconds=5), True),  # newer change
        (NOW, None, NOW + timedelta(hours=22, minutes=59), False),  # before the margin
        (NOW, None, NOW + timedelta(hours=23), True),  # one hour before nextUpdate
        (NOW, None, NOW + 2 * DAY, True),  # expired
    ],
    ids=[
        "ok-missing",
        "no-fresh",
        "no-covered",
        "ok-same-second",
        "ok-newer-change",
        "no-before-margin",
        "ok-margin",
        "ok-expired",
    ],
)
def test_crl_due(
    this_update: datetime | None, changed_at: datetime | None, now: datetime, due: bool
) -> None:
    next_update = None if this_update is None else this_update + DAY
    assert (
        crl_due(
            this_update=this_update,
            next_update=next_update,
            changed_at=changed_at,
            now=now,
            period=DAY,
        )
        is due
    )


def test_ok_short_periods_resign_at_nine_tenths() -> None:
    period = timedelta(hours=1)
    assert not crl_due(
        this_update=NOW, next_update=NOW + period, changed_at=None, now=NOW + 0.89 * period,
        period=period,
    )  # fmt: skip
    assert crl_due(
        this_update=NOW, next_update=NOW + period, changed_at=None, now=NOW + 0.9 * period,
        period=period,
    )  # fmt: skip
    assert wake_in(next_update=NOW + period, now=NOW, period=period) == 0.9 * period
    assert wake_in(next_update=NOW, now=NOW + DAY, period=period) == timedelta(0)


def test_ok_issued_certificate_names_crl_and_ocsp(authority: CertificateAuthority) -> None:
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject("dev-1", SubjectFields(), serial_number="dev-1"),
        profile=CertificateProfile.DEVICE,
        not_before=NOW,
        not_after=NOW + DAY,
        crl_url="http://pki.example:8080/crl/crl-ca.crl",
        ocsp_url="http://pki.example:8080/ocsp",
    )
    cert = authority.issue(key.public_key(), grant)
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert not cdp.critical
    [point] = cdp.value
    assert point.full_name == [x509.UniformResourceIdentifier(grant.crl_url or "")]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    [access] = aia.value
    assert access.access_method == x509.oid.AuthorityInformationAccessOID.OCSP
    assert access.access_location == x509.UniformResourceIdentifier(grant.ocsp_url or "")
    # The negative control: no URLs, no extensions.
    plain = authority.issue(key.public_key(), IssuanceGrant(
        subject=grant.subject, profile=grant.profile, not_before=NOW, not_after=NOW + DAY,
    ))  # fmt: skip
    for kind in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
        with pytest.raises(x509.ExtensionNotFound):
            plain.extensions.get_extension_for_class(kind)
