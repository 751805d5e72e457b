"""The audit trail's table and the queries on it, run inside a caller's transaction.

Appending reads the chain head and inserts after it while the caller holds the database write
lock (``BEGIN IMMEDIATE``), so appenders in several processes extend one chain. The schema
backs this: ``seq`` and ``prev_hash`` are unique, so two entries can never claim the same place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ztpki.store.audit import GENESIS, next_entry
from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.records import AuditEntry, AuditRecord
from ztpki.store.sql import SQLConnection

SCHEMA = (
    """
    CREATE TABLE audit_entry (
        seq                INTEGER PRIMARY KEY CHECK (seq >= 1),
        at                 TEXT NOT NULL,
        device_id          TEXT,
        client_fingerprint TEXT,
        endpoint           TEXT NOT NULL,
        decision           TEXT NOT NULL,
        reason             TEXT NOT NULL,
        serial             TEXT,
        prev_hash          TEXT NOT NULL UNIQUE CHECK (length(prev_hash) = 64),
        entry_hash         TEXT NOT NULL UNIQUE CHECK (length(entry_hash) = 64)
    )""",
    "CREATE INDEX audit_entry_by_device ON audit_entry (device_id, seq)",
)

_COLUMNS = (
    "seq, at, device_id, client_fingerprint, endpoint, decision, reason, serial, "
    "prev_hash, entry_hash"
)


_HEAD = "SELECT seq, entry_hash FROM audit_entry ORDER BY seq DESC LIMIT 1"
_INSERT = f"INSERT INTO audit_entry ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
# An entry after the head this connection's database last wrote, if that is the head still
# (nothing after it, and it is what we wrote): no rows otherwise, and nothing written.
_INSERT_AFTER_KNOWN_HEAD = (
    f"INSERT INTO audit_entry ({_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "  # noqa: S608
    "WHERE EXISTS (SELECT 1 FROM audit_entry WHERE seq = ? AND entry_hash = ?) "
    "AND NOT EXISTS (SELECT 1 FROM audit_entry WHERE seq > ?)"
)
_MEMO_KEY = "audit_head"


def append_records(conn: SQLConnection, records: Sequence[AuditRecord]) -> list[AuditEntry]:
    """Chain ``records`` after the current head; the caller holds the write lock.

    The head this database object last appended is remembered (the connection's ``memo``):
    the first entry then goes in with one conditional statement instead of a read of the
    head and an insert, which a database server answers in one round trip instead of two.
    When another process appended since, or that append was rolled back, the statement
    writes nothing and the head is read as before.
    """
    if not records:
        return []
    memo: dict[str, Any] | None = getattr(conn, "memo", None)
    known: tuple[int, str] | None = None if memo is None else memo.get(_MEMO_KEY)
    appended: list[AuditEntry] = []
    if known is not None:
        seq, prev_hash = known
        entry = next_entry(records[0], seq=seq + 1, prev_hash=prev_hash)
        if conn.execute(_INSERT_AFTER_KNOWN_HEAD, (*_row(entry), seq, prev_hash, seq)).rowcount:
            appended.append(entry)
    if not appended:
        row = conn.execute(_HEAD).fetchone()
        seq, prev_hash = (0, GENESIS) if row is None else (int(row[0]), str(row[1]))
        entry = next_entry(records[0], seq=seq + 1, prev_hash=prev_hash)
        conn.execute(_INSERT, _row(entry))
        appended.append(entry)
    for record in records[1:]:
        entry = next_entry(record, seq=entry.seq + 1, prev_hash=entry.entry_hash)
        conn.execute(_INSERT, _row(entry))
        appended.append(entry)
    if memo is not None:
        memo[_MEMO_KEY] = (entry.seq, entry.entry_hash)
    return appended


def select_entries(
    conn: SQLConnection, *, device_id: str | None, limit: int | None
) -> list[AuditEntry]:
    """Entries in seq order; with ``limit`` only the newest ``limit``."""
    if limit is not None and limit < 0:
        raise ValueError("limit must not be negative")
    where = "WHERE device_id = ?" if device_id is not None else ""
    params: tuple[Any, ...] = (device_id,) if device_id is not None else ()
    if limit is None:
        query = f"SELECT {_COLUMNS} FROM audit_entry {where} ORDER BY seq"  # noqa: S608
        return [_entry(row) for row in conn.execute(query, params)]
    query = f"SELECT {_COLUMNS} FROM audit_entry {where} ORDER BY seq DESC LIMIT ?"  # noqa: S608
    newest_first = [_entry(row) for row in conn.execute(query, (*params, limit))]
    return newest_first[::-1]


class UnreadableEntry(ValueError):
    """A stored entry that cannot even be decoded (its time was overwritten, say)."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"entry {seq} cannot be decoded; it was altered")
        self.seq = seq


def iterate_entries(conn: SQLConnection) -> Iterator[AuditEntry]:
    """Every entry in seq order, streamed (the trail may be long)."""
    for row in conn.execute(f"SELECT {_COLUMNS} FROM audit_entry ORDER BY seq"):  # noqa: S608
        try:
            entry = _entry(row)
        except (TypeError, ValueError):
            raise UnreadableEntry(int(row[0])) from None
        yield entry


def count_by_decision(conn: SQLConnection) -> dict[str, int]:
    rows = conn.execute("SELECT decision, COUNT(*) FROM audit_entry GROUP BY decision")
    return {str(decision): int(count) for decision, count in rows}


def _row(entry: AuditEntry) -> tuple[Any, ...]:
    return (
        entry.seq,
        encode_instant(entry.at),
        entry.device_id,
        entry.client_fingerprint,
        entry.endpoint,
        entry.decision,
        entry.reason,
        entry.serial,
        entry.prev_hash,
        entry.entry_hash,
    )


def _entry(row: Sequence[Any]) -> AuditEntry:
    return AuditEntry(
        seq=int(row[0]),
        at=decode_instant(row[1]),
        device_id=row[2],
        client_fingerprint=row[3],
        endpoint=row[4],
        decision=row[5],
        reason=row[6],
        serial=row[7],
        prev_hash=row[8],
        entry_hash=row[9],
    )
