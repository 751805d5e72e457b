"""CA-system stores as older releases wrote them: before CA-client entitlements (schema 1),
before revocations (schema 2); neither keeps request ids (schema 4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

_NO_REQUESTS = ("DROP TABLE issuance_request",)
_NO_REVOCATIONS = (*_NO_REQUESTS, "DROP TABLE revocation", "DROP TABLE ca_revocation_state")


def downgrade_ca_store_to_v1(path: Path) -> None:
    """Turn a CA-system store made by this release into a schema-1 one: no entitlement with
    the clients, no client with the certificates, no record of refusals, no revocations."""
    _rewrite(
        path,
        1,
        *_NO_REVOCATIONS,
        "DROP TABLE refused_request",
        "ALTER TABLE ca_client DROP COLUMN entitlement",
        "ALTER TABLE issued_certificate DROP COLUMN client_name",
    )


def downgrade_ca_store_to_v2(path: Path) -> None:
    """Turn a CA-system store made by this release into a schema-2 one: no revocations."""
    _rewrite(path, 2, *_NO_REVOCATIONS)


def _rewrite(path: Path, version: int, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in statements:
            conn.execute(statement)
        conn.execute(
            "UPDATE schema_version SET version = ? WHERE component = 'ca_system'", (version,)
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
