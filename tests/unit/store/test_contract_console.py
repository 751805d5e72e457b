"""The web console's store operations on SQLite and PostgreSQL: operators, the device list's
keyset pages and filters, and the overview's figures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from store_backends import T0

from ztpki.store import NodeStore
from ztpki.store.records import AuditRecord, DeviceState, ManifestRecord, NewDevice
from ztpki.store.sqlite_console import DeviceFilter, DuplicateOperator, Role

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


def console(store: NodeStore) -> Any:
    return store  # SQLiteNodeStore carries the console's queries on both engines


def fill(store: NodeStore) -> None:
    """30 devices: dev-00..dev-29, batches B0/B1/B2 by id mod 3; dev-05 blocked."""
    record = ManifestRecord("Acme", "m1", T0, "CN=signer", 30, T0)
    devices = [
        NewDevice(f"dev-{i:02d}", f"{i:064x}", manufacturer="Acme", batch=f"B{i % 3}")
        for i in range(30)
    ]
    store.import_devices(devices, manifest=record)
    assert store.block("dev-05", now=T0)


def ids(rows: list[Any]) -> list[str]:
    return [row.device_id for row in rows]


def test_ok_operators_are_kept_and_a_second_of_one_name_is_refused(node_store: NodeStore) -> None:
    store = console(node_store)
    store.add_operator("olga", role=Role.OPERATOR, password_hash=HASH, now=T0)
    with pytest.raises(DuplicateOperator, match="--replace"):
        store.add_operator("olga", role=Role.VIEWER, password_hash=HASH, now=T0)
    assert store.operator("olga").role is Role.OPERATOR  # unchanged by the refusal
    store.add_operator("olga", role=Role.VIEWER, password_hash="!", now=T0, replace=True)
    found = store.operator("olga")
    assert (found.role, found.password_hash) == (Role.VIEWER, "!")
    assert store.operator("nobody") is None
    assert [o.name for o in store.operators()] == ["olga"]


def test_fail_an_operator_without_an_argon2_hash_is_refused_by_the_schema(
    node_store: NodeStore,
) -> None:
    with pytest.raises(Exception, match=r"(?i)check|constraint"):
        console(node_store).add_operator(
            "eve", role=Role.OPERATOR, password_hash="plaintext", now=T0
        )
    assert console(node_store).operator("eve") is None


def test_ok_device_pages_follow_the_key_and_every_filter(node_store: NodeStore) -> None:
    fill(node_store)
    store = console(node_store)
    first = store.device_page(DeviceFilter(), limit=10)
    assert ids(first) == [f"dev-{i:02d}" for i in range(10)]
    second = store.device_page(DeviceFilter(), after=first[-1].device_id, limit=10)
    assert ids(second) == [f"dev-{i:02d}" for i in range(10, 20)]
    assert ids(store.device_page(DeviceFilter(search="dev-1"), limit=50)) == [
        f"dev-{i}" for i in range(10, 20)
    ]
    assert ids(store.device_page(DeviceFilter(search="dev-05"), limit=50)) == ["dev-05"]
    assert ids(store.device_page(DeviceFilter(blocked=True))) == ["dev-05"]
    assert "dev-05" not in ids(store.device_page(DeviceFilter(blocked=False)))
    assert ids(store.device_page(DeviceFilter(state=DeviceState.BLOCKED))) == ["dev-05"]
    b1 = store.device_page(DeviceFilter(batch="B1", state=DeviceState.LISTED), limit=4)
    assert ids(b1) == ["dev-01", "dev-04", "dev-07", "dev-10"]
    assert store.device_page(DeviceFilter(label="meters")) == []
    assert store.device_page(DeviceFilter(search="zzz")) == []
    with pytest.raises(ValueError):
        store.device_page(DeviceFilter(), limit=0)


def test_ok_the_overview_counts_by_batch_and_the_audit_by_minute(node_store: NodeStore) -> None:
    fill(node_store)
    store = console(node_store)
    groups = {(m, b, s): n for m, b, s, n in store.fleet_by_batch()}
    assert groups[("Acme", "B2", DeviceState.BLOCKED)] == 1  # dev-05
    assert groups[("Acme", "B2", DeviceState.LISTED)] == 9
    assert groups[("Acme", "B0", DeviceState.LISTED)] == 10
    at = T0.replace(second=30)
    node_store.append_many(
        [
            AuditRecord(at=at, endpoint="e", decision="confirmed", reason="ok"),
            AuditRecord(at=at, endpoint="e", decision="confirmed", reason="ok"),
            AuditRecord(
                at=at + timedelta(minutes=1), endpoint="e", decision="confirmed", reason="ok"
            ),
            AuditRecord(at=at, endpoint="e", decision="refused", reason="unknown device"),
            AuditRecord(at=at, endpoint="e", decision="deferred", reason="CA system down"),
            AuditRecord(at=at, endpoint="e", decision="refused", reason="unknown device"),
            AuditRecord(at=at - timedelta(hours=2), endpoint="e", decision="refused", reason="old"),
        ]
    )
    minute = at.strftime("%Y-%m-%dT%H:%M")
    later = (at + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")
    since = at - timedelta(minutes=5)
    assert store.decisions_per_minute("confirmed", since=since) == {minute: 2, later: 1}
    assert store.failure_reasons(("refused", "deferred"), since=since) == [
        ("unknown device", 2),
        ("CA system down", 1),
    ]
    newest = store.audit_page(limit=3)
    assert [e.decision for e in newest] == ["refused", "refused", "deferred"]
    older = store.audit_page(before=newest[-1].seq, limit=100)
    assert [e.seq for e in older] == list(range(newest[-1].seq - 1, 0, -1))
