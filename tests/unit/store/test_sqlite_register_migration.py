"""A register written by the previous ztpki (schema 1: manifest ids global) opens migrated."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support.legacy_register import V1_SCHEMA

from ztpki.errors import ConfigurationError, StorageError
from ztpki.store import open_sqlite_node_store
from ztpki.store.records import DeviceState, ManifestRecord, NewDevice
from ztpki.store.sqlite_audit import SCHEMA as AUDIT_SCHEMA
from ztpki.store.sqlite_register_schema import SCHEMA_VERSION

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
STAMP = "2025-03-01T12:00:00.000000Z"


def _v1_database(path: Path, *, version: int = 1) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER)")
        db.execute("INSERT INTO schema_version VALUES ('customer_node', ?)", (version,))
        for statement in (*V1_SCHEMA, *AUDIT_SCHEMA):
            db.execute(statement)
        for manifest_id in ("m1", "m-empty"):
            db.execute(
                "INSERT INTO manifest VALUES (?, ?, 'CN=signer', 1, ?)", (manifest_id, STAMP, STAMP)
            )
        db.execute(
            "INSERT INTO device (device_id, state, temp_fingerprint, manufacturer, manifest_id, "
            "issued_serial, issued_spki, issued_certificate_der, updated_at) "
            "VALUES ('d1', 'issued', ?, 'Acme', 'm1', '0a', 'ff', x'3082', ?)",
            ("ab" * 32, STAMP),
        )
        db.execute("INSERT INTO device_chain VALUES ('d1', 0, x'3081')")
        db.execute(
            "INSERT INTO device (device_id, state, updated_at) VALUES ('d2', 'listed', ?)",
            (STAMP,),
        )


def test_ok_schema_1_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    _v1_database(path)
    with contextlib.closing(open_sqlite_node_store(path)) as store:
        d1, d2 = store.get("d1"), store.get("d2")
        assert d1 is not None and d2 is not None
        assert (d1.state, d1.manufacturer, d1.manifest_id, d1.issued_serial) == (
            DeviceState.ISSUED,
            "Acme",
            "m1",
            "0a",
        )
        assert d1.issued_chain_der == (b"\x30\x81",)  # device_chain kept its rows
        assert (d2.state, d2.manifest_id) == (DeviceState.LISTED, None)
        # A manifest takes its devices' manufacturer; one that listed none gets 'unknown'.
        assert sorted((m.manufacturer, m.manifest_id) for m in store.manifests()) == [
            ("Acme", "m1"),
            ("unknown", "m-empty"),
        ]
        # The new key works: another manufacturer may use m1; Acme may not again.
        globex = ManifestRecord("Globex", "m1", T0, "CN=g", 1, T0)
        result = store.import_devices([NewDevice("g1", None)], manifest=globex)
        assert result.added == 1
        acme = ManifestRecord("Acme", "m1", T0, "CN=s", 1, T0)
        assert store.import_devices([NewDevice("d9", None)], manifest=acme).already_imported
        assert store.verify().ok
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        db.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError):  # the composite reference is enforced
            db.execute(
                "INSERT INTO device (device_id, state, manufacturer, manifest_id, updated_at) "
                "VALUES ('x', 'listed', 'Globex', 'm-empty', ?)",
                (STAMP,),
            )
    # Opening it again changes nothing.
    open_sqlite_node_store(path).close()


def test_fail_broken_references_stop_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    _v1_database(path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        # A device naming a manifest it does not hold (foreign keys were off when written).
        db.execute(
            "INSERT INTO device (device_id, state, manufacturer, manifest_id, updated_at) "
            "VALUES ('d3', 'listed', 'Acme', 'lost', ?)",
            (STAMP,),
        )
    with pytest.raises(StorageError, match="would break a reference in table device"):
        open_sqlite_node_store(path)
    with contextlib.closing(sqlite3.connect(path)) as db:  # nothing changed
        assert db.execute("SELECT version FROM schema_version").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM manifest").fetchone() == (2,)


def test_fail_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    newer = SCHEMA_VERSION + 1
    _v1_database(path, version=newer)
    with pytest.raises(
        ConfigurationError,
        match=f"schema version {newer}, but this ztpki uses version {SCHEMA_VERSION}",
    ):
        open_sqlite_node_store(path)
