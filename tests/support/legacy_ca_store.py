"""A CA-system store as a release before CA-client entitlements wrote it (schema 1)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def downgrade_ca_store_to_v1(path: Path) -> None:
    """Turn a CA-system store made by this release into a schema-1 one: no entitlement with
    the clients, no client with the certificates, no record of refusals."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DROP TABLE refused_request")
        conn.execute("ALTER TABLE ca_client DROP COLUMN entitlement")
        conn.execute("ALTER TABLE issued_certificate DROP COLUMN client_name")
        conn.execute("UPDATE schema_version SET version = 1 WHERE component = 'ca_system'")
        conn.execute("COMMIT")
    finally:
        conn.close()
