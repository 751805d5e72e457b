"""The CMP shared secrets in the register (schema version 10): one per device, set by the operator.

A device with no factory certificate may enroll over CMP with MAC-based protection (RFC 9483
section 4.1.5) under a label whose policy allows it (``[ca.<label>] cmp_mac``), proving that
it knows the secret the operator set for it here. The node needs the secret itself to check
a MAC (the key is derived with the sender's salt), so it is kept as given, in the register
that every worker and node machine shares, and it is never read back out: the store hands it
to the CMP front end only. ``label``: the one label the secret is good for (None: any label
whose policy allows MAC protection). Setting and clearing are audited with the row change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from ztpki.store import sqlite_audit
from ztpki.store.instants import encode_instant
from ztpki.store.records import AuditRecord
from ztpki.store.sql import Database

CMP_MAC_KEY_TABLE = """
    CREATE TABLE cmp_secret (
        device_id  TEXT PRIMARY KEY REFERENCES device (device_id),
        secret     BLOB NOT NULL CHECK (length(secret) >= 16),
        label      TEXT CHECK (label IS NULL OR label <> ''),
        set_at     TEXT NOT NULL
    )"""


@dataclass(frozen=True)
class CmpSecret:
    device_id: str
    secret: bytes = field(repr=False)
    label: str | None
    set_at: str


class CmpSecretStore(Protocol):
    def set_cmp_secret(
        self, device_id: str, secret: bytes, *, label: str | None, now: datetime, audit: AuditRecord
    ) -> bool: ...

    def clear_cmp_secret(self, device_id: str, *, audit: AuditRecord) -> bool: ...

    def cmp_secret(self, device_id: str) -> CmpSecret | None: ...


class CmpSecrets:
    """The CMP shared-secret operations of SQLiteNodeStore (a mixin over its database)."""

    _db: Database

    def set_cmp_secret(
        self, device_id: str, secret: bytes, *, label: str | None, now: datetime, audit: AuditRecord
    ) -> bool:
        """Set (or replace) a listed device's secret; False if the register has no such device."""
        with self._db.write() as conn:
            if conn.execute("SELECT 1 FROM device WHERE device_id = ?", (device_id,)).fetchone():
                conn.execute(
                    "INSERT INTO cmp_secret (device_id, secret, label, set_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
                    "secret = excluded.secret, label = excluded.label, set_at = excluded.set_at",
                    (device_id, secret, label, encode_instant(now)),
                )
                sqlite_audit.append_records(conn, [audit])
                return True
        return False

    def clear_cmp_secret(self, device_id: str, *, audit: AuditRecord) -> bool:
        """Remove a device's secret; False if it had none."""
        with self._db.write() as conn:
            if conn.execute("DELETE FROM cmp_secret WHERE device_id = ?", (device_id,)).rowcount:
                sqlite_audit.append_records(conn, [audit])
                return True
        return False

    def cmp_secret(self, device_id: str) -> CmpSecret | None:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT device_id, secret, label, set_at FROM cmp_secret WHERE device_id = ?",
                (device_id,),
            ).fetchone()
        return None if row is None else CmpSecret(row[0], bytes(row[1]), row[2], row[3])
