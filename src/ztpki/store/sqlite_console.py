"""What the web console reads and keeps in the node's register (SQLite or PostgreSQL).

Its operators (name, role, argon2 password hash: the hash is made by the caller, the store
never sees a password), and the queries of its pages: a device list paginated by keyset
(``device_id > after``) with filters each backed by an index, so a page costs the same at
row 1 and at row 1,000,000; per-minute and per-reason figures of the audit trail over a
window, read through an index on (decision, at).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from ztpki.errors import ConfigurationError
from ztpki.store import sqlite_audit
from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.records import AuditEntry, DeviceState
from ztpki.store.sql import Database

OPERATOR_TABLE = """
    CREATE TABLE console_operator (
        name          TEXT PRIMARY KEY CHECK (name <> ''),
        role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator')),
        password_hash TEXT NOT NULL CHECK (password_hash = '!' OR password_hash LIKE '$argon2%'),
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    )"""

# The device list's filters (batch, label) and the overview's counts by manufacturer and batch
# read these; the per-minute chart and the failures read audit entries by decision and time.
CONSOLE_INDEXES = (
    "CREATE INDEX device_by_batch ON device (batch, device_id)",
    "CREATE INDEX device_by_label ON device (issuance_label, device_id)",
    "CREATE INDEX device_by_maker ON device (manufacturer, batch, state)",
    "CREATE INDEX audit_entry_by_decision ON audit_entry (decision, at)",
)

CONSOLE_SCHEMA = (OPERATOR_TABLE, *CONSOLE_INDEXES)


class Role(Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"


class DuplicateOperator(ConfigurationError):
    """An operator of that name exists already."""


@dataclass(frozen=True)
class OperatorRecord:
    name: str
    role: Role
    password_hash: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class DeviceFilter:
    """The device list's filters; every one given must hold."""

    search: str = ""  # a device-id prefix
    state: DeviceState | None = None
    batch: str | None = None
    label: str | None = None
    blocked: bool | None = None


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    state: DeviceState
    manufacturer: str | None
    model: str | None
    batch: str | None
    issuance_label: str | None
    issued_serial: str | None
    updated_at: datetime


# The highest character a device id may hold sorts below this: ``prefix + _TOP`` bounds a
# prefix search as a range on the primary key (LIKE would not use it on both engines).
_TOP = "\U0010ffff"
_ROW = "device_id, state, manufacturer, model, batch, issuance_label, issued_serial, updated_at"


class ConsoleQueries:
    """The console's operations of SQLiteNodeStore (a mixin over its database)."""

    _db: Database

    # ------------------------------------------------------------------ operators

    def add_operator(
        self, name: str, *, role: Role, password_hash: str, now: datetime, replace: bool = False
    ) -> None:
        """Add an operator; DuplicateOperator when ``name`` exists, unless ``replace``."""
        at = encode_instant(now, name="now")
        with self._db.write() as conn:
            if replace:
                # A new password or role ends the sessions opened under the old ones.
                conn.execute("DELETE FROM console_session WHERE operator = ?", (name,))
                conn.execute(
                    "INSERT INTO console_operator (name, role, password_hash, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "role = excluded.role, password_hash = excluded.password_hash, "
                    "updated_at = excluded.updated_at",
                    (name, role.value, password_hash, at, at),
                )
                return
            inserted = conn.execute(
                "INSERT INTO console_operator (name, role, password_hash, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, role.value, password_hash, at, at),
            ).rowcount
        if inserted != 1:
            raise DuplicateOperator(
                f"operator {name} exists already; pass --replace to set a new password or role"
            )

    def remove_operator(self, name: str) -> bool:
        """Remove an operator and end their console sessions; whether there was one."""
        with self._db.write() as conn:
            conn.execute("DELETE FROM console_session WHERE operator = ?", (name,))
            gone = conn.execute("DELETE FROM console_operator WHERE name = ?", (name,)).rowcount
        return bool(gone)

    def operator(self, name: str) -> OperatorRecord | None:
        with self._db.read(single=True) as conn:
            row = conn.execute(
                "SELECT name, role, password_hash, created_at FROM console_operator WHERE name = ?",
                (name,),
            ).fetchone()
        if row is None:
            return None
        return OperatorRecord(row[0], Role(row[1]), row[2], decode_instant(row[3]))

    def operators(self) -> list[OperatorRecord]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT name, role, created_at FROM console_operator ORDER BY name"
            ).fetchall()
        return [OperatorRecord(r[0], Role(r[1]), created_at=decode_instant(r[2])) for r in rows]

    # ------------------------------------------------------------------ devices

    def device_page(
        self, where: DeviceFilter, *, after: str = "", limit: int = 50
    ) -> list[DeviceRow]:
        """Up to ``limit`` devices matching ``where`` with device_id > ``after``, in order."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be 1..1000")
        # One lower bound on device_id: with two, SQLite's planner keeps only one of them for
        # the index range and filters the rest row by row.
        if where.search and after < where.search:
            clauses, params = ["device_id >= ?"], [where.search]
        else:
            clauses, params = ["device_id > ?"], [after]
        if where.search:
            clauses.append("device_id < ?")
            params.append(where.search + _TOP)
        if where.state is not None:
            clauses.append("state = ?")
            params.append(where.state.value)
        if where.blocked is not None:
            clauses.append("state = 'blocked'" if where.blocked else "state <> 'blocked'")
        if where.batch is not None:
            clauses.append("batch = ?")
            params.append(where.batch)
        if where.label is not None:
            clauses.append("issuance_label = ?")
            params.append(where.label)
        query = (
            f"SELECT {_ROW} FROM device WHERE {' AND '.join(clauses)} "  # noqa: S608
            "ORDER BY device_id LIMIT ?"
        )
        with self._db.read() as conn:
            rows = conn.execute(query, (*params, limit)).fetchall()
        return [_device_row(row) for row in rows]

    def fleet_by_batch(self) -> list[tuple[str | None, str | None, DeviceState, int]]:
        """(manufacturer, batch, state, count) for every group that has devices."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT manufacturer, batch, state, COUNT(*) FROM device "
                "GROUP BY manufacturer, batch, state ORDER BY manufacturer, batch, state"
            ).fetchall()
        return [(r[0], r[1], DeviceState(r[2]), int(r[3])) for r in rows]

    def issued_by_label(self) -> dict[str, int]:
        """Devices holding a certificate, by the EST label it was issued under."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT COALESCE(issuance_label, ''), COUNT(*) FROM device "
                "WHERE issued_serial IS NOT NULL GROUP BY issuance_label"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def certificate_of_label(self, label: str) -> bytes | None:
        """One certificate (DER) a device holds under EST ``label``, or None: the CA health
        page reads the CRL distribution point its CA puts in every certificate."""
        with self._db.read(single=True) as conn:
            row = conn.execute(
                "SELECT issued_certificate_der FROM device WHERE issuance_label = ? "
                "AND issued_certificate_der IS NOT NULL ORDER BY device_id DESC LIMIT 1",
                (label,),
            ).fetchone()
        return None if row is None else bytes(row[0])

    # ------------------------------------------------------------------ audit figures

    def decisions_per_minute(self, decision: str, *, since: datetime) -> dict[str, int]:
        """Entries of ``decision`` at or after ``since``, counted by minute ('YYYY-MM-DDTHH:MM')."""
        start = encode_instant(since, name="since")
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT substr(at, 1, 16), COUNT(*) FROM audit_entry "
                "WHERE decision = ? AND at >= ? GROUP BY substr(at, 1, 16)",
                (decision, start),
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def failure_reasons(
        self, decisions: Sequence[str], *, since: datetime, limit: int = 10
    ) -> list[tuple[str, int]]:
        """The commonest reasons of entries of ``decisions`` since ``since``."""
        marks = ", ".join("?" for _ in decisions)
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT reason, COUNT(*) FROM audit_entry "  # noqa: S608
                f"WHERE decision IN ({marks}) AND at >= ? "
                "GROUP BY reason ORDER BY COUNT(*) DESC, reason LIMIT ?",
                (*decisions, encode_instant(since, name="since"), limit),
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def audit_page(self, *, before: int | None = None, limit: int = 100) -> list[AuditEntry]:
        """Up to ``limit`` entries older than seq ``before`` (None: the newest), newest first."""
        with self._db.read() as conn:
            if before is None:
                row = conn.execute("SELECT MAX(seq) FROM audit_entry").fetchone()
                before = (int(row[0]) if row and row[0] is not None else 0) + 1
            # Seqs are contiguous from 1 (the chain has no gaps): the page is a range of them.
            first = max(before - 1 - limit, 0)
            entries = sqlite_audit.select_entries(
                conn, device_id=None, after=first, limit=max(before - 1 - first, 0)
            )
        return list(reversed([e for e in entries if e.seq < before]))


def _device_row(row: Sequence[Any]) -> DeviceRow:
    return DeviceRow(
        device_id=row[0],
        state=DeviceState(row[1]),
        manufacturer=row[2],
        model=row[3],
        batch=row[4],
        issuance_label=row[5],
        issued_serial=row[6],
        updated_at=decode_instant(row[7]),
    )
