"""Publishing CRLs to cas/NAME/crl.der, and the [revocation] policy; time is a fake clock."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ztpki.casystem.crl_publisher import CRLPublisher, CRLTarget, publish_if_due, read_crl
from ztpki.casystem.policy import IssuingPolicy
from ztpki.errors import ConfigurationError
from ztpki.pki.authority import CertificateAuthority, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.store import (
    CertificateStatus,
    IssuedCertificate,
    RevocationReason,
    SQLiteIssuanceStore,
    open_sqlite_ca_store,
)

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject("customer", SubjectFields(), serial_number=None)
    cert = create_self_signed_ca(key, subject, now=T0, validity=timedelta(days=365))
    return CertificateAuthority(name="customer", key=key, certificate=cert)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteIssuanceStore:
    return open_sqlite_ca_store(tmp_path / "store.sqlite", durable=False)


def target(authority: CertificateAuthority, tmp_path: Path, hours: int = 24) -> CRLTarget:
    return CRLTarget(authority, IssuingPolicy(crl_next_update_hours=hours), tmp_path)


def issue(store: SQLiteIssuanceStore, serial: str) -> None:
    store.record_issuance(
        IssuedCertificate(
            serial=serial,
            ca_name="customer",
            device_id=f"dev-{serial}",
            subject=f"CN=dev-{serial}",
            not_before=T0,
            not_after=T0 + timedelta(days=30),
            status=CertificateStatus.ACTIVE,
            request_id=f"r-{serial}",
            fingerprint="ab" * 32,
            issued_at=T0,
            certificate_der=b"\x30\x00" + serial.encode(),
        ),
        supersede=False,
    )


def number(crl: x509.CertificateRevocationList | None) -> int:
    assert crl is not None
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_ok_publisher_timeline(
    authority: CertificateAuthority, store: SQLiteIssuanceStore, tmp_path: Path
) -> None:
    clock = Clock()
    publisher = CRLPublisher({"customer": target(authority, tmp_path)}, store, clock=clock)
    path = tmp_path / "crl.der"
    # Start-up: no CRL yet -> one is signed; the next is due an hour before nextUpdate.
    assert publisher.publish_due() == T0 + timedelta(hours=23)
    assert number(read_crl(path)) == 1
    # Nothing changed, not due: the file stays as it is.
    clock.now = T0 + timedelta(hours=2)
    publisher.publish_due()
    assert number(read_crl(path)) == 1
    # A revocation recorded behind the publisher's back (a service killed before its CRL):
    issue(store, "0a")
    store.revoke("customer", "0a", reason=RevocationReason.KEY_COMPROMISE, at=clock.now)
    publisher.publish_due()
    crl = read_crl(path)
    assert number(crl) == 2
    assert crl is not None and crl.get_revoked_certificate_by_serial_number(0x0A) is not None
    # Near nextUpdate: re-signed with the same entries and a new number.
    clock.now = T0 + timedelta(hours=25, minutes=30)
    assert publisher.publish_due() == clock.now + timedelta(hours=23)
    crl = read_crl(path)
    assert number(crl) == 3 and crl is not None and len(crl) == 1
    assert crl.last_update_utc == clock.now.replace(microsecond=0)


def test_ok_refresh_covers_every_change_once(
    authority: CertificateAuthority, store: SQLiteIssuanceStore, tmp_path: Path
) -> None:
    clock = Clock()
    publisher = CRLPublisher({"customer": target(authority, tmp_path)}, store, clock=clock)
    for serial in ("01", "02", "03"):
        issue(store, serial)
        store.revoke("customer", serial, reason=RevocationReason.SUPERSEDED, at=T0)

    async def refresh_all() -> None:
        await asyncio.gather(*(publisher.refresh("customer") for _ in range(3)))
        await publisher.refresh("customer")  # nothing new: no new CRL
        await publisher.refresh("unknown-ca")  # not ours: nothing

    asyncio.run(refresh_all())
    crl = read_crl(tmp_path / "crl.der")
    assert crl is not None and len(crl) == 3
    assert number(crl) == 1  # three callers, one publication


def test_ok_unreadable_crl_is_replaced(
    authority: CertificateAuthority, store: SQLiteIssuanceStore, tmp_path: Path
) -> None:
    (tmp_path / "crl.der").write_bytes(b"not a CRL")
    publish_if_due(target(authority, tmp_path), store, now=T0)
    assert number(read_crl(tmp_path / "crl.der")) == 1


def test_fail_publication_error_is_retried_soon(
    authority: CertificateAuthority, store: SQLiteIssuanceStore, tmp_path: Path
) -> None:
    (tmp_path / "crl.der").mkdir()  # the file cannot be replaced
    clock = Clock()
    publisher = CRLPublisher({"customer": target(authority, tmp_path)}, store, clock=clock)
    assert publisher.publish_due() == T0 + timedelta(seconds=30)
    (tmp_path / "crl.der").rmdir()
    publisher.publish_due()
    assert number(read_crl(tmp_path / "crl.der")) >= 1


def test_ok_policy_revocation_table_round_trip() -> None:
    policy = IssuingPolicy.from_toml(
        {
            "revocation": {
                "crl_url": "http://pki.example:8080/crl/customer.crl",
                "ocsp_url": "http://pki.example:8080/ocsp",
                "crl_next_update_hours": 6,
            }
        }
    )
    assert policy.crl_next_update_hours == 6
    assert IssuingPolicy.from_toml(policy.to_toml()) == policy
    grant = policy.grant("dev-1", SubjectFields(), validity_days=None, now=T0)
    assert grant.crl_url == "http://pki.example:8080/crl/customer.crl"
    assert grant.ocsp_url == "http://pki.example:8080/ocsp"
    default = IssuingPolicy.from_toml({})
    assert (default.crl_url, default.ocsp_url, default.crl_next_update_hours) == (None, None, 24)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"crl_url": "ftp://pki.example/crl"}, "must be an http"),
        ({"ocsp_url": "http:///ocsp"}, "must be an http"),
        ({"crl_url": 'http://pki.example/"x"'}, "must be an http"),
        ({"crl_url": 5}, "must be a string"),
        ({"crl_next_update_hours": 0}, "1 to 744"),
        ({"crl_next_update_hours": "24"}, "whole number"),
    ],
    ids=["fail-ftp", "fail-no-host", "fail-quote", "fail-number", "fail-zero", "fail-text"],
)
def test_fail_bad_revocation_policy(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        IssuingPolicy.from_toml({"revocation": table})


def test_ok_timer_publishes_what_is_due_then_waits(
    authority: CertificateAuthority, store: SQLiteIssuanceStore, tmp_path: Path
) -> None:
    round_done = threading.Event()

    class RoundClock(Clock):
        calls = 0

        def __call__(self) -> datetime:
            # The timer reads the clock once in publish_due and once for its wait.
            self.calls += 1
            if self.calls == 2:
                round_done.set()
            return self.now

    publisher = CRLPublisher({"customer": target(authority, tmp_path)}, store, clock=RoundClock())

    async def first_round() -> None:
        timer = asyncio.create_task(publisher.run())
        try:
            assert await asyncio.to_thread(round_done.wait, 30)
            assert not timer.done()  # it waits for the next due time
        finally:
            timer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await timer

    asyncio.run(first_round())
    assert number(read_crl(tmp_path / "crl.der")) == 1
