"""The store implementations the contract suite runs against, and work for child processes.

A backend is named by (kind, locator), both plain strings, so a child process started with
``spawn`` can open the same database: a directory for SQLite, a database URL of the test
process's throwaway PostgreSQL cluster (tests/support/postgres.py) for PostgreSQL, a fresh
database for each test.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ztpki.store import (
    AuditRecord,
    CertificateStatus,
    DeviceState,
    IssuanceStore,
    IssuedCertificate,
    NodeStore,
    open_sqlite_ca_store,
    open_sqlite_node_store,
)
from ztpki.store.pg_connection import to_pyformat
from ztpki.store.pg_db import PostgresDatabase
from ztpki.store.sqlite_ca import SQLiteIssuanceStore
from ztpki.store.sqlite_register import SQLiteNodeStore

KINDS = ("sqlite", "postgresql")

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------- record builders


def make_certificate(
    serial: str,
    device_id: str = "dev-1",
    *,
    ca_name: str = "customer",
    issued_at: datetime = T0,
) -> IssuedCertificate:
    der = b"\x30\x82" + serial.encode() + device_id.encode()
    return IssuedCertificate(
        serial=serial,
        ca_name=ca_name,
        device_id=device_id,
        subject=f"CN={device_id}",
        not_before=issued_at,
        not_after=issued_at + timedelta(days=365),
        status=CertificateStatus.ACTIVE,
        request_id=f"req-{serial}",
        fingerprint=hashlib.sha256(der).hexdigest(),
        issued_at=issued_at,
        certificate_der=der,
    )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- opening backends


@contextmanager
def locator_for(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield str(tmp_path)
        return
    if kind == "postgresql":
        from tests.support.postgres import shared_cluster

        cluster = shared_cluster()
        url = cluster.fresh_database()
        try:
            yield url
        finally:
            cluster.drop_database(url)
        return
    raise AssertionError(f"unknown backend {kind}")


def open_ca(kind: str, locator: str) -> IssuanceStore:
    if kind == "sqlite":
        return open_sqlite_ca_store(Path(locator) / "ca.db")
    if kind == "postgresql":
        return SQLiteIssuanceStore(PostgresDatabase(locator))
    raise AssertionError(f"unknown backend {kind}")


def open_node(kind: str, locator: str) -> NodeStore:
    if kind == "sqlite":
        return open_sqlite_node_store(Path(locator) / "node.db")
    if kind == "postgresql":
        return SQLiteNodeStore(PostgresDatabase(locator))
    raise AssertionError(f"unknown backend {kind}")


def raw_execute(kind: str, locator: str, database: str, sql: str, params: tuple[Any, ...]) -> int:
    """Run SQL behind the store's back (``?`` placeholders); returns the row count."""
    if kind == "sqlite":
        conn = sqlite3.connect(Path(locator) / f"{database}.db", isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            return conn.execute(sql, params).rowcount
        finally:
            conn.close()
    if kind == "postgresql":
        import psycopg

        with psycopg.connect(locator, autocommit=True) as pg:
            return pg.execute(to_pyformat(sql), params).rowcount
    raise AssertionError(f"unknown backend {kind}")


def integrity_error(kind: str) -> type[Exception]:
    if kind == "sqlite":
        return sqlite3.IntegrityError
    if kind == "postgresql":
        import psycopg.errors

        return psycopg.errors.IntegrityError
    raise AssertionError(f"unknown backend {kind}")


def close(store: object) -> None:
    closer = getattr(store, "close", None)
    if closer is not None:
        closer()


@dataclass
class Backend:
    kind: str
    locator: str
    opened: list[object]

    def ca(self) -> IssuanceStore:
        store = open_ca(self.kind, self.locator)
        self.opened.append(store)
        return store

    def node(self) -> NodeStore:
        store = open_node(self.kind, self.locator)
        self.opened.append(store)
        return store

    def raw(self, database: str, sql: str, *params: Any) -> int:
        return raw_execute(self.kind, self.locator, database, sql, params)

    @property
    def integrity_error(self) -> type[Exception]:
        return integrity_error(self.kind)


# ---------------------------------------------------------------- child-process work


def race(kind: str, locator: str, target: Any, names: Sequence[str], *args: Any) -> dict[str, Any]:
    """``target(kind, locator, *args, name, barrier, results)`` in one spawned process per
    name, all released at once by a barrier; each process's result, by name."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(names))
    results = ctx.Queue()
    processes = [
        ctx.Process(target=target, args=(kind, locator, *args, name, barrier, results))
        for name in names
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sorted(outcomes) == sorted(names)
    return outcomes


def race_begin_issuance(
    kind: str, locator: str, device_id: str, token: str, barrier: Any, results: Any
) -> None:
    store = open_node(kind, locator)
    try:
        barrier.wait(timeout=60)
        won = store.begin_issuance(
            device_id,
            allowed_from={DeviceState.LISTED},
            token=token,
            label="default",
            now=T0,
            lease_seconds=60,
        )
        results.put((token, won is not None))
    finally:
        close(store)


def race_take_sender_lease(
    kind: str, locator: str, holder: str, barrier: Any, results: Any
) -> None:
    store = open_node(kind, locator)
    try:
        barrier.wait(timeout=60)
        token = store.take_sender_lease(holder, now=T0, until=T0 + timedelta(seconds=30))
        results.put((holder, token))
    finally:
        close(store)


def open_fresh_and_append(kind: str, locator: str, worker: int, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)
    try:
        store = open_node(kind, locator)
    except Exception as exc:
        results.put((worker, repr(exc)))
        return
    try:
        entry = store.append(**_fields(AuditRecord(at=T0, endpoint="e", decision="d", reason="")))
        results.put((worker, entry.seq))
    finally:
        close(store)


def append_audit_entries(
    kind: str, locator: str, worker: int, count: int, barrier: Any, results: Any
) -> None:
    store = open_node(kind, locator)
    try:
        barrier.wait(timeout=60)
        seqs: list[int] = []
        for i in range(count):
            record = AuditRecord(
                at=T0,
                endpoint="simpleenroll",
                decision="issued",
                reason=f"worker {worker} entry {i}",
                device_id=f"dev-{worker}",
            )
            if i % 5 == 4:
                seqs.extend(e.seq for e in store.append_many([record, record]))
            else:
                seqs.append(store.append(**_fields(record)).seq)
        results.put((worker, seqs))
    finally:
        close(store)


def _fields(record: AuditRecord) -> dict[str, Any]:
    return {
        "at": record.at,
        "device_id": record.device_id,
        "client_fingerprint": record.client_fingerprint,
        "endpoint": record.endpoint,
        "decision": record.decision,
        "reason": record.reason,
        "serial": record.serial,
    }


def race_begin_cmp_transaction(
    kind: str, locator: str, transaction_id: bytes, name: str, barrier: Any, results: Any
) -> None:
    from ztpki.store.cmp_transactions import CmpTransaction, CmpTransactionState

    store = open_node(kind, locator)
    try:
        barrier.wait(timeout=60)
        began = store.begin_cmp_transaction(
            CmpTransaction(
                transaction_id,
                f"dev-{name}",
                "default",
                "ir",
                "ab" * 32,
                CmpTransactionState.OPEN,
                T0,
                T0,
            )
        )
        results.put((name, began))
    finally:
        store.close()
