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


HEAD = "SELECT seq, entry_hash FROM audit_entry ORDER BY seq DESC LIMIT 1"
HEAD_KEY = "audit_head"  # the connections' memo: the head as last read or written
_INSERT = f"INSERT INTO audit_entry ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
# An entry after the known head, if that is the head still (nothing after it, and it is what
# we know): nothing written otherwise.
_AFTER_KNOWN_HEAD = (
    "EXISTS (SELECT 1 FROM audit_entry WHERE seq = ? AND entry_hash = ?) "
    "AND NOT EXISTS (SELECT 1 FROM audit_entry WHERE seq > ?)"
)
_INSERT_AFTER_KNOWN_HEAD = (
    f"INSERT INTO audit_entry ({_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? "
    f"WHERE {_AFTER_KNOWN_HEAD}"
)


def append_records(conn: SQLConnection, records: Sequence[AuditRecord]) -> list[AuditEntry]:
    """Chain ``records`` after the current head; the caller holds the write lock.

    The head is remembered per database object (the connection's ``memo``): the one this
    object appended last, or on a database server the one read as the write lock was taken
    (``HEAD``, see ``Database.remember_at_lock``). The first entry then goes in with one
    conditional statement instead of a read of the head and an insert. When another process
    appended since, or that append was rolled back, the statement writes nothing and the head
    is read as before.
    """
    if not records:
        return []
    first = _after_known_head(conn, records[0])
    appended: list[AuditEntry] = []
    if first is not None:
        entry, params = first
        if conn.execute(_INSERT_AFTER_KNOWN_HEAD, params).rowcount:
            appended.append(entry)
    if not appended:
        appended.append(_append_after_read_head(conn, records[0]))
    entry = appended[0]
    for record in records[1:]:
        entry = next_entry(record, seq=entry.seq + 1, prev_hash=entry.entry_hash)
        conn.execute(_INSERT, _row(entry))
        appended.append(entry)
    _remember(conn, entry)
    return appended


def folded_append(
    conn: SQLConnection, record: AuditRecord, *, when: str
) -> tuple[AuditEntry, str, tuple[Any, ...]] | None:
    """For PostgreSQL: the entry of ``record`` after the known head, and a CTE ``entry AS
    (INSERT ... RETURNING 1)`` (with its parameters) that appends it only when the CTE named
    ``when`` returned a row and that head is the head still, to put in the statement making
    the change the record tells of: one round trip for both. None: no head is known. After the
    statement, ``settle_folded`` with whether ``entry`` returned a row."""
    known = _after_known_head(conn, record)
    if known is None:
        return None
    entry, params = known
    cte = (
        f"entry AS (INSERT INTO audit_entry ({_COLUMNS}) "  # noqa: S608
        f"SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM {when}) "
        f"AND {_AFTER_KNOWN_HEAD} RETURNING 1)"
    )
    return entry, cte, params


def settle_folded(
    conn: SQLConnection, entry: AuditEntry, record: AuditRecord, *, written: bool
) -> None:
    """After a statement with ``folded_append``'s CTE made its change: remember ``entry``,
    or, when the head had moved, append ``record`` after the head as it is."""
    _remember(conn, entry if written else _append_after_read_head(conn, record))


def _after_known_head(
    conn: SQLConnection, record: AuditRecord
) -> tuple[AuditEntry, tuple[Any, ...]] | None:
    memo: dict[str, Any] | None = getattr(conn, "memo", None)
    known: tuple[int, str] | None = None if memo is None else memo.get(HEAD_KEY)
    if known is None:
        return None
    seq, prev_hash = known
    entry = next_entry(record, seq=seq + 1, prev_hash=prev_hash)
    return entry, (*_row(entry), seq, prev_hash, seq)


def _append_after_read_head(conn: SQLConnection, record: AuditRecord) -> AuditEntry:
    row = conn.execute(HEAD).fetchone()
    seq, prev_hash = (0, GENESIS) if row is None else (int(row[0]), str(row[1]))
    entry = next_entry(record, seq=seq + 1, prev_hash=prev_hash)
    conn.execute(_INSERT, _row(entry))
    return entry


def _remember(conn: SQLConnection, entry: AuditEntry) -> None:
    memo: dict[str, Any] | None = getattr(conn, "memo", None)
    if memo is not None:
        memo[HEAD_KEY] = (entry.seq, entry.entry_hash)


def select_entries(
    conn: SQLConnection, *, device_id: str | None, after: int, limit: int
) -> list[AuditEntry]:
    """Up to ``limit`` entries (of ``device_id``, when given) after seq ``after``, in order."""
    where = "seq > ?" + (" AND device_id = ?" if device_id is not None else "")
    params: tuple[Any, ...] = (after,) + ((device_id,) if device_id is not None else ())
    query = f"SELECT {_COLUMNS} FROM audit_entry WHERE {where} ORDER BY seq LIMIT ?"  # noqa: S608
    return [_entry(row) for row in conn.execute(query, (*params, limit))]


def seq_before_newest(conn: SQLConnection, *, device_id: str | None, limit: int) -> int:
    """The seq after which the newest ``limit`` entries (of ``device_id``) follow; 0: all."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    where = "WHERE device_id = ?" if device_id is not None else ""
    params: tuple[Any, ...] = (device_id,) if device_id is not None else ()
    row = conn.execute(
        f"SELECT seq FROM audit_entry {where} ORDER BY seq DESC LIMIT 1 OFFSET ?",  # noqa: S608
        (*params, limit),
    ).fetchone()
    return 0 if row is None else int(row[0])


class UnreadableEntry(ValueError):
    """A stored entry that cannot even be decoded (its time was overwritten, say)."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"entry {seq} cannot be decoded; it was altered")
        self.seq = seq


def iterate_entries(conn: SQLConnection, *, page: int = 10_000) -> Iterator[AuditEntry]:
    """Every entry in seq order, streamed (the trail may be long): ``page`` rows at a time,
    all in the caller's one transaction (one snapshot). A driver's plain cursor may hold a
    whole result set in memory (psycopg's does), so one query for all would not stream."""
    after = 0
    while True:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM audit_entry WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            (after, page),
        ).fetchall()
        for row in rows:
            try:
                entry = _entry(row)
            except (TypeError, ValueError):
                raise UnreadableEntry(int(row[0])) from None
            yield entry
        if len(rows) < page:
            return
        after = int(rows[-1][0])


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
