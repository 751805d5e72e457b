"""Listing a manifest's devices in the register: a stream of any length, all or nothing.

The devices are staged in a TEMP table (the connection's own), then one INSERT ... SELECT
lists them with the manifest record and the audit entry. On SQLite the staging runs in a
read transaction: writing a TEMP table takes no lock on the register, so enrollments go on
while a million devices arrive, and the write lock is held only for the INSERT ... SELECT.
PostgreSQL hands each transaction a pooled connection and a TEMP table lives in one session,
so there both steps run in the one write transaction (the table dropped at its commit).
"""

from __future__ import annotations

import logging
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
from ztpki.store.sql import Database, SQLConnection

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = "manufacturer, manifest_id, issued_at, signer, device_count, imported_at"
# ``position``: the order the devices came in, to name a repeated one.
_STAGE_COLUMNS = (
    "(device_id TEXT PRIMARY KEY, position INTEGER NOT NULL, temp_fingerprint TEXT, "
    "model TEXT, batch TEXT)"
)
_STAGE_TABLE = {
    "sqlite": f"CREATE TEMP TABLE IF NOT EXISTS import_device {_STAGE_COLUMNS}",
    "postgresql": f"CREATE TEMP TABLE import_device {_STAGE_COLUMNS} ON COMMIT DROP",
}
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
    db: Database,
    devices: Iterable[NewDevice],
    *,
    manifest: ManifestRecord,
    audit: AuditRecord | None = None,
) -> ImportResult:
    """``RegisterStore.import_devices`` on the register in ``db``."""
    with db.read() as conn:
        if _imported_before(conn, manifest):
            return _already(manifest)
    if db.dialect != "sqlite":
        with db.write() as conn:
            conn.execute(_STAGE_TABLE[db.dialect])
            staged = _stage(conn, devices, manufacturer=manifest.manufacturer)
            return _list_staged(conn, manifest, audit, staged=staged)
    with db.read() as conn:
        conn.execute(_STAGE_TABLE["sqlite"])
        conn.execute("DELETE FROM import_device")  # what a failed import left on this connection
        staged = _stage(conn, devices, manufacturer=manifest.manufacturer)
    with db.write() as conn:
        result = _list_staged(conn, manifest, audit, staged=staged)
        conn.execute("DROP TABLE import_device")
    return result


def _already(manifest: ManifestRecord) -> ImportResult:
    return ImportResult(added=0, unchanged=manifest.device_count, already_imported=True)


def _imported_before(conn: SQLConnection, manifest: ManifestRecord) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM manifest WHERE manufacturer = ? AND manifest_id = ?",
            (manifest.manufacturer, manifest.manifest_id),
        ).fetchone()
        is not None
    )


def _list_staged(
    conn: SQLConnection, manifest: ManifestRecord, audit: AuditRecord | None, *, staged: int
) -> ImportResult:
    """The staged devices into the register, under the write lock ``conn`` holds."""
    if _imported_before(conn, manifest):
        return _already(manifest)
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
    return ImportResult(added=added, unchanged=staged - added, already_imported=False)


def _stage(conn: SQLConnection, devices: Iterable[NewDevice], *, manufacturer: str) -> int:
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


def _stage_chunk(conn: SQLConnection, chunk: list[tuple[Any, ...]]) -> None:
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
