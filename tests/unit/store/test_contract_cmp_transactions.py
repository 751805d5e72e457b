"""CMP transactions in the register, on every engine: an id is accepted once, ever (a replay or
a collision is refused by the key, across processes); certConf state moves forward only."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from store_backends import T0, Backend, race, race_begin_cmp_transaction
from test_contract_register import listed, state_of
from tests.support.legacy_register import BEFORE_CONSOLE

from ztpki.store import NodeStore
from ztpki.store.cmp_transactions import (
    CmpIssued,
    CmpTransaction,
    CmpTransactionState,
    TransactionIdTaken,
)
from ztpki.store.records import DeviceState
from ztpki.store.sqlite import open_sqlite_node_store
from ztpki.store.sqlite_db import stored_schema_version
from ztpki.store.sqlite_register_schema import SCHEMA_VERSION

LATER = T0 + timedelta(seconds=5)
OPEN, ISSUED = CmpTransactionState.OPEN, CmpTransactionState.ISSUED
CONFIRMED, REJECTED = CmpTransactionState.CONFIRMED, CmpTransactionState.REJECTED


def transaction(tid: bytes = b"\x01" * 16, device_id: str = "d1") -> CmpTransaction:
    return CmpTransaction(tid, device_id, "default", "ir", "ab" * 32, OPEN, T0, T0, cert_req_id=0)


def issue(store: NodeStore, tid: bytes = b"\x01" * 16, *, confirmed: bool = False) -> bool:
    return store.record_cmp_issued(
        tid, serial="0a", certificate_der=b"\x30cert", response_nonce=b"n" * 16,
        confirmed=confirmed, now=LATER,
    )  # fmt: skip


def test_ok_transaction_is_recorded_issued_and_confirmed(node_store: NodeStore) -> None:
    assert node_store.cmp_transaction(b"\x01" * 16) is None
    assert node_store.begin_cmp_transaction(transaction())
    assert node_store.cmp_transaction(b"\x01" * 16) == transaction()
    assert issue(node_store)
    issued = node_store.cmp_transaction(b"\x01" * 16)
    assert issued == replace(
        transaction(), state=ISSUED, serial="0a", certificate_der=b"\x30cert",
        response_nonce=b"n" * 16, updated_at=LATER,
    )  # fmt: skip
    assert node_store.close_cmp_transaction(b"\x01" * 16, state=CONFIRMED, now=LATER)
    assert node_store.cmp_transaction(b"\x01" * 16).state is CONFIRMED  # type: ignore[union-attr]


def test_fail_transaction_id_is_accepted_once_ever(node_store: NodeStore) -> None:
    assert node_store.begin_cmp_transaction(transaction())
    assert issue(node_store)
    assert node_store.close_cmp_transaction(b"\x01" * 16, state=CONFIRMED, now=LATER)
    before = node_store.cmp_transaction(b"\x01" * 16)
    # A replay of the finished transaction, and another device's collision: both refused.
    assert not node_store.begin_cmp_transaction(transaction())
    assert not node_store.begin_cmp_transaction(transaction(device_id="d2"))
    assert node_store.cmp_transaction(b"\x01" * 16) == before  # nothing changed


def test_fail_state_moves_forward_only(node_store: NodeStore) -> None:
    assert not issue(node_store)  # no such transaction
    assert node_store.begin_cmp_transaction(transaction())
    # An open transaction cannot be confirmed (nothing was issued), only rejected.
    assert not node_store.close_cmp_transaction(b"\x01" * 16, state=CONFIRMED, now=LATER)
    assert issue(node_store)
    assert not issue(node_store)  # issued once
    assert node_store.close_cmp_transaction(b"\x01" * 16, state=REJECTED, now=LATER)
    assert not node_store.close_cmp_transaction(b"\x01" * 16, state=CONFIRMED, now=LATER)
    assert node_store.cmp_transaction(b"\x01" * 16).state is REJECTED  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="confirmed or rejected"):
        node_store.close_cmp_transaction(b"\x01" * 16, state=OPEN, now=LATER)


def test_ok_implicit_confirmation_is_recorded_confirmed(node_store: NodeStore) -> None:
    assert node_store.begin_cmp_transaction(transaction())
    assert issue(node_store, confirmed=True)
    assert node_store.cmp_transaction(b"\x01" * 16).state is CONFIRMED  # type: ignore[union-attr]
    assert not node_store.close_cmp_transaction(b"\x01" * 16, state=REJECTED, now=LATER)


def test_fail_schema_refuses_an_issued_row_without_its_certificate(backend: Backend) -> None:
    assert backend.node().begin_cmp_transaction(transaction())
    with pytest.raises(backend.integrity_error):
        backend.raw("node", "UPDATE cmp_transaction SET state = 'issued'")


def test_ok_one_of_racing_processes_gets_a_transaction_id(backend: Backend) -> None:
    outcomes = race(
        backend.kind, backend.locator, race_begin_cmp_transaction, ["a", "b", "c"], b"\x07" * 16
    )
    assert sorted(outcomes.values()) == [False, False, True]


def test_ok_register_of_schema_5_gains_cmp_transactions(tmp_path: Path) -> None:
    path = tmp_path / "v5.sqlite"
    open_sqlite_node_store(path).close()
    with sqlite3.connect(path) as conn:  # the register as schema 5 had it
        for statement in BEFORE_CONSOLE:
            conn.execute(statement)
        conn.execute("DROP TABLE cmp_transaction")
        conn.execute("UPDATE schema_version SET version = 5 WHERE component = 'customer_node'")
    store = open_sqlite_node_store(path)
    try:
        assert store.begin_cmp_transaction(transaction())
    finally:
        store.close()
    assert stored_schema_version(path, "customer_node") == SCHEMA_VERSION == 10


def waiting_transaction(tid: bytes = b"\x02" * 16) -> CmpTransaction:
    return replace(
        transaction(tid), body="p10cr", cert_req_id=-1, operation="simpleenroll",
        public_key_der=b"\x30spki", csr_der=b"\x30csr", named_device_id="d1",
    )  # fmt: skip


def test_ok_waiting_transaction_keeps_its_key_request(node_store: NodeStore) -> None:
    """A request answered 'waiting' can be served on its pollReq from the register alone."""
    assert node_store.begin_cmp_transaction(waiting_transaction())
    opened = node_store.cmp_transaction(b"\x02" * 16)
    assert opened == waiting_transaction() and not opened.waiting
    assert node_store.mark_cmp_waiting(b"\x02" * 16, now=LATER)
    waiting = node_store.cmp_transaction(b"\x02" * 16)
    assert waiting == replace(waiting_transaction(), waiting_since=LATER, updated_at=LATER)
    assert waiting is not None and waiting.waiting
    # Polled again later: the device has waited since the first answer.
    assert node_store.mark_cmp_waiting(b"\x02" * 16, now=LATER + timedelta(seconds=5))
    again = node_store.cmp_transaction(b"\x02" * 16)
    assert again is not None and again.waiting_since == LATER
    assert issue(node_store, b"\x02" * 16)
    issued = node_store.cmp_transaction(b"\x02" * 16)
    assert issued is not None and issued.state is ISSUED and not issued.waiting


def test_fail_only_an_open_transaction_waits(node_store: NodeStore) -> None:
    assert not node_store.mark_cmp_waiting(b"\x02" * 16, now=LATER)  # no such transaction
    assert node_store.cmp_transaction(b"\x02" * 16) is None
    assert node_store.begin_cmp_transaction(waiting_transaction())
    assert node_store.close_cmp_transaction(b"\x02" * 16, state=REJECTED, now=T0)
    before = node_store.cmp_transaction(b"\x02" * 16)
    assert not node_store.mark_cmp_waiting(b"\x02" * 16, now=LATER)
    assert node_store.cmp_transaction(b"\x02" * 16) == before  # nothing changed


def test_ok_register_of_schema_7_gains_key_requests(backend: Backend) -> None:
    """Schema 7 -> 8 on either engine: older rows read without a key request (not pollable),
    new ones keep theirs."""
    assert backend.node().begin_cmp_transaction(transaction())
    for column in ("operation", "public_key_der", "csr_der", "named_device_id", "waiting_since"):
        backend.raw("node", f"ALTER TABLE cmp_transaction DROP COLUMN {column}")
    backend.raw("node", "DROP TABLE cmp_secret")  # schema 10's
    backend.raw("node", "DROP TABLE console_session")  # schema 9's
    backend.raw("node", "UPDATE schema_version SET version = 7 WHERE component = 'customer_node'")
    store = backend.node()
    assert store.cmp_transaction(b"\x01" * 16) == transaction()
    assert store.begin_cmp_transaction(waiting_transaction())
    assert store.mark_cmp_waiting(b"\x02" * 16, now=LATER)
    waiting = store.cmp_transaction(b"\x02" * 16)
    assert waiting is not None and waiting.waiting and waiting.csr_der == b"\x30csr"


# ------------------------------------------------ the row in the issuance's own commits


def _device(store: NodeStore, device_id: str = "d1") -> None:
    listed(store, device_id)


def _begin(store: NodeStore, token: str, row: CmpTransaction | None) -> object:
    return store.begin_issuance(
        "d1", allowed_from=frozenset({DeviceState.LISTED}), token=token, label="default",
        now=T0, lease_seconds=60, cmp_transaction=row,
    )  # fmt: skip


def _complete(store: NodeStore, token: str, issued: CmpIssued | None) -> bool:
    return store.complete_issuance(
        "d1", token=token, new_state=DeviceState.ISSUED, serial="0a", spki="cd" * 32,
        certificate_der=b"\x30cert", chain_der=[b"\x30ca"], now=LATER, cmp_issued=issued,
    )  # fmt: skip


def _commits(store: NodeStore) -> int:
    return store.database.counters.snapshot()["commits_write"]


def test_ok_transaction_goes_in_with_the_lease_and_out_with_the_certificate(
    node_store: NodeStore,
) -> None:
    _device(node_store)
    before = _commits(node_store)
    assert _begin(node_store, "t1", transaction()) is not None
    assert _commits(node_store) == before + 1  # lease and row: one commit
    assert node_store.cmp_transaction(b"\x01" * 16) == transaction()
    nonce = b"n" * 16
    assert _complete(node_store, "t1", CmpIssued(b"\x01" * 16, nonce, unless_waiting=True))
    assert _commits(node_store) == before + 2  # certificate and row: one commit
    row = node_store.cmp_transaction(b"\x01" * 16)
    assert row is not None and row.state is ISSUED
    assert (row.serial, row.certificate_der, row.response_nonce) == ("0a", b"\x30cert", nonce)
    assert state_of(node_store, "d1") is DeviceState.ISSUED


def test_fail_used_transaction_id_takes_no_lease(node_store: NodeStore) -> None:
    _device(node_store)
    assert node_store.begin_cmp_transaction(transaction())  # used before (a replay)
    with pytest.raises(TransactionIdTaken, match="used before"):
        _begin(node_store, "t1", transaction(device_id="d1"))
    assert state_of(node_store, "d1") is DeviceState.LISTED  # the lease rolled back with it
    assert node_store.cmp_transaction(b"\x01" * 16) == transaction()


def test_fail_lease_refused_writes_no_row(node_store: NodeStore) -> None:
    _device(node_store)
    assert _begin(node_store, "t1", None) is not None  # another request holds the lease
    assert _begin(node_store, "t2", transaction()) is None
    assert node_store.cmp_transaction(b"\x01" * 16) is None  # the id is still free


def test_ok_row_answered_waiting_is_left_to_the_poll(node_store: NodeStore) -> None:
    _device(node_store)
    assert _begin(node_store, "t1", transaction()) is not None
    assert node_store.mark_cmp_waiting(b"\x01" * 16, now=T0)
    # The request's own issuance lands in the background: the device was told to poll, and
    # its pollReq records the answer it gets.
    assert _complete(node_store, "t1", CmpIssued(b"\x01" * 16, b"n" * 16, unless_waiting=True))
    row = node_store.cmp_transaction(b"\x01" * 16)
    assert row is not None and row.waiting and row.serial is None
