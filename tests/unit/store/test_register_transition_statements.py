"""Both engines: a transition with its audit entry, made by two node workers in turn.

On PostgreSQL a transition is one statement (the row, the chain, the audit entry after the head
read as the write lock was taken); the chain must come out whole whichever worker appended
last, also when a third writer appended in between, and a refused transition writes nothing.
"""

from __future__ import annotations

from store_backends import T0, Backend, sha256_hex

from ztpki.store import AuditRecord, DeviceState, NewDevice, NodeStore


def record(decision: str, device_id: str) -> AuditRecord:
    return AuditRecord(
        at=T0, endpoint="simpleenroll", decision=decision, reason="test", device_id=device_id
    )


def customize(store: NodeStore, device_id: str, *, chain: tuple[bytes, ...]) -> None:
    assert store.begin_issuance(
        device_id, allowed_from={DeviceState.LISTED, DeviceState.CUSTOMIZED}, token="t",
        label="default", now=T0, lease_seconds=60,
    )  # fmt: skip
    assert store.complete_issuance(
        device_id, token="t", new_state=DeviceState.ISSUED, serial=f"5e{device_id}",
        spki=sha256_hex(device_id), certificate_der=b"\x30c", chain_der=chain, now=T0,
        audit=record("issued", device_id),
    )  # fmt: skip
    assert store.confirm(device_id, serial=f"5e{device_id}", now=T0, audit=record("ok", device_id))


def test_ok_two_workers_and_a_third_writer_keep_one_chain(backend: Backend) -> None:
    first, second, third = backend.node(), backend.node(), backend.node()
    ids = [f"d{n}" for n in range(6)]
    for device_id in ids:
        first.add_device(NewDevice(device_id, sha256_hex(device_id)), now=T0)
    for n, device_id in enumerate(ids):
        worker = (first, second)[n % 2]
        customize(worker, device_id, chain=(b"\x30root", b"\x30sub"))
        if n == 2:  # a writer neither worker knows of moves the head
            third.append(at=T0, device_id=None, client_fingerprint=None, endpoint="console",
                         decision="login", reason="test", serial=None)  # fmt: skip
    entries = list(first.entries())
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert [(e.decision, e.device_id) for e in entries if e.decision != "login"] == [
        (decision, device_id) for device_id in ids for decision in ("issued", "ok")
    ]
    assert first.verify().ok and first.verify().checked == 2 * len(ids) + 1
    rows = [second.get(device_id) for device_id in ids]
    assert all(r is not None and r.state is DeviceState.CUSTOMIZED for r in rows)
    assert all(r is not None and r.issued_chain_der == (b"\x30root", b"\x30sub") for r in rows)


def test_ok_a_reissue_overwrites_the_chain_and_drops_what_is_past_it(backend: Backend) -> None:
    store = backend.node()
    store.add_device(NewDevice("d1", sha256_hex("d1")), now=T0)
    customize(store, "d1", chain=(b"\x30a", b"\x30b", b"\x30c"))
    assert store.unblock("d1", now=T0, audit=record("x", "d1")) is False  # refused: no entry
    customize(store, "d1", chain=(b"\x30z",))
    row = store.get("d1")
    assert row is not None and row.issued_chain_der == (b"\x30z",)
    assert [e.decision for e in store.entries()] == ["issued", "ok", "issued", "ok"]
    assert store.verify().ok


def test_ok_a_transition_costs_one_statement_on_postgresql(backend: Backend) -> None:
    store = backend.node()
    # The trail's first entry: after it, an entry goes after a head the store knows.
    store.add_device(NewDevice("d1", sha256_hex("d1")), now=T0, audit=record("add", "d1"))
    assert store.begin_issuance(
        "d1", allowed_from={DeviceState.LISTED}, token="t", label="default", now=T0,
        lease_seconds=60,
    )  # fmt: skip
    database = store.database  # type: ignore[attr-defined]
    before = database.counters.snapshot()["round_trips"]
    assert store.complete_issuance(
        "d1", token="t", new_state=DeviceState.ISSUED, serial="0a", spki=sha256_hex("k"),
        certificate_der=b"\x30c", chain_der=(b"\x30r",), now=T0, audit=record("issued", "d1"),
    )  # fmt: skip
    assert store.confirm("d1", serial="0a", now=T0, audit=record("ok", "d1"))
    used = database.counters.snapshot()["round_trips"] - before
    if database.dialect == "postgresql":
        # Each: BEGIN + write lock + the audit head, the one statement, COMMIT.
        assert used == 2 * 3
    else:
        assert used >= 2 * 4  # SQLite counts every statement it ran
    assert [e.decision for e in store.entries()] == ["add", "issued", "ok"]
