"""The node's queue of revocations owed to the customer CA system, in the register's SQLite file.

The functions run inside a caller's write transaction, so an order lands with the state change
that causes it; ``RevocationQueue`` adds the operations of the running node that sends them.
Two orders on one certificate are sent in the order they were made: an order is due only when
no earlier order on the same certificate is still open (a hold is never overtaken by its
release, even when the hold keeps failing). An order is closed only under the current token of
the sender lease (sqlite_sender_lease): one sender at a time, across every node machine.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from ztpki.store import sqlite_audit
from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.records import AuditRecord
from ztpki.store.revocation_records import (
    QueuedRevocation,
    QueueStatus,
    RevocationAction,
    RevocationOrder,
)
from ztpki.store.sql import Database, SQLConnection
from ztpki.store.sqlite_sender_lease import FENCE, SenderLeases

_COLUMNS = (
    "seq, device_id, label, ca_name, serial, action, reason, status, created_at, due_at, "
    "attempts, last_error, done_at"
)


# The audit trail's endpoint for every step of a revocation: requested, sent, failed.
AUDIT_ENDPOINT = "node/revocation"


def insert_orders(conn: SQLConnection, orders: Sequence[RevocationOrder], *, now: datetime) -> None:
    """Queue the orders, each with its "revocation-requested" audit entry."""
    if not orders:
        return  # nothing to send (and no audit head to read: a round trip to a server)
    at = encode_instant(now, name="now")
    conn.executemany(
        f"INSERT INTO node_revocation ({_COLUMNS.removeprefix('seq, ')}) "  # noqa: S608
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL)",
        [
            (
                order.device_id,
                order.label,
                order.ca_name,
                order.serial,
                order.action.value,
                order.reason,
                (QueueStatus.WAITING if order.waiting else QueueStatus.PENDING).value,
                at,
                None if order.waiting else at,
            )
            for order in orders
        ],
    )
    sqlite_audit.append_records(
        conn,
        [
            AuditRecord(
                at=now,
                endpoint=AUDIT_ENDPOINT,
                decision="revocation-requested",
                reason=_requested(order),
                device_id=order.device_id,
                serial=order.serial,
            )
            for order in orders
        ],
    )


def _requested(order: RevocationOrder) -> str:
    what = (
        "release of the hold"
        if order.action is RevocationAction.RELEASE
        else f"revocation ({order.reason})"
    )
    when = "once the renewed certificate is used" if order.waiting else "queued"
    text = f"{what} {when} at CA {order.ca_name or '(default)'} (label {order.label})"
    return f"{text}: {order.cause}" if order.cause else text


def release_waiting(conn: SQLConnection, device_id: str, *, due_at: datetime) -> int:
    """Make the device's waiting orders due at ``due_at``; how many there were."""
    return conn.execute(
        "UPDATE node_revocation SET status = 'pending', due_at = ? "
        "WHERE device_id = ? AND status = 'waiting'",
        (encode_instant(due_at, name="due_at"), device_id),
    ).rowcount


def _append(conn: SQLConnection, audit: AuditRecord | None) -> None:
    if audit is not None:
        sqlite_audit.append_records(conn, [audit])


class RevocationQueue(SenderLeases):
    """The queue operations of SQLiteNodeStore (a mixin over its database)."""

    _db: Database

    def queue_revocations(
        self, orders: Sequence[RevocationOrder], *, now: datetime, audit: AuditRecord | None = None
    ) -> None:
        """Queue orders that no state change causes (a certificate the node discarded)."""
        with self._db.write() as conn:
            insert_orders(conn, orders, now=now)
            _append(conn, audit)

    def revocations(
        self,
        *,
        device_id: str | None = None,
        open_only: bool = False,
        statuses: Collection[QueueStatus] | None = None,
    ) -> list[QueuedRevocation]:
        """Queued orders in the order they were made, optionally one device's, open ones, or
        those in ``statuses``."""
        where: list[str] = []
        params: list[Any] = []
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if open_only:
            where.append("status IN ('waiting', 'pending')")
        if statuses is not None:
            wanted = sorted({QueueStatus(status).value for status in statuses})
            where.append(f"status IN ({', '.join('?' for _ in wanted) or 'NULL'})")
            params.extend(wanted)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM node_revocation {clause} ORDER BY seq",  # noqa: S608
                params,
            ).fetchall()
        return [_queued(row) for row in rows]

    def open_revocation_counts(self) -> dict[str, int]:
        """How many orders wait for their grace period and how many are due or retrying
        (the queue's depth; node_revocation_open makes it an index scan)."""
        with self._db.read(single=True) as conn:
            rows = conn.execute(
                "SELECT status, COUNT(*) FROM node_revocation "
                "WHERE status IN ('waiting', 'pending') GROUP BY status"
            ).fetchall()
        return {"waiting": 0, "pending": 0, **{str(s): int(n) for s, n in rows}}

    def due_revocations(self, *, now: datetime, limit: int = 32) -> list[QueuedRevocation]:
        """Pending orders due by ``now`` whose certificate has no earlier open order."""
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM node_revocation r "  # noqa: S608
                "WHERE r.status = 'pending' AND r.due_at <= ? AND NOT EXISTS ("
                "SELECT 1 FROM node_revocation e WHERE e.serial = r.serial AND e.seq < r.seq "
                "AND e.status IN ('waiting', 'pending')) ORDER BY r.seq LIMIT ?",
                (encode_instant(now, name="now"), limit),
            ).fetchall()
        return [_queued(row) for row in rows]

    def revocation_done(
        self,
        seq: int,
        *,
        lease: int,
        now: datetime,
        refused: str | None = None,
        audit: AuditRecord | None = None,
    ) -> bool:
        """Close an open order: DONE, or REFUSED with the CA system's words; only under the
        sender lease's current token ``lease``."""
        status = QueueStatus.REFUSED if refused is not None else QueueStatus.DONE
        with self._db.write() as conn:
            changed = conn.execute(
                "UPDATE node_revocation SET status = ?, done_at = ?, last_error = ?, "  # noqa: S608
                f"attempts = attempts + 1 WHERE seq = ? AND status = 'pending' AND {FENCE}",
                (status.value, encode_instant(now, name="now"), refused, seq, lease),
            ).rowcount
            if changed != 1:
                return False
            _append(conn, audit)
        return True

    def revocation_failed(
        self,
        seq: int,
        *,
        lease: int,
        error: str,
        retry_at: datetime,
        audit: AuditRecord | None = None,
    ) -> bool:
        """Count a failed attempt of a pending order and set when to try it again; only under
        the sender lease's current token ``lease``."""
        with self._db.write() as conn:
            changed = conn.execute(
                "UPDATE node_revocation SET attempts = attempts + 1, last_error = ?, "  # noqa: S608
                f"due_at = ? WHERE seq = ? AND status = 'pending' AND {FENCE}",
                (error, encode_instant(retry_at, name="retry_at"), seq, lease),
            ).rowcount
            if changed != 1:
                return False
            _append(conn, audit)
        return True


def _optional_instant(value: str | None) -> datetime | None:
    return None if value is None else decode_instant(value)


def _queued(row: Sequence[Any]) -> QueuedRevocation:
    return QueuedRevocation(
        seq=int(row[0]),
        device_id=row[1],
        label=row[2],
        ca_name=row[3],
        serial=row[4],
        action=row[5],
        reason=row[6],
        status=row[7],
        created_at=decode_instant(row[8]),
        due_at=_optional_instant(row[9]),
        attempts=int(row[10]),
        last_error=row[11],
        done_at=_optional_instant(row[12]),
    )
