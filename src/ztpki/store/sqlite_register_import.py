"""Listing a manifest's devices in the register: a stream of any length, all or nothing.

The devices are staged in a TEMP table of one pinned session (``Database.session``) in a
transaction that takes no write lock (PostgreSQL fills it with COPY), so enrollments go on
while a million devices arrive; then one short write transaction on the same session checks
the manifest again, and one INSERT ... SELECT lists them with the manifest record and the
audit entry. The staging table has no key while it fills: its unique index is built once at
the end (a sort, much cheaper than a million index insertions), and only when that fails is
the first repeated device looked for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
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
from ztpki.store.sql import Database, Session, SQLConnection
from ztpki.store.sqlite_db import savepoint

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = "manufacturer, manifest_id, issued_at, signer, device_count, imported_at"
# ``position``: the order the devices came in, to name a repeated one.
_STAGE_COLUMNS = ("device_id", "position", "temp_fingerprint", "model", "batch")
_STAGE_TABLE = (
    "CREATE TEMP TABLE import_device (device_id TEXT NOT NULL, position INTEGER NOT NULL, "
    "temp_fingerprint TEXT, model TEXT, batch TEXT)"
)
_STAGE_KEY = "CREATE UNIQUE INDEX import_device_key ON import_device (device_id)"
# The repeated device whose second appearance comes first (the error path only).
_FIRST_REPEAT = (
    "SELECT device_id FROM (SELECT device_id, position, row_number() OVER "
    "(PARTITION BY device_id ORDER BY position) AS seen FROM import_device) AS staged "
    "WHERE seen = 2 ORDER BY position LIMIT 1"
)
# In device_id order, the register's own order; ``WHERE true`` keeps SQLite from reading
# ON CONFLICT as a join constraint.
_LIST_STAGED = (
    "INSERT INTO device (device_id, state, temp_fingerprint, manufacturer, model, batch, "
    "manifest_id, updated_at) SELECT device_id, 'listed', temp_fingerprint, ?, model, batch, "
    "?, ? FROM import_device AS staged WHERE NOT EXISTS (SELECT 1 FROM device AS listed "
    "WHERE listed.device_id = staged.device_id) ORDER BY device_id"
)


def import_devices(
    db: Database,
    devices: Iterable[NewDevice],
    *,
    manifest: ManifestRecord,
    audit: AuditRecord | None = None,
) -> ImportResult:
    """``RegisterStore.import_devices`` on the register in ``db``."""
    with db.read(single=True) as conn:
        if _imported_before(conn, manifest):
            return _already(manifest)
    with db.session() as session:
        staged = _stage(session, devices, manufacturer=manifest.manufacturer)
        with session.write() as conn:
            return _list_staged(conn, manifest, audit, staged=staged)


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


def _stage(session: Session, devices: Iterable[NewDevice], *, manufacturer: str) -> int:
    """Stage ``devices``; the number staged. DuplicateDevice for a repeated id."""
    with session.staging() as conn:
        conn.execute(_STAGE_TABLE)
        staged = session.copy_rows(
            "import_device", _STAGE_COLUMNS, _rows(devices, manufacturer=manufacturer)
        )
        try:
            with savepoint(conn, "stage_key"):  # a failed statement ends PostgreSQL's transaction
                conn.execute(_STAGE_KEY)
        except conn.IntegrityError:
            (repeated,) = conn.execute(_FIRST_REPEAT).fetchone()
            raise DuplicateDevice(
                f"device {repeated} appears twice in the manifest; nothing was listed"
            ) from None
    return staged


def _rows(devices: Iterable[NewDevice], *, manufacturer: str) -> Iterator[tuple[Any, ...]]:
    for position, device in enumerate(devices):
        if device.manufacturer not in (None, manufacturer):
            raise ValueError(
                f"device {device.device_id} is of {device.manufacturer}, not of the "
                f"manifest's manufacturer {manufacturer}"
            )
        yield (device.device_id, position, device.temp_fingerprint, device.model, device.batch)


def _manifest_row(manifest: ManifestRecord) -> tuple[Any, ...]:
    return (
        manifest.manufacturer,
        manifest.manifest_id,
        encode_instant(manifest.issued_at),
        manifest.signer,
        manifest.device_count,
        encode_instant(manifest.imported_at),
    )
