"""The register's final state RETIRED, the renewal awaiting confirmation, the revocation queue
written with the state change that causes it, and the migration from schema 3."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from store_backends import T0
from test_contract_register import ISSUED, LISTED, begin, issued, listed
from tests.support.legacy_register import BEFORE_CONSOLE

from ztpki.store import AuditRecord, DeviceState, NodeStore
from ztpki.store.revocation_records import QueueStatus, RevocationAction, RevocationOrder
from ztpki.store.sqlite import open_sqlite_node_store
from ztpki.store.sqlite_db import stored_schema_version
from ztpki.store.sqlite_register_schema import SCHEMA_VERSION

LATER = T0 + timedelta(minutes=5)
CUSTOMIZED = DeviceState.CUSTOMIZED


def order(serial: str = "0a", **kw: object) -> RevocationOrder:
    return RevocationOrder("d1", "default", "operational", serial, "certificateHold", **kw)  # type: ignore[arg-type]


def audit(decision: str) -> AuditRecord:
    return AuditRecord(at=T0, endpoint="cli/test", decision=decision, reason="test", device_id="d1")


def test_ok_block_queues_its_hold_in_the_same_transaction(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    issued(node_store, "d1", "0a")
    assert node_store.block(
        "d1", now=T0, audit=audit("blocked"), revocations=[order()], issued_serial="0a"
    )
    (queued,) = node_store.revocations(device_id="d1")
    assert (queued.serial, queued.reason, queued.status) == ("0a", "certificateHold", "pending")
    decisions = [e.decision for e in node_store.entries(device_id="d1")]
    assert decisions[-2:] == ["revocation-requested", "blocked"]


def test_fail_block_decided_on_a_stale_row_changes_nothing(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    issued(node_store, "d1", "0b")  # the row now holds 0b; the caller decided on 0a
    before = list(node_store.entries(device_id="d1"))
    assert not node_store.block("d1", now=T0, revocations=[order("0a")], issued_serial="0a")
    assert node_store.get("d1").state is ISSUED  # type: ignore[union-attr]
    assert node_store.revocations() == []
    assert list(node_store.entries(device_id="d1")) == before


def test_ok_retired_is_final(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    issued(node_store, "d1", "0a")
    assert node_store.retire("d1", now=T0, revocations=[order()], issued_serial="0a")
    assert node_store.get("d1").state is DeviceState.RETIRED  # type: ignore[union-attr]
    assert not node_store.retire("d1", now=T0)
    assert not node_store.block("d1", now=T0)
    assert not node_store.unblock("d1", now=T0)
    assert begin(node_store, "d1", "t1", allowed=frozenset({LISTED, ISSUED, CUSTOMIZED})) is None
    assert node_store.counts()[DeviceState.RETIRED] == 1


def test_ok_renewal_waits_for_confirmation_then_is_due_after_grace(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    issued(node_store, "d1", "0a")
    assert begin(node_store, "d1", "t2", allowed=frozenset({ISSUED}))
    waiting = RevocationOrder("d1", "default", None, "0a", "superseded", waiting=True)
    assert node_store.complete_issuance(
        "d1",
        token="t2",
        new_state=CUSTOMIZED,
        serial="0b",
        spki="ab" * 32,
        certificate_der=b"\x30",
        chain_der=(),
        now=T0,
        audit=audit("issued"),
        revocations=[waiting],
        renewed_from="0a",
    )
    assert node_store.get("d1").renewed_from == "0a"  # type: ignore[union-attr]
    (queued,) = node_store.revocations(device_id="d1")
    assert queued.status is QueueStatus.WAITING and queued.due_at is None
    assert node_store.due_revocations(now=LATER + timedelta(days=1)) == []
    # Only the renewed certificate confirms, once.
    assert not node_store.confirm_renewal("d1", serial="0a", now=T0, due_at=LATER)
    assert node_store.confirm_renewal("d1", serial="0b", now=T0, due_at=LATER)
    assert not node_store.confirm_renewal("d1", serial="0b", now=T0, due_at=LATER)
    assert node_store.get("d1").renewed_from is None  # type: ignore[union-attr]
    assert node_store.due_revocations(now=T0) == []
    assert [q.serial for q in node_store.due_revocations(now=LATER)] == ["0a"]


def test_ok_queue_sends_one_certificate_in_order(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    hold, release = order("0a"), order("0a", action=RevocationAction.RELEASE)
    other = order("0c")
    node_store.queue_revocations([hold, release, other], now=T0)
    due = node_store.due_revocations(now=T0)
    assert [(q.serial, q.action) for q in due] == [("0a", "revoke"), ("0c", "revoke")]
    lease = node_store.take_sender_lease("sender", now=T0, until=LATER)
    assert lease is not None
    assert node_store.revocation_failed(due[0].seq, lease=lease, error="down", retry_at=LATER)
    assert [q.serial for q in node_store.due_revocations(now=T0)] == ["0c"]
    assert node_store.revocation_done(due[0].seq, lease=lease, now=LATER)
    assert not node_store.revocation_done(due[0].seq, lease=lease, now=LATER)  # closed once
    assert [(q.serial, q.action) for q in node_store.due_revocations(now=LATER)] == [
        ("0a", "release"),
        ("0c", "revoke"),
    ]


def test_ok_revocations_by_status_leave_the_finished_out(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    node_store.queue_revocations([order("0a"), order("0b"), order("0c")], now=T0)
    first, second, _ = node_store.revocations()
    lease = node_store.take_sender_lease("sender", now=T0, until=LATER)
    assert lease is not None
    assert node_store.revocation_done(first.seq, lease=lease, now=LATER)
    assert node_store.revocation_done(
        second.seq, lease=lease, now=LATER, refused="unknown certificate"
    )
    unfinished = [QueueStatus.WAITING, QueueStatus.PENDING, QueueStatus.REFUSED]
    kept = node_store.revocations(statuses=unfinished)
    assert [(q.serial, q.status) for q in kept] == [("0b", "refused"), ("0c", "pending")]
    done = node_store.revocations(statuses=[QueueStatus.DONE], device_id="d1")
    assert [q.serial for q in done] == ["0a"]
    assert node_store.revocations(statuses=[]) == []


def test_fail_waiting_order_must_be_a_revocation() -> None:
    with pytest.raises(ValueError, match="only a revocation"):
        order(action=RevocationAction.RELEASE, waiting=True)


def test_ok_register_of_schema_3_migrates_to_the_current_one(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    store = open_sqlite_node_store(path)
    listed(store, "d1")
    issued(store, "d1", "0a")
    store.close()
    with sqlite3.connect(path) as conn:  # the register as schema 3 had it
        for statement in BEFORE_CONSOLE:
            conn.execute(statement)
        conn.execute("DROP TABLE node_revocation")
        conn.execute("DROP TABLE node_sender_lease")
        conn.execute("DROP TABLE cmp_transaction")
        conn.execute("ALTER TABLE device DROP COLUMN renewed_from")
        conn.execute("UPDATE schema_version SET version = 3 WHERE component = 'customer_node'")
    store = open_sqlite_node_store(path)
    try:
        row = store.get("d1")
        assert row is not None and row.issued_serial == "0a" and row.renewed_from is None
        assert row.issued_chain_der  # device_chain still points at the rebuilt table
        assert store.retire("d1", now=T0, revocations=[order()], issued_serial="0a")
        assert store.get("d1").state is DeviceState.RETIRED  # type: ignore[union-attr]
    finally:
        store.close()
    assert stored_schema_version(path, "customer_node") == 10 == SCHEMA_VERSION
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        with pytest.raises(sqlite3.IntegrityError):  # the schema still refuses unknown states
            conn.execute("UPDATE device SET state = 'gone' WHERE device_id = 'd1'")


def test_ok_register_of_schema_4_gains_the_sender_lease(tmp_path: Path) -> None:
    path = tmp_path / "v4.sqlite"
    store = open_sqlite_node_store(path)
    listed(store, "d1")
    store.queue_revocations([order()], now=T0)
    store.close()
    with sqlite3.connect(path) as conn:  # the register as schema 4 had it
        for statement in BEFORE_CONSOLE:
            conn.execute(statement)
        conn.execute("DROP TABLE node_sender_lease")
        conn.execute("DROP TABLE cmp_transaction")
        conn.execute("UPDATE schema_version SET version = 4 WHERE component = 'customer_node'")
    store = open_sqlite_node_store(path)
    try:
        (queued,) = store.revocations()
        lease = store.take_sender_lease("sender", now=T0, until=LATER)
        assert lease == 1
        assert store.revocation_done(queued.seq, lease=lease, now=T0)
    finally:
        store.close()
    assert stored_schema_version(path, "customer_node") == SCHEMA_VERSION
