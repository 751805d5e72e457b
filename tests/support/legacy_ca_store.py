"""CA-system stores as older releases wrote them: before CA-client entitlements (schema 1),
before revocations (schema 2)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def downgrade_ca_store_to_v1(path: Path) -> None:
    """Turn a CA-system store made by this release into a schema-1 one: no entitlement with
    the clients, no client with the certificates, no record of refusals."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        _drop_revocations(conn)
        conn.execute("DROP TABLE refused_request")
        conn.execute("ALTER TABLE ca_client DROP COLUMN entitlement")
        conn.execute("ALTER TABLE issued_certificate DROP COLUMN client_name")
        conn.execute("UPDATE schema_version SET version = 1 WHERE component = 'ca_system'")
        conn.execute("COMMIT")
    finally:
        conn.close()


def downgrade_ca_store_to_v2(path: Path) -> None:
    """Turn a CA-system store made by this release into a schema-2 one: no revocations."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        _drop_revocations(conn)
        conn.execute("UPDATE schema_version SET version = 2 WHERE component = 'ca_system'")
        conn.execute("COMMIT")
    finally:
        conn.close()


def _drop_revocations(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TABLE revocation")
    conn.execute("DROP TABLE ca_revocation_state")
