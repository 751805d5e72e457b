"""The CA system's revocation records and CRL numbers in SQLite.

Part of SQLiteIssuanceStore, kept apart because it is the CA's revocation status rather than
its issuance record. The schema keeps the rules: one revocation per certificate (primary key,
referencing the issued certificate), one counter row per CA whose ``version`` grows with every
change of the revoked set and whose ``crl_number`` only ever grows. Every change commits
(with fsync in a durable database) before the method returns. The queries use only syntax
PostgreSQL shares (upserts with ON CONFLICT, RETURNING).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ztpki.errors import UnknownCertificate
from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.records import Revocation, RevocationReason
from ztpki.store.sql import Database, SQLConnection

_REASONS = ", ".join(f"'{reason.value}'" for reason in RevocationReason)

SCHEMA = (
    f"""
    CREATE TABLE revocation (
        ca_name         TEXT NOT NULL,
        serial          TEXT NOT NULL,
        revoked_at      TEXT NOT NULL,
        reason          TEXT NOT NULL CHECK (reason IN ({_REASONS})),
        invalidity_date TEXT,
        PRIMARY KEY (ca_name, serial),
        FOREIGN KEY (ca_name, serial) REFERENCES issued_certificate (ca_name, serial)
    )""",
    """
    CREATE TABLE ca_revocation_state (
        ca_name     TEXT PRIMARY KEY CHECK (ca_name <> ''),
        version     INTEGER NOT NULL CHECK (version >= 0),
        changed_at  TEXT,
        crl_number  INTEGER NOT NULL CHECK (crl_number >= 0)
    )""",
)

_REVOCATION_COLUMNS = "ca_name, serial, revoked_at, reason, invalidity_date"
_CHANGED = (
    "INSERT INTO ca_revocation_state (ca_name, version, changed_at, crl_number) "
    "VALUES (?, 1, ?, 0) ON CONFLICT (ca_name) DO UPDATE SET "
    "version = ca_revocation_state.version + 1, changed_at = excluded.changed_at"
)
_NEXT_CRL_NUMBER = (
    "INSERT INTO ca_revocation_state (ca_name, version, changed_at, crl_number) "
    "VALUES (?, 0, NULL, 1) ON CONFLICT (ca_name) DO UPDATE SET "
    "crl_number = ca_revocation_state.crl_number + 1 RETURNING crl_number"
)


class SQLiteRevocations:
    """The revocation half of SQLiteIssuanceStore."""

    _db: Database

    def revoke(
        self,
        ca_name: str,
        serial: str,
        *,
        reason: RevocationReason,
        at: datetime,
        invalidity_date: datetime | None = None,
    ) -> Revocation:
        wanted = Revocation(
            ca_name=ca_name,
            serial=serial,
            revoked_at=at,
            reason=reason,
            invalidity_date=invalidity_date,
        )
        with self._db.write() as conn:
            if not conn.execute(
                "SELECT 1 FROM issued_certificate WHERE ca_name = ? AND serial = ?",
                (ca_name, serial),
            ).fetchone():
                raise UnknownCertificate(f"CA {ca_name} issued no certificate with serial {serial}")
            first = _select(conn, ca_name, serial)
            if first is not None and not (first.on_hold and not wanted.on_hold):
                return first  # idempotent: the first record stands
            row = _revocation_row(wanted)
            if first is None:
                conn.execute(
                    f"INSERT INTO revocation ({_REVOCATION_COLUMNS}) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?)",
                    row,
                )
            else:  # a hold becomes a revocation for good
                conn.execute(
                    "UPDATE revocation SET revoked_at = ?, reason = ?, invalidity_date = ? "
                    "WHERE ca_name = ? AND serial = ?",
                    (*row[2:], ca_name, serial),
                )
            if not wanted.on_hold:
                conn.execute(
                    "UPDATE issued_certificate SET status = 'revoked' "
                    "WHERE ca_name = ? AND serial = ? AND status <> 'revoked'",
                    (ca_name, serial),
                )
            conn.execute(_CHANGED, (ca_name, encode_instant(at)))
        return wanted

    def release_hold(self, ca_name: str, serial: str, *, at: datetime) -> bool:
        with self._db.write() as conn:
            cursor = conn.execute(
                "DELETE FROM revocation WHERE ca_name = ? AND serial = ? AND reason = ?",
                (ca_name, serial, RevocationReason.CERTIFICATE_HOLD.value),
            )
            if cursor.rowcount != 1:
                return False
            conn.execute(_CHANGED, (ca_name, encode_instant(at)))
        return True

    def revocation(self, ca_name: str, serial: str) -> Revocation | None:
        with self._db.read() as conn:
            return _select(conn, ca_name, serial)

    def revocations(self, ca_name: str) -> list[Revocation]:
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_REVOCATION_COLUMNS} FROM revocation "  # noqa: S608
                "WHERE ca_name = ? ORDER BY serial",
                (ca_name,),
            ).fetchall()
        return [_revocation(row) for row in rows]

    def revocation_version(self, ca_name: str) -> int:
        row = self._state(ca_name, "version")
        return 0 if row is None else int(row)

    def revocation_changed_at(self, ca_name: str) -> datetime | None:
        row = self._state(ca_name, "changed_at")
        return None if row is None else decode_instant(str(row))

    def next_crl_number(self, ca_name: str) -> int:
        with self._db.write() as conn:
            (number,) = conn.execute(_NEXT_CRL_NUMBER, (ca_name,)).fetchone()
        return int(number)

    def _state(self, ca_name: str, column: str) -> Any:
        # The column comes from the two literals above, never from a caller.
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {column} FROM ca_revocation_state WHERE ca_name = ?",  # noqa: S608
                (ca_name,),
            ).fetchone()
        return None if row is None else row[0]


def _select(conn: SQLConnection, ca_name: str, serial: str) -> Revocation | None:
    row = conn.execute(
        f"SELECT {_REVOCATION_COLUMNS} FROM revocation "  # noqa: S608
        "WHERE ca_name = ? AND serial = ?",
        (ca_name, serial),
    ).fetchone()
    return None if row is None else _revocation(row)


def _revocation_row(revocation: Revocation) -> tuple[Any, ...]:
    return (
        revocation.ca_name,
        revocation.serial,
        encode_instant(revocation.revoked_at),
        revocation.reason.value,
        None if revocation.invalidity_date is None else encode_instant(revocation.invalidity_date),
    )


def _revocation(row: Sequence[Any]) -> Revocation:
    return Revocation(
        ca_name=row[0],
        serial=row[1],
        revoked_at=decode_instant(row[2]),
        reason=RevocationReason(row[3]),
        invalidity_date=None if row[4] is None else decode_instant(row[4]),
    )
