"""The audit hash chain: pure encoding and verification, and the AuditLog contract."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from store_backends import T0, Backend, append_audit_entries

from ztpki.store import GENESIS, AuditRecord, NodeStore, canonical_bytes, chain_hash, verify_chain
from ztpki.store.audit import next_entry
from ztpki.store.records import AuditEntry

FIELDS = {
    "seq": 1,
    "at": T0,
    "device_id": "d1",
    "client_fingerprint": "ab" * 32,
    "endpoint": "simpleenroll",
    "decision": "issued",
    "reason": "authorized",
    "serial": "0a",
}


def chain(count: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev = GENESIS
    for i in range(count):
        rec = AuditRecord(at=T0, endpoint="cacerts", decision="served", reason=f"r{i}")
        entries.append(next_entry(rec, seq=i + 1, prev_hash=prev))
        prev = entries[-1].entry_hash
    return entries


# ---------------------------------------------------------------- pure encoding


def test_ok_canonical_bytes_are_sorted_compact_json() -> None:
    data = canonical_bytes(**FIELDS)  # type: ignore[arg-type]
    assert data == (
        b'{"at":"2024-05-01T12:00:00.000000Z","client_fingerprint":"' + b"ab" * 32 + b'",'
        b'"decision":"issued","device_id":"d1","endpoint":"simpleenroll","reason":"authorized",'
        b'"seq":1,"serial":"0a"}'
    )


def test_ok_same_instant_in_any_zone_encodes_the_same() -> None:
    elsewhere = T0.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert canonical_bytes(**{**FIELDS, "at": elsewhere}) == canonical_bytes(**FIELDS)  # type: ignore[arg-type]


def test_fail_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        canonical_bytes(**{**FIELDS, "at": datetime(2024, 5, 1)})  # type: ignore[arg-type]


optional_text = st.none() | st.text(max_size=40)


@given(
    seq=st.integers(min_value=1, max_value=2**62),
    at=st.datetimes(timezones=st.just(UTC)),
    device_id=optional_text,
    endpoint=st.text(min_size=1, max_size=20),
    reason=st.text(max_size=80),
    serial=optional_text,
)
def test_ok_canonical_bytes_round_trip(
    seq: int, at: datetime, device_id: str | None, endpoint: str, reason: str, serial: str | None
) -> None:
    fields = {
        **FIELDS,
        "seq": seq,
        "at": at,
        "device_id": device_id,
        "endpoint": endpoint,
        "reason": reason,
        "serial": serial,
    }
    decoded = json.loads(canonical_bytes(**fields))  # type: ignore[arg-type]
    assert decoded["seq"] == seq and decoded["reason"] == reason
    assert decoded["device_id"] == device_id and decoded["serial"] == serial
    assert datetime.fromisoformat(decoded["at"]) == at


@given(reason=st.text(max_size=40), other=st.text(max_size=40))
def test_ok_different_fields_hash_differently(reason: str, other: str) -> None:
    a = chain_hash(GENESIS, canonical_bytes(**{**FIELDS, "reason": reason}))  # type: ignore[arg-type]
    b = chain_hash(GENESIS, canonical_bytes(**{**FIELDS, "reason": other}))  # type: ignore[arg-type]
    assert (a == b) == (reason == other)


def test_ok_chain_hash_covers_previous_hash_then_entry() -> None:
    expected = hashlib.sha256(GENESIS.encode() + b"{}").hexdigest()
    assert chain_hash(GENESIS, b"{}") == expected
    assert chain_hash("1" * 64, b"{}") != expected


# ---------------------------------------------------------------- pure verification


def test_ok_verify_intact_chain() -> None:
    result = verify_chain(chain(5))
    assert (result.ok, result.checked, result.first_bad_seq) == (True, 5, None)
    assert verify_chain([]).ok
    assert verify_chain(chain(3), expected_head=chain(3)[-1].entry_hash).ok


def test_fail_verify_altered_entry() -> None:
    entries = chain(5)
    entries[2] = replace(entries[2], reason="forged")
    result = verify_chain(entries)
    assert (result.ok, result.checked, result.first_bad_seq) == (False, 3, 3)
    assert "altered" in result.reason


def test_fail_verify_rehashed_entry_breaks_the_next_link() -> None:
    entries = chain(5)
    forged = replace(entries[2], reason="forged")
    entries[2] = replace(forged, entry_hash=chain_hash(forged.prev_hash, _canonical(forged)))
    result = verify_chain(entries)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "link" in result.reason


def test_fail_verify_missing_or_reordered_entries() -> None:
    entries = chain(5)
    assert verify_chain(entries[:2] + entries[3:]).first_bad_seq == 4
    assert verify_chain([entries[1], entries[0]]).first_bad_seq == 2
    assert verify_chain(entries[1:]).first_bad_seq == 2


def test_fail_verify_truncation_against_expected_head() -> None:
    entries = chain(5)
    result = verify_chain(entries[:4], expected_head=entries[-1].entry_hash)
    assert (result.ok, result.checked, result.first_bad_seq) == (False, 4, None)
    assert "missing" in result.reason


def _canonical(entry: AuditEntry) -> bytes:
    return canonical_bytes(
        seq=entry.seq,
        at=entry.at,
        device_id=entry.device_id,
        client_fingerprint=entry.client_fingerprint,
        endpoint=entry.endpoint,
        decision=entry.decision,
        reason=entry.reason,
        serial=entry.serial,
    )


# ---------------------------------------------------------------- AuditLog contract


def append(store: NodeStore, decision: str, device_id: str | None = "d1", **extra: str) -> None:
    store.append(
        at=T0,
        device_id=device_id,
        client_fingerprint=extra.get("client_fingerprint"),
        endpoint=extra.get("endpoint", "simpleenroll"),
        decision=decision,
        reason=extra.get("reason", "because"),
        serial=extra.get("serial"),
    )


def test_ok_append_returns_the_chained_entry(node_store: NodeStore) -> None:
    first = node_store.append(
        at=T0,
        device_id="d1",
        client_fingerprint="ab" * 32,
        endpoint="simpleenroll",
        decision="issued",
        reason="authorized",
        serial="0a",
    )
    assert (first.seq, first.prev_hash) == (1, GENESIS)
    assert first.entry_hash == chain_hash(GENESIS, canonical_bytes(**FIELDS))  # type: ignore[arg-type]
    second = node_store.append_many([AuditRecord(at=T0, endpoint="e", decision="d", reason="")])
    assert [(e.seq, e.prev_hash) for e in second] == [(2, first.entry_hash)]
    assert node_store.entries() == [first, *second]


def test_ok_entries_filter_limit_and_counts(node_store: NodeStore) -> None:
    for i, decision in enumerate(["issued", "refused", "refused", "issued", "refused"]):
        append(node_store, decision, device_id=f"d{i % 2}")
    assert [e.seq for e in node_store.entries()] == [1, 2, 3, 4, 5]
    assert [e.seq for e in node_store.entries(limit=2)] == [4, 5]
    assert [e.seq for e in node_store.entries(device_id="d1")] == [2, 4]
    assert [e.seq for e in node_store.entries(device_id="d0", limit=1)] == [5]
    assert node_store.entries(limit=0) == []
    assert node_store.entries(device_id="nobody") == []
    assert node_store.counts_by_decision() == {"issued": 2, "refused": 3}


def test_ok_empty_trail(node_store: NodeStore) -> None:
    assert node_store.verify().ok
    assert node_store.counts_by_decision() == {}
    assert node_store.append_many([]) == []


def test_ok_group_commit_keeps_the_chain(node_store: NodeStore) -> None:
    append(node_store, "first")
    records = [AuditRecord(at=T0, endpoint="e", decision="bulk", reason=str(i)) for i in range(50)]
    entries = node_store.append_many(records)
    assert [e.seq for e in entries] == list(range(2, 52))
    assert node_store.verify() == verify_chain(node_store.entries())
    assert node_store.verify().checked == 51


@pytest.mark.parametrize(
    ("column", "value"),
    [("reason", "forged"), ("decision", "issued"), ("serial", "ff"), ("at", "yesterday")],
    ids=["fail-reason", "fail-decision", "fail-serial", "fail-unreadable-time"],
)
def test_fail_verify_reports_first_tampered_row(
    node_store: NodeStore, backend: Backend, column: str, value: str
) -> None:
    for i in range(5):
        append(node_store, "refused", reason=f"r{i}")
    assert node_store.verify().ok
    backend.raw("node", f"UPDATE audit_entry SET {column} = ? WHERE seq = 3", value)
    result = node_store.verify()
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 3, 3)


def test_fail_verify_reports_a_deleted_row(node_store: NodeStore, backend: Backend) -> None:
    for i in range(5):
        append(node_store, "refused", reason=f"r{i}")
    backend.raw("node", "DELETE FROM audit_entry WHERE seq = 2")
    result = node_store.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_fail_schema_refuses_a_second_entry_after_the_same_one(
    node_store: NodeStore, backend: Backend
) -> None:
    append(node_store, "refused")
    (entry,) = node_store.entries()
    insert = (
        "INSERT INTO audit_entry (seq, at, endpoint, decision, reason, prev_hash, entry_hash) "
        "VALUES (?, '2024-05-01T12:00:00.000000Z', 'e', 'd', 'r', ?, ?)"
    )
    with pytest.raises(backend.integrity_error):
        backend.raw("node", insert, 2, GENESIS, "1" * 64)  # forks the chain at genesis
    with pytest.raises(backend.integrity_error):
        backend.raw("node", insert, 1, entry.entry_hash, "1" * 64)  # reuses seq 1
    backend.raw("node", insert, 2, entry.entry_hash, "1" * 64)  # control: a proper next link
    assert [e.seq for e in node_store.entries()] == [1, 2]


def test_ok_threads_appending_keep_one_chain(node_store: NodeStore) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            barrier.wait(timeout=60)
            for i in range(25):
                append(node_store, "issued", device_id=f"d{worker}", reason=str(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    result = node_store.verify()
    assert (result.ok, result.checked) == (True, 200)


@pytest.mark.timeout(180)
def test_ok_processes_appending_keep_one_chain(node_store: NodeStore, backend: Backend) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers, per_worker = 4, 30
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=append_audit_entries,
            args=(backend.kind, backend.locator, w, per_worker, barrier, results),
        )
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    seqs = [seq for _ in processes for seq in results.get(timeout=120)[1]]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    # Every fifth append is a pair via append_many: 30 calls write 36 entries per worker.
    total = workers * (per_worker + per_worker // 5)
    assert sorted(seqs) == list(range(1, total + 1))
    result = node_store.verify()
    assert (result.ok, result.checked) == (True, total)
    by_worker = node_store.entries(device_id="dev-0")
    assert len(by_worker) == total // workers


def test_ok_appends_after_another_writer_and_after_a_rollback_keep_one_chain(
    node_store: NodeStore, backend: Backend
) -> None:
    # Each store remembers the head it wrote last; the other store's appends and an undone
    # append make that memory stale, and the chain must still come out whole.
    other = backend.node()
    for i in range(3):
        append(node_store, f"mine-{i}")
        append(other, f"other-{i}")
    with pytest.raises(RuntimeError), node_store.group():  # type: ignore[attr-defined]
        append(node_store, "undone")
        raise RuntimeError("the group ends before its commit")
    append(node_store, "after-undone")
    entries = node_store.entries()
    assert [e.seq for e in entries] == list(range(1, 8))
    assert [e.decision for e in entries][-1] == "after-undone"
    assert "undone" not in [e.decision for e in entries]
    assert node_store.verify() == verify_chain(entries) and node_store.verify().ok


def test_ok_an_append_after_its_own_costs_one_statement(node_store: NodeStore) -> None:
    append(node_store, "first")
    database = node_store.database  # type: ignore[attr-defined]
    before = database.counters.snapshot()["round_trips"]
    append(node_store, "second")
    used = database.counters.snapshot()["round_trips"] - before
    # One statement for the entry, with the transaction's own: BEGIN (+ lock) and COMMIT
    # on PostgreSQL (one round trip each), BEGIN IMMEDIATE and COMMIT on SQLite.
    assert used == 3
    assert node_store.verify().ok and node_store.verify().checked == 2
