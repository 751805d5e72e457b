"""Contract for IssuanceStore's revocations: records, holds, versions and CRL numbers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from store_backends import T0, Backend, make_certificate
from tests.support.legacy_ca_store import downgrade_ca_store_to_v2

from ztpki.errors import UnknownCertificate
from ztpki.store import (
    CertificateStatus,
    IssuanceStore,
    Revocation,
    RevocationReason,
    open_sqlite_ca_store,
)
from ztpki.store.sqlite_ca import SCHEMA_VERSION

HOLD = RevocationReason.CERTIFICATE_HOLD
KEY_COMPROMISE = RevocationReason.KEY_COMPROMISE
T1 = T0 + timedelta(hours=1)
T2 = T0 + timedelta(hours=2)


def _issued(ca_store: IssuanceStore, *serials: str) -> None:
    for n, serial in enumerate(serials):
        ca_store.record_issuance(make_certificate(serial, f"dev-{n}"), supersede=False)


def test_ok_revoke_records_and_lists(ca_store: IssuanceStore) -> None:
    _issued(ca_store, "0a", "0b")
    record = ca_store.revoke("customer", "0a", reason=KEY_COMPROMISE, at=T1, invalidity_date=T0)
    assert record == Revocation("customer", "0a", T1, KEY_COMPROMISE, T0)
    assert ca_store.revocation("customer", "0a") == record
    assert ca_store.revocation("customer", "0b") is None
    assert ca_store.revocations("customer") == [record]
    assert ca_store.revocations("other") == []
    certificate = ca_store.certificate("customer", "0a")
    assert certificate is not None
    assert certificate.status is CertificateStatus.REVOKED
    # Revoked for good: the device holds no live certificate at this CA any more.
    assert ca_store.active_certificate("customer", "dev-0") is None


def test_ok_revoke_is_idempotent(ca_store: IssuanceStore) -> None:
    _issued(ca_store, "0a")
    first = ca_store.revoke("customer", "0a", reason=KEY_COMPROMISE, at=T1)
    version = ca_store.revocation_version("customer")
    again = ca_store.revoke("customer", "0a", reason=RevocationReason.SUPERSEDED, at=T2)
    assert again == first
    assert ca_store.revocations("customer") == [first]
    assert ca_store.revocation_version("customer") == version  # nothing changed


def test_fail_unknown_serial_changes_nothing(ca_store: IssuanceStore) -> None:
    _issued(ca_store, "0a")
    with pytest.raises(UnknownCertificate, match="0b"):
        ca_store.revoke("customer", "0b", reason=KEY_COMPROMISE, at=T1)
    with pytest.raises(UnknownCertificate):
        ca_store.revoke("other", "0a", reason=KEY_COMPROMISE, at=T1)
    assert ca_store.revocations("customer") == []
    assert ca_store.revocation_version("customer") == 0
    assert ca_store.revocation_changed_at("customer") is None


def test_ok_hold_keeps_the_certificate_live_until_revoked_for_good(
    ca_store: IssuanceStore,
) -> None:
    _issued(ca_store, "0a")
    held = ca_store.revoke("customer", "0a", reason=HOLD, at=T1)
    assert held.on_hold
    live = ca_store.active_certificate("customer", "dev-0")
    assert live is not None and live.serial == "0a"
    # Holding again is idempotent; a revocation for good replaces the hold.
    assert ca_store.revoke("customer", "0a", reason=HOLD, at=T2) == held
    final = ca_store.revoke("customer", "0a", reason=KEY_COMPROMISE, at=T2)
    assert final == Revocation("customer", "0a", T2, KEY_COMPROMISE)
    assert ca_store.revocations("customer") == [final]
    assert ca_store.active_certificate("customer", "dev-0") is None
    # ... and for good means for good: neither a hold nor a release undoes it.
    assert ca_store.revoke("customer", "0a", reason=HOLD, at=T2) == final
    assert ca_store.release_hold("customer", "0a", at=T2) is False
    assert ca_store.revocations("customer") == [final]


def test_ok_release_hold(ca_store: IssuanceStore) -> None:
    _issued(ca_store, "0a")
    assert ca_store.release_hold("customer", "0a", at=T1) is False  # not on hold
    assert ca_store.revocation_version("customer") == 0
    ca_store.revoke("customer", "0a", reason=HOLD, at=T1)
    assert ca_store.release_hold("customer", "0a", at=T2) is True
    assert ca_store.revocation("customer", "0a") is None
    assert ca_store.revocations("customer") == []
    assert ca_store.revocation_version("customer") == 2
    assert ca_store.revocation_changed_at("customer") == T2
    assert ca_store.release_hold("customer", "0a", at=T2) is False
    certificate = ca_store.certificate("customer", "0a")
    assert certificate is not None and certificate.status is CertificateStatus.ACTIVE


def test_ok_a_superseded_certificate_is_revoked(ca_store: IssuanceStore) -> None:
    _issued(ca_store, "01")
    ca_store.record_issuance(make_certificate("02", "dev-0"), supersede=True)
    ca_store.revoke("customer", "01", reason=RevocationReason.SUPERSEDED, at=T1)
    live = ca_store.active_certificate("customer", "dev-0")
    assert live is not None and live.serial == "02"  # the new one is untouched
    assert [r.serial for r in ca_store.revocations("customer")] == ["01"]


def test_ok_version_grows_with_every_change_per_ca(ca_store: IssuanceStore) -> None:
    _issued(ca_store, "01", "02")
    ca_store.record_issuance(make_certificate("01", ca_name="other"), supersede=False)
    assert ca_store.revocation_version("customer") == 0
    ca_store.revoke("customer", "01", reason=HOLD, at=T1)
    ca_store.revoke("customer", "02", reason=KEY_COMPROMISE, at=T1)
    ca_store.revoke("customer", "01", reason=KEY_COMPROMISE, at=T2)
    assert ca_store.revocation_version("customer") == 3
    assert ca_store.revocation_changed_at("customer") == T2
    assert ca_store.revocation_version("other") == 0


def test_ok_crl_numbers_increase_across_reopening(backend: Backend) -> None:
    store = backend.ca()
    assert [store.next_crl_number("customer") for _ in range(3)] == [1, 2, 3]
    assert store.next_crl_number("other") == 1
    assert backend.ca().next_crl_number("customer") == 4


def test_ok_revocations_survive_reopening(backend: Backend) -> None:
    store = backend.ca()
    _issued(store, "0a")
    record = store.revoke("customer", "0a", reason=KEY_COMPROMISE, at=T1, invalidity_date=T0)
    reopened = backend.ca()
    assert reopened.revocations("customer") == [record]
    assert reopened.revocation_version("customer") == 1


def test_ok_certificate_by_serial(ca_store: IssuanceStore) -> None:
    _issued(ca_store, "0a")
    assert ca_store.certificate("customer", "0a") == make_certificate("0a", "dev-0")
    assert ca_store.certificate("customer", "0b") is None
    assert ca_store.certificate("other", "0a") is None


def test_ok_schema_2_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "ca.db"
    with open_sqlite_ca_store(path) as store:
        _issued(store, "0a")
    downgrade_ca_store_to_v2(path)
    with open_sqlite_ca_store(path) as store:
        assert store.revocations("customer") == []
        assert store.next_crl_number("customer") == 1
        store.revoke("customer", "0a", reason=KEY_COMPROMISE, at=T1)
        assert [r.serial for r in store.revocations("customer")] == ["0a"]
    assert SCHEMA_VERSION == 4
