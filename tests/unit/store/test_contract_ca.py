"""Contract for IssuanceStore: the CA system's record of issued certificates and CA-clients."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from store_backends import T0, Backend, make_certificate, sha256_hex

from ztpki.errors import ConfigurationError, NotAuthorized, Unavailable, ZtpkiError
from ztpki.store import (
    AlreadyIssued,
    CertificateStatus,
    ClientEntitlement,
    ClientStatus,
    DuplicateClient,
    DuplicateSerial,
    IssuanceStore,
    IssuedCertificate,
    RefusedRequest,
    SupersedeRefused,
)

ACTIVE = CertificateStatus.ACTIVE
SUPERSEDED = CertificateStatus.SUPERSEDED
REVOKED = CertificateStatus.REVOKED


def test_ok_record_and_read_back(ca_store: IssuanceStore) -> None:
    cert = make_certificate("0a1b")
    assert ca_store.record_issuance(cert, supersede=False) == []
    assert ca_store.issued() == [cert]
    assert ca_store.active_certificate("customer", "dev-1") == cert
    assert ca_store.count() == 1
    assert ca_store.issued()[0].certificate_der == cert.certificate_der


def test_fail_lookup_of_nothing(ca_store: IssuanceStore) -> None:
    assert ca_store.active_certificate("customer", "dev-1") is None
    assert ca_store.issued() == []
    assert ca_store.count() == 0


def test_fail_already_issued_without_supersede(ca_store: IssuanceStore) -> None:
    ca_store.record_issuance(make_certificate("01"), supersede=False)
    with pytest.raises(AlreadyIssued) as caught:
        ca_store.record_issuance(make_certificate("02"), supersede=False)
    error = caught.value
    assert isinstance(error, NotAuthorized)
    assert error.serial == "01"
    assert "dev-1" in error.message
    assert "01" in error.message
    assert "reissue" in error.message
    assert [c.serial for c in ca_store.issued()] == ["01"]
    assert ca_store.active_certificate("customer", "dev-1") == make_certificate("01")


def test_ok_supersede_replaces_the_live_certificate(ca_store: IssuanceStore) -> None:
    ca_store.record_issuance(make_certificate("01"), supersede=False)
    later = make_certificate("02", issued_at=T0 + timedelta(minutes=1))
    assert ca_store.record_issuance(later, supersede=True) == ["01"]
    assert ca_store.active_certificate("customer", "dev-1") == later
    assert [(c.serial, c.status) for c in ca_store.issued()] == [("01", SUPERSEDED), ("02", ACTIVE)]


def test_ok_supersede_with_nothing_live(ca_store: IssuanceStore) -> None:
    assert ca_store.record_issuance(make_certificate("01"), supersede=True) == []


def test_ok_one_live_certificate_per_ca_not_per_device(ca_store: IssuanceStore) -> None:
    ca_store.record_issuance(make_certificate("01", ca_name="a"), supersede=False)
    ca_store.record_issuance(make_certificate("01", ca_name="b"), supersede=False)
    ca_store.record_issuance(make_certificate("02", "dev-2", ca_name="a"), supersede=False)
    assert ca_store.count() == 3


def test_fail_duplicate_serial_changes_nothing(ca_store: IssuanceStore) -> None:
    ca_store.record_issuance(make_certificate("01"), supersede=False)
    with pytest.raises(DuplicateSerial) as caught:
        ca_store.record_issuance(make_certificate("01", "dev-2"), supersede=False)
    assert caught.value.code == "conflict"
    with pytest.raises(DuplicateSerial):
        ca_store.record_issuance(make_certificate("01"), supersede=True)
    assert ca_store.issued() == [make_certificate("01")]


@pytest.mark.parametrize("status", [SUPERSEDED, REVOKED], ids=["fail-superseded", "fail-revoked"])
def test_fail_record_must_be_active(ca_store: IssuanceStore, status: CertificateStatus) -> None:
    with pytest.raises(ValueError, match="ACTIVE"):
        ca_store.record_issuance(replace(make_certificate("01"), status=status), supersede=False)
    assert ca_store.count() == 0


def test_fail_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        replace(make_certificate("01"), issued_at=datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="hex"):
        make_certificate("0A")


def test_ok_issued_filters_and_order(ca_store: IssuanceStore) -> None:
    later = T0 + timedelta(minutes=5)
    certs = [
        make_certificate("0c", "dev-1", ca_name="a", issued_at=later),
        make_certificate("0b", "dev-2", ca_name="a", issued_at=T0),
        make_certificate("0a", "dev-3", ca_name="b", issued_at=T0),
    ]
    for cert in certs:
        ca_store.record_issuance(cert, supersede=False)
    ca_store.set_status("a", "0b", REVOKED)

    def serials(**filters: object) -> list[str]:
        return [c.serial for c in ca_store.issued(**filters)]  # type: ignore[arg-type]

    assert serials() == ["0a", "0b", "0c"]
    assert serials(ca_name="a") == ["0b", "0c"]
    assert serials(device_id="dev-3") == ["0a"]
    assert serials(status=REVOKED) == ["0b"]
    assert serials(ca_name="a", status=ACTIVE) == ["0c"]
    assert serials(ca_name="b", device_id="dev-1") == []


def test_ok_set_status_only_from_active(ca_store: IssuanceStore) -> None:
    ca_store.record_issuance(make_certificate("01"), supersede=False)
    assert ca_store.set_status("customer", "01", REVOKED) is True
    assert ca_store.active_certificate("customer", "dev-1") is None
    assert ca_store.set_status("customer", "01", SUPERSEDED) is False
    assert ca_store.issued()[0].status is REVOKED
    assert ca_store.set_status("customer", "ff", REVOKED) is False
    assert ca_store.set_status("other", "01", REVOKED) is False
    with pytest.raises(ValueError, match="ACTIVE"):
        ca_store.set_status("customer", "01", ACTIVE)
    # Once revoked, the device may get a fresh certificate without superseding.
    assert ca_store.record_issuance(make_certificate("02"), supersede=False) == []


_RAW_INSERT = (
    "INSERT INTO issued_certificate (serial, ca_name, device_id, subject, not_before, not_after, "
    "status, request_id, fingerprint, issued_at, certificate_der) "
    "VALUES (?, 'customer', 'dev-1', 'CN=dev-1', '2024-05-01T12:00:00.000000Z', "
    "'2025-05-01T12:00:00.000000Z', ?, 'req', ?, '2024-05-01T12:00:00.000000Z', ?)"
)


def test_fail_schema_holds_one_active_row_per_device(
    ca_store: IssuanceStore, backend: Backend
) -> None:
    ca_store.record_issuance(make_certificate("01"), supersede=False)
    with pytest.raises(backend.integrity_error):
        backend.raw("ca", _RAW_INSERT, "02", "active", sha256_hex("02"), b"\x30")
    assert ca_store.count() == 1


def test_ok_schema_allows_inactive_rows_beside_the_active_one(
    ca_store: IssuanceStore, backend: Backend
) -> None:
    ca_store.record_issuance(make_certificate("01"), supersede=False)
    backend.raw("ca", _RAW_INSERT, "02", "superseded", sha256_hex("02"), b"\x30")
    backend.raw("ca", _RAW_INSERT, "03", "revoked", sha256_hex("03"), b"\x30")
    assert ca_store.count() == 3


def test_fail_schema_refuses_unknown_status_and_duplicate_serial(
    ca_store: IssuanceStore, backend: Backend
) -> None:
    ca_store.record_issuance(make_certificate("01"), supersede=False)
    with pytest.raises(backend.integrity_error):
        backend.raw("ca", _RAW_INSERT, "02", "bogus", sha256_hex("02"), b"\x30")
    with pytest.raises(backend.integrity_error):
        backend.raw("ca", _RAW_INSERT, "01", "revoked", sha256_hex("01"), b"\x30")
    assert ca_store.count() == 1


def test_ok_group_commit_with_one_failing_item(ca_store: IssuanceStore) -> None:
    ca_store.record_issuance(make_certificate("01", "dev-1"), supersede=False)
    batch: list[tuple[IssuedCertificate, bool]] = [
        (make_certificate("02", "dev-2"), False),
        (make_certificate("03", "dev-1"), False),  # dev-1 is live: AlreadyIssued
        (make_certificate("04", "dev-1"), True),  # supersedes 01
        (make_certificate("05", "dev-2"), True),  # supersedes 02 from this same batch
        (make_certificate("02", "dev-3"), False),  # serial taken: DuplicateSerial
        (make_certificate("06", "dev-3"), False),
    ]
    results = ca_store.record_issuances(batch)
    assert results[0] == []
    assert isinstance(results[1], AlreadyIssued) and results[1].serial == "01"
    assert results[2] == ["01"]
    assert results[3] == ["02"]
    assert isinstance(results[4], DuplicateSerial)
    assert results[5] == []
    live = {c.device_id: c.serial for c in ca_store.issued(status=ACTIVE)}
    assert live == {"dev-1": "04", "dev-2": "05", "dev-3": "06"}
    assert ca_store.count() == 5


def test_ok_group_commit_of_nothing_and_of_all_failing(ca_store: IssuanceStore) -> None:
    assert ca_store.record_issuances([]) == []
    ca_store.record_issuance(make_certificate("01"), supersede=False)
    results = ca_store.record_issuances([(make_certificate("02"), False)])
    assert len(results) == 1 and isinstance(results[0], ZtpkiError)
    assert ca_store.count() == 1


def test_ok_staged_batch_is_invisible_until_committed_from_another_thread(
    ca_store: IssuanceStore,
) -> None:
    ca_store.record_issuance(make_certificate("01", "dev-1"), supersede=False)
    staged = ca_store.stage_issuances(
        [
            (make_certificate("02", "dev-2"), False),
            (make_certificate("03", "dev-1"), False),  # dev-1 is live: AlreadyIssued
        ]
    )
    assert staged.results[0] == []
    assert isinstance(staged.results[1], AlreadyIssued) and staged.results[1].serial == "01"
    assert ca_store.count() == 1  # the store's own reads do not see the open batch
    committer = threading.Thread(target=staged.commit)
    committer.start()
    committer.join(10)
    assert [c.serial for c in ca_store.issued()] == ["01", "02"]


def test_ok_staged_batches_follow_each_other(ca_store: IssuanceStore) -> None:
    first = ca_store.stage_issuances([(make_certificate("01", "dev-1"), False)])
    first.commit()
    second = ca_store.stage_issuances([(make_certificate("02", "dev-1"), True)])
    second.commit()
    assert second.results == [["01"]]  # the second batch saw the first one's record
    live = [c.serial for c in ca_store.issued(status=ACTIVE)]
    assert live == ["02"]


def test_fail_staging_without_waiting_while_another_batch_holds_the_store(
    backend: Backend,
) -> None:
    holder, other = backend.ca(), backend.ca()
    held = holder.stage_issuances([(make_certificate("01", "dev-1"), False)])
    with pytest.raises(Unavailable):
        other.stage_issuances([(make_certificate("02", "dev-2"), False)], wait=False)
    held.commit()
    assert [c.serial for c in other.issued()] == ["01"]  # the refused batch left nothing
    other.stage_issuances([(make_certificate("02", "dev-2"), False)], wait=False).commit()
    assert [c.serial for c in other.issued()] == ["01", "02"]


def test_ok_records_survive_reopening(backend: Backend) -> None:
    backend.ca().record_issuance(make_certificate("01"), supersede=False)
    assert backend.ca().issued() == [make_certificate("01")]


def test_fail_other_schema_version_is_refused(backend: Backend) -> None:
    backend.ca()
    backend.raw("ca", "UPDATE schema_version SET version = 99 WHERE component = 'ca_system'")
    with pytest.raises(ConfigurationError, match="version 99"):
        backend.ca()


# ---------------------------------------------------------------- CA-clients

UNTIL = T0 + timedelta(days=365)
RIGHTS = ClientEntitlement(cas=("customer",), device_ids=("dev-*",))


def register(
    ca_store: IssuanceStore,
    name: str,
    *,
    serial: str = "aa",
    key: str | None = None,
    now: datetime = T0,
    entitlement: ClientEntitlement = RIGHTS,
) -> None:
    """add_client with the certificate fingerprint sha256(key), by default sha256(name)."""
    ca_store.add_client(
        name,
        serial=serial,
        fingerprint=sha256_hex(key or name),
        not_after=UNTIL,
        now=now,
        entitlement=entitlement,
    )


def test_ok_add_and_find_client(ca_store: IssuanceStore) -> None:
    register(ca_store, "node-1", serial="aa", key="a", now=T0)
    record = ca_store.client_by_fingerprint(sha256_hex("a"))
    assert record is not None
    assert (record.name, record.serial, record.status) == ("node-1", "aa", ClientStatus.ACTIVE)
    assert (record.not_after, record.added_at, record.removed_at) == (UNTIL, T0, None)
    assert ca_store.clients() == [record]
    assert ca_store.client_by_fingerprint(sha256_hex("unknown")) is None


def test_fail_duplicate_client_name_or_certificate(ca_store: IssuanceStore) -> None:
    register(ca_store, "node-1", serial="aa", key="a", now=T0)
    with pytest.raises(DuplicateClient, match="already active"):
        register(ca_store, "node-1", serial="bb", key="b", now=T0)
    with pytest.raises(DuplicateClient, match="already registered"):
        register(ca_store, "node-2", serial="aa", key="a", now=T0)
    assert [c.name for c in ca_store.clients()] == ["node-1"]


def test_ok_remove_and_re_add_keeps_history(ca_store: IssuanceStore) -> None:
    later = T0 + timedelta(hours=1)
    register(ca_store, "node-1", serial="aa", key="a", now=T0)
    assert ca_store.remove_client("node-1", now=later) is True
    assert ca_store.remove_client("node-1", now=later) is False
    assert ca_store.remove_client("never-added", now=later) is False
    removed = ca_store.client_by_fingerprint(sha256_hex("a"))
    assert removed is not None
    assert (removed.status, removed.removed_at) == (ClientStatus.REVOKED, later)
    # The removed certificate stays known, so it cannot come back under another name.
    with pytest.raises(DuplicateClient):
        register(ca_store, "node-9", serial="aa", key="a", now=later)
    register(ca_store, "node-1", serial="bb", key="b", now=later)
    history = [(c.name, c.serial, c.status) for c in ca_store.clients()]
    assert history == [
        ("node-1", "aa", ClientStatus.REVOKED),
        ("node-1", "bb", ClientStatus.ACTIVE),
    ]


def test_fail_schema_holds_one_active_client_per_name(
    ca_store: IssuanceStore, backend: Backend
) -> None:
    register(ca_store, "node-1", serial="aa", key="a", now=T0)
    insert = (
        "INSERT INTO ca_client (name, serial, fingerprint, not_after, status, added_at, "
        "removed_at) VALUES ('node-1', 'bb', ?, '2025-05-01T12:00:00.000000Z', ?, "
        "'2024-05-01T12:00:00.000000Z', ?)"
    )
    with pytest.raises(backend.integrity_error):
        backend.raw("ca", insert, sha256_hex("b"), "active", None)
    with pytest.raises(backend.integrity_error):  # revoked needs removed_at
        backend.raw("ca", insert, sha256_hex("b"), "revoked", None)
    backend.raw("ca", insert, sha256_hex("b"), "revoked", "2024-05-02T12:00:00.000000Z")
    assert len(ca_store.clients()) == 2


def test_ok_entitlement_kept_with_the_registration(ca_store: IssuanceStore) -> None:
    rights = ClientEntitlement(
        cas=("factory", "manifests"),
        device_ids=("ACME-*",),
        dns_names=("*.node.example.com",),
        ip_ranges=("10.0.0.0/8", "2001:db8::/32"),
    )
    register(ca_store, "line-1", entitlement=rights)
    record = ca_store.client_by_fingerprint(sha256_hex("line-1"))
    assert record is not None and record.entitlement == rights
    assert ca_store.clients()[0].entitlement == rights


def test_ok_set_entitlement_only_for_an_active_client(ca_store: IssuanceStore) -> None:
    register(ca_store, "line-1")
    narrower = ClientEntitlement(cas=("customer",), device_ids=("dev-1",))
    assert ca_store.set_entitlement("line-1", narrower) is True
    assert ca_store.clients()[0].entitlement == narrower
    assert ca_store.set_entitlement("nobody", RIGHTS) is False
    ca_store.remove_client("line-1", now=T0)
    assert ca_store.set_entitlement("line-1", RIGHTS) is False
    assert ca_store.clients()[0].entitlement == narrower  # unchanged after removal


def test_ok_refusals_recorded_newest_last(ca_store: IssuanceStore) -> None:
    assert ca_store.refusals() == []
    for n in range(3):
        ca_store.record_refusal(
            RefusedRequest(
                at=T0 + timedelta(seconds=n),
                client="line-1",
                request_id=f"r{n}",
                device_id="dev-1" if n else None,
                ca_name="nodes",
                reason="CA-client line-1 may not use CA 'nodes'",
            )
        )
    assert [r.request_id for r in ca_store.refusals()] == ["r0", "r1", "r2"]
    assert [r.request_id for r in ca_store.refusals(limit=2)] == ["r1", "r2"]
    assert ca_store.refusals()[0].device_id is None


def test_fail_supersede_of_another_clients_certificate(ca_store: IssuanceStore) -> None:
    mine = replace(make_certificate("01"), client="node-x")
    ca_store.record_issuance(mine, supersede=False)
    theirs = replace(make_certificate("02"), client="node-y")
    with pytest.raises(SupersedeRefused) as caught:
        ca_store.record_issuance(theirs, supersede=True)
    assert isinstance(caught.value, NotAuthorized)
    assert "node-x" not in caught.value.message  # never names the other client
    assert [c.serial for c in ca_store.issued()] == ["01"]
    assert ca_store.active_certificate("customer", "dev-1") == mine
    # Control: the client that obtained it supersedes it.
    again = replace(make_certificate("03"), client="node-x")
    assert ca_store.record_issuance(again, supersede=True) == ["01"]


def test_fail_issuance_for_a_name_another_client_holds_names_no_serial(
    ca_store: IssuanceStore,
) -> None:
    ca_store.record_issuance(replace(make_certificate("0a1b"), client="node-x"), supersede=False)
    theirs = replace(make_certificate("02"), client="node-y")
    with pytest.raises(SupersedeRefused) as caught:
        ca_store.record_issuance(theirs, supersede=False)
    assert "is taken by another CA-client" in caught.value.message
    assert "0a1b" not in caught.value.message and "node-x" not in caught.value.message
    assert [c.serial for c in ca_store.issued()] == ["0a1b"]


def test_ok_certificate_without_client_may_be_superseded_by_any(ca_store: IssuanceStore) -> None:
    ca_store.record_issuance(make_certificate("01"), supersede=False)  # before clients
    later = replace(make_certificate("02"), client="node-x")
    assert ca_store.record_issuance(later, supersede=True) == ["01"]
    assert ca_store.active_certificate("customer", "dev-1") == later
