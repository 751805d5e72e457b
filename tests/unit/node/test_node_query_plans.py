"""The customization's queries use indexes: their cost stays flat as the register grows.

Every statement the node and the customer CA system run for a device's first enrollment, its
confirmation, a renewal and a refusal is captured (SQLite's trace callback on each connection
the stores open) and explained (EXPLAIN QUERY PLAN): none may scan a table that grows with the
fleet. benchmarks/scale.py measures the same thing as CPU time with a million devices.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_pki import Node, csr_for, make_node

from ztpki.node.authorization import Operation, Refused
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.store.sqlite_db import SQLiteDatabase

# Tables whose rows grow with the fleet (devices, certificates, decisions, orders).
GROWING = {
    "device",
    "device_chain",
    "audit_entry",
    "node_revocation",
    "issued_certificate",
    "revocation",
    "refused_request",
}
# The audit chain's head: the last row of a rowid table, read backwards from its end (one
# step whatever the size), which SQLite's plan still calls a scan.
HEAD = re.compile(r"FROM audit_entry ORDER BY seq DESC LIMIT 1$")
_DML = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


@pytest.fixture
def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Node, list]]:  # type: ignore[type-arg]
    statements: list[tuple[Path, str]] = []
    connect = SQLiteDatabase._connect

    def tracing(self: SQLiteDatabase, *, busy_timeout: float) -> sqlite3.Connection:
        conn = connect(self, busy_timeout=busy_timeout)
        conn.set_trace_callback(lambda sql, path=self.path: statements.append((path, sql)))
        return conn

    monkeypatch.setattr(SQLiteDatabase, "_connect", tracing)
    node = make_node(tmp_path)
    yield node, statements
    node.close()


def scans(path: Path, sql: str) -> list[str]:
    """The growing tables ``sql`` scans in full, by its query plan."""
    with sqlite3.connect(path) as conn:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
    found = []
    for *_, detail in plan:
        match = re.match(r"SCAN (\w+)", detail)
        if match and match.group(1) in GROWING:
            found.append(detail)
    return found


def test_ok_customization_queries_use_indexes(traced: tuple[Node, list]) -> None:  # type: ignore[type-arg]
    node, statements = traced
    node.list("d1")
    node.list("d2")
    temp = node.pki.temporary("d1")
    key = generate_private_key(KeySpec.EC_P256)

    def enroll(operation: Operation, identity: object, csr_key: object = None) -> object:
        csr = csr_for("d1", csr_key)  # type: ignore[arg-type]
        return asyncio.run(node.service.enroll(operation, node.label, identity, csr))  # type: ignore[arg-type]

    statements.clear()  # what follows is the service's own work, not the set-up
    enrolled = enroll(Operation.SIMPLEENROLL, node.pki.identity(temp[1]), key)
    operational = node.pki.identity(enrolled.certificate)  # type: ignore[attr-defined]
    asyncio.run(node.service.cacerts(node.label, operational))  # the confirmation
    enroll(Operation.SIMPLEREENROLL, operational)
    with pytest.raises(Refused):
        enroll(Operation.SIMPLEENROLL, node.pki.identity(temp[1]))
    assert node.state("d1") == "customized"
    # What `ca serve` adds per connection and request around the issuance the fake CA runs.
    assert node.ca.store.client_by_fingerprint("00" * 32) is None
    assert node.ca.store.active_certificate("operational", "d1") is not None

    explained = [(path, sql) for path, sql in statements if _DML.match(sql)]
    tables = {t for _, sql in explained for t in GROWING if re.search(rf"\b{t}\b", sql)}
    assert {"device", "audit_entry", "issued_certificate"} <= tables  # the capture works
    bad = {
        sql: found
        for path, sql in explained
        if not HEAD.search(sql.strip()) and (found := scans(path, sql))
    }
    assert bad == {}


def test_fail_a_scan_is_seen(traced: tuple[Node, list]) -> None:  # type: ignore[type-arg]
    """Negative control: a query by a column without an index is reported."""
    node, statements = traced
    node.list("d1")
    path = next(p for p, _ in statements if p.name == "node.sqlite")
    assert scans(path, "SELECT device_id FROM device WHERE model = 'X'") != []
    assert scans(path, "SELECT device_id FROM device WHERE device_id = 'd1'") == []
