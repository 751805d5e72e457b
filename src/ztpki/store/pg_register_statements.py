"""The register's transitions on PostgreSQL as one statement each, audit entry included.

On SQLite a transition is its ``UPDATE`` and then the statements that follow from it (the
chain, the audit entry), each a call into the library. On a database server each statement is
a round trip inside the write lock, so there the whole transition is one statement: the
``UPDATE`` in a CTE, and the chain and the audit entry written by CTEs that take effect only
when it changed the row (data-modifying CTEs see one snapshot and run all or nothing). The
audit entry goes after the head the connection knows (read as the write lock was taken); when
that is not the head any more, the entry is appended as usual after the statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ztpki.store import sqlite_audit
from ztpki.store.records import AuditRecord
from ztpki.store.sql import SQLConnection

COMPLETE = (
    "UPDATE device SET state = ?, issued_serial = ?, issued_spki = ?, "
    "issued_certificate_der = ?, lease_token = NULL, lease_expires = NULL, "
    "previous_state = NULL, renewed_from = ?, updated_at = ? "
    "WHERE device_id = ? AND state = 'issuing' AND lease_token = ?"
)


def complete_issuance(
    conn: SQLConnection,
    params: Sequence[Any],
    chain_der: Sequence[bytes],
    audit: AuditRecord | None,
) -> bool:
    """``COMPLETE`` with ``params``; the device's chain becomes ``chain_der`` (positions past
    it dropped, the others written over) and ``audit`` is appended, only if the row changed."""
    ctes = [
        f"changed AS ({COMPLETE} RETURNING device_id)",
        "gone AS (DELETE FROM device_chain WHERE device_id IN (SELECT device_id FROM changed) "
        "AND position >= ?)",
    ]
    values: list[Any] = [*params, len(chain_der)]
    if chain_der:
        # Positions the DELETE keeps are overwritten: the two CTEs never touch one row.
        rows = ", ".join("(?::integer, ?::bytea)" for _ in chain_der)
        ctes.append(
            "chain AS (INSERT INTO device_chain (device_id, position, certificate_der) "  # noqa: S608
            f"SELECT changed.device_id, v.position, v.der FROM changed, (VALUES {rows}) "
            "AS v (position, der) ON CONFLICT (device_id, position) "
            "DO UPDATE SET certificate_der = EXCLUDED.certificate_der)"
        )
        values += [value for row in enumerate(chain_der) for value in row]
    return _run(conn, ctes, values, audit)


def transition(
    conn: SQLConnection, update: str, params: Sequence[Any], audit: AuditRecord | None
) -> bool:
    """One conditional ``update`` with ``params``, and ``audit`` appended if it changed a row."""
    return _run(conn, [f"changed AS ({update} RETURNING 1)"], [*params], audit)


def _run(
    conn: SQLConnection, ctes: list[str], params: list[Any], audit: AuditRecord | None
) -> bool:
    folded = None if audit is None else sqlite_audit.folded_append(conn, audit, when="changed")
    if folded is not None:
        ctes.append(folded[1])
        params += folded[2]
    written = "(SELECT COUNT(*) FROM entry)" if folded is not None else "0"
    # Every piece is this module's own SQL; the values travel as parameters.
    statement = f"WITH {', '.join(ctes)} SELECT (SELECT COUNT(*) FROM changed), {written}"  # noqa: S608
    changed, logged = conn.execute(statement, params).fetchone()
    if changed != 1:
        return False
    if folded is not None:
        assert audit is not None
        sqlite_audit.settle_folded(conn, folded[0], audit, written=bool(logged))
    elif audit is not None:
        sqlite_audit.append_records(conn, [audit])
    return True
