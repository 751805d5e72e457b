"""The devices' CMP shared secrets in the register, on every engine: set only for a listed
device, replaced, cleared, each change audited in its own transaction; the secret never in
the audit trail."""

from __future__ import annotations

from datetime import timedelta

from store_backends import T0, Backend

from ztpki.store import NodeStore
from ztpki.store.records import AuditRecord, NewDevice

SECRET, OTHER = b"0123456789abcdef", b"fedcba9876543210-longer"


def _audit(decision: str, device_id: str = "d1") -> AuditRecord:
    return AuditRecord(T0, "cli/set-cmp-secret", decision, "by the operator", device_id)


def test_ok_secret_set_replaced_cleared_and_audited(node_store: NodeStore) -> None:
    node_store.add_device(NewDevice("d1", None, manufacturer="Acme"), now=T0)
    assert node_store.cmp_secret("d1") is None
    assert node_store.set_cmp_secret("d1", SECRET, label=None, now=T0, audit=_audit("set"))
    stored = node_store.cmp_secret("d1")
    assert stored is not None and (stored.secret, stored.label) == (SECRET, None)
    assert SECRET.decode() not in repr(stored)
    later = T0 + timedelta(seconds=1)
    assert node_store.set_cmp_secret("d1", OTHER, label="meters", now=later, audit=_audit("set"))
    stored = node_store.cmp_secret("d1")
    assert stored is not None and (stored.secret, stored.label) == (OTHER, "meters")
    assert node_store.clear_cmp_secret("d1", audit=_audit("cleared"))
    assert node_store.cmp_secret("d1") is None
    assert not node_store.clear_cmp_secret("d1", audit=_audit("cleared"))  # nothing to clear
    entries = list(node_store.entries(device_id="d1"))
    assert [e.decision for e in entries] == ["set", "set", "cleared"]
    assert all(SECRET.decode() not in e.reason for e in entries)


def test_fail_no_secret_for_an_unlisted_device(node_store: NodeStore) -> None:
    assert not node_store.set_cmp_secret("ghost", SECRET, label=None, now=T0, audit=_audit("set"))
    assert node_store.cmp_secret("ghost") is None
    assert list(node_store.entries(device_id="d1")) == []


def test_ok_register_of_schema_9_gains_cmp_secrets(backend: Backend) -> None:
    """Schema 9 -> 10 on either engine: the devices stay, secrets can be set."""
    backend.node().add_device(NewDevice("d1", None, manufacturer="Acme"), now=T0)
    backend.raw("node", "DROP TABLE cmp_secret")
    backend.raw("node", "UPDATE schema_version SET version = 9 WHERE component = 'customer_node'")
    store = backend.node()
    assert store.cmp_secret("d1") is None
    assert store.set_cmp_secret("d1", SECRET, label=None, now=T0, audit=_audit("set"))
