"""Listing a manifest's devices in the register (SQLite): a stream of any length, all or nothing.

The devices are staged in a TEMP table first, which belongs to this connection and takes no
lock on the register, so enrollments go on while a million devices arrive; one INSERT ...
SELECT then lists them under the write lock, with the manifest record and the audit entry.
The SQL is PostgreSQL's as well (a TEMP table there belongs to the session).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from typing import Any

from ztpki.store import sqlite_audit
from ztpki.store.instants import encode_instant
from ztpki.store.records import (
    AuditRecord,
    DuplicateDevice,
    ImportResult,
    ManifestRecord,
    NewDevice,
)
from ztpki.store.sqlite_db import SQLiteDatabase

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = "manufacturer, manifest_id, issued_at, signer, device_count, imported_at"
# The staged devices of one import: a TEMP table belongs to the connection (and a PostgreSQL
# session) alone. ``position`` is the order they came in, to name a repeated one.
_STAGE_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS import_device (device_id TEXT PRIMARY KEY, "
    "position INTEGER NOT NULL, temp_fingerprint TEXT, model TEXT, batch TEXT)"
)
_STAGE_DEVICE = (
    "INSERT INTO import_device (device_id, position, temp_fingerprint, model, batch) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO NOTHING"
)
_STAGE_CHUNK = 5000
# In device_id order, the register's own order; ``WHERE true`` keeps SQLite from reading
# ON CONFLICT as a join constraint.
_LIST_STAGED = (
    "INSERT INTO device (device_id, state, temp_fingerprint, manufacturer, model, batch, "
    "manifest_id, updated_at) SELECT device_id, 'listed', temp_fingerprint, ?, model, batch, "
    "?, ? FROM import_device WHERE true ORDER BY device_id ON CONFLICT (device_id) DO NOTHING"
)


def import_devices(
    db: SQLiteDatabase,
    devices: Iterable[NewDevice],
    *,
    manifest: ManifestRecord,
    audit: AuditRecord | None = None,
) -> ImportResult:
    """``RegisterStore.import_devices`` on the register in ``db``."""
    if _imported_before(db, manifest):
        return ImportResult(added=0, unchanged=manifest.device_count, already_imported=True)
    conn = db.connection()
    try:
        # Staged first in a TEMP table, which takes no lock on the register: the write
        # lock is held only for the one INSERT ... SELECT below, however long the
        # devices take to arrive, and an error while they do leaves the register as it was.
        with db.read() as conn:
            conn.execute(_STAGE_TABLE)
            conn.execute("DELETE FROM import_device")
            staged = _stage(conn, devices, manufacturer=manifest.manufacturer)
        with db.write() as conn:
            if _imported_before(db, manifest, conn=conn):
                return ImportResult(added=0, unchanged=manifest.device_count, already_imported=True)
            conn.execute(
                f"INSERT INTO manifest ({MANIFEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                _manifest_row(manifest),
            )
            added = conn.execute(
                _LIST_STAGED,
                (
                    manifest.manufacturer,
                    manifest.manifest_id,
                    encode_instant(manifest.imported_at, name="now"),
                ),
            ).rowcount
            if audit is not None:
                sqlite_audit.append_records(conn, [audit])
    finally:
        try:
            conn.execute("DROP TABLE IF EXISTS temp.import_device")
        except sqlite3.Error:
            logger.warning("could not drop the staging table of an import", exc_info=True)
    return ImportResult(added=added, unchanged=staged - added, already_imported=False)


def _imported_before(
    db: SQLiteDatabase, manifest: ManifestRecord, *, conn: sqlite3.Connection | None = None
) -> bool:
    query = "SELECT 1 FROM manifest WHERE manufacturer = ? AND manifest_id = ?"
    key = (manifest.manufacturer, manifest.manifest_id)
    if conn is not None:
        return conn.execute(query, key).fetchone() is not None
    with db.read() as reader:
        return reader.execute(query, key).fetchone() is not None


def _stage(conn: sqlite3.Connection, devices: Iterable[NewDevice], *, manufacturer: str) -> int:
    """Stage ``devices`` in chunks; the number staged. DuplicateDevice for a repeated id."""
    staged = 0
    chunk: list[tuple[Any, ...]] = []
    for device in devices:
        if device.manufacturer not in (None, manufacturer):
            raise ValueError(
                f"device {device.device_id} is of {device.manufacturer}, not of the "
                f"manifest's manufacturer {manufacturer}"
            )
        chunk.append(
            (device.device_id, staged, device.temp_fingerprint, device.model, device.batch)
        )
        staged += 1
        if len(chunk) == _STAGE_CHUNK:
            _stage_chunk(conn, chunk)
            chunk = []
    if chunk:
        _stage_chunk(conn, chunk)
    return staged


def _stage_chunk(conn: sqlite3.Connection, chunk: list[tuple[Any, ...]]) -> None:
    if conn.executemany(_STAGE_DEVICE, chunk).rowcount == len(chunk):
        return
    seen: set[str] = set()
    for device_id, *_ in chunk:
        if device_id in seen:
            break
        seen.add(device_id)
    else:
        marks = ", ".join("?" for _ in chunk)
        (device_id,) = conn.execute(
            f"SELECT device_id FROM import_device WHERE device_id IN ({marks}) "  # noqa: S608
            "AND position < ? ORDER BY position LIMIT 1",
            (*seen, chunk[0][1]),
        ).fetchone()
    raise DuplicateDevice(f"device {device_id} appears twice in the manifest; nothing was listed")


def _manifest_row(manifest: ManifestRecord) -> tuple[Any, ...]:
    return (
        manifest.manufacturer,
        manifest.manifest_id,
        encode_instant(manifest.issued_at),
        manifest.signer,
        manifest.device_count,
        encode_instant(manifest.imported_at),
    )
