"""CMP transactions in the register, on every engine: an id is accepted once, ever (a replay or
a collision is refused by the key, across processes); certConf state moves forward only."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from store_backends import T0, Backend, race, race_begin_cmp_transaction
from tests.support.legacy_register import BEFORE_CONSOLE

from ztpki.store import NodeStore
from ztpki.store.cmp_transactions import CmpTransaction, CmpTransactionState
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
