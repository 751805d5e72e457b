"""The register's transitions outside an issuance: confirm, block, unblock, retire.

Each is one conditional ``UPDATE`` (a mixin of SQLiteNodeStore, over its database); the
revocations a transition causes are queued in its transaction (ztpki.store.sqlite_revocation_queue).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ztpki.store import pg_register_statements, sqlite_audit
from ztpki.store.cmp_transactions import mark_confirmed
from ztpki.store.instants import encode_instant
from ztpki.store.records import AuditRecord
from ztpki.store.revocation_records import RevocationOrder
from ztpki.store.sqlite_revocation_queue import RevocationQueue, insert_orders, release_waiting


class RegisterTransitions(RevocationQueue):
    def confirm(
        self,
        device_id: str,
        *,
        serial: str,
        now: datetime,
        audit: AuditRecord | None = None,
        cmp: bytes | None = None,
    ) -> bool:
        return self._transition(
            "UPDATE device SET state = 'customized', updated_at = ? "
            "WHERE device_id = ? AND state = 'issued' AND issued_serial = ?",
            (encode_instant(now), device_id, serial),
            audit,
            now=now,
            cmp=cmp,
        )

    def confirm_renewal(
        self,
        device_id: str,
        *,
        serial: str,
        now: datetime,
        due_at: datetime,
        audit: AuditRecord | None = None,
        cmp: bytes | None = None,
    ) -> bool:
        """The renewed certificate ``serial`` was used: its predecessor's revocation is due.
        ``cmp``: the CMP transaction (its certConf) closes confirmed in the same commit."""
        with self._db.write() as conn:
            changed = conn.execute(
                "UPDATE device SET renewed_from = NULL, updated_at = ? WHERE device_id = ? "
                "AND state = 'customized' AND issued_serial = ? AND renewed_from IS NOT NULL",
                (encode_instant(now), device_id, serial),
            ).rowcount
            if changed != 1:
                return False
            release_waiting(conn, device_id, due_at=due_at)
            if cmp is not None:
                mark_confirmed(conn, cmp, now=now)
            _audit(conn, audit)
        return True

    def block(
        self,
        device_id: str,
        *,
        now: datetime,
        audit: AuditRecord | None = None,
        revocations: Sequence[RevocationOrder] | None = None,
        issued_serial: str | None = None,
    ) -> bool:
        # Blocking an issuance in flight drops its lease, so its completion cannot land. A
        # renewal's superseded certificate is not kept waiting for a confirmation any more.
        return self._transition(
            "UPDATE device SET state = 'blocked', "
            "blocked_from = CASE WHEN state = 'issuing' THEN previous_state ELSE state END, "
            "lease_token = NULL, lease_expires = NULL, previous_state = NULL, "
            "renewed_from = NULL, updated_at = ? "
            "WHERE device_id = ? AND state NOT IN ('blocked', 'retired')",
            (encode_instant(now), device_id),
            audit,
            now=now,
            revocations=revocations,
            issued_serial=issued_serial,
        )

    def unblock(
        self,
        device_id: str,
        *,
        now: datetime,
        audit: AuditRecord | None = None,
        revocations: Sequence[RevocationOrder] | None = None,
        issued_serial: str | None = None,
    ) -> bool:
        return self._transition(
            "UPDATE device SET state = blocked_from, blocked_from = NULL, updated_at = ? "
            "WHERE device_id = ? AND state = 'blocked'",
            (encode_instant(now), device_id),
            audit,
            now=now,
            revocations=revocations,
            issued_serial=issued_serial,
        )

    def retire(
        self,
        device_id: str,
        *,
        now: datetime,
        audit: AuditRecord | None = None,
        revocations: Sequence[RevocationOrder] | None = None,
        issued_serial: str | None = None,
    ) -> bool:
        """Any state but RETIRED -> RETIRED, for good; an issuance in flight loses its lease."""
        return self._transition(
            "UPDATE device SET state = 'retired', blocked_from = NULL, lease_token = NULL, "
            "lease_expires = NULL, previous_state = NULL, renewed_from = NULL, updated_at = ? "
            "WHERE device_id = ? AND state <> 'retired'",
            (encode_instant(now), device_id),
            audit,
            now=now,
            revocations=revocations,
            issued_serial=issued_serial,
        )

    def _transition(
        self,
        update: str,
        params: tuple[Any, ...],
        audit: AuditRecord | None,
        *,
        now: datetime | None = None,
        revocations: Sequence[RevocationOrder] | None = None,
        issued_serial: str | None = None,
        cmp: bytes | None = None,
    ) -> bool:
        """One conditional update. With ``revocations`` (decided on a row whose certificate
        was ``issued_serial``), only while the row still holds that certificate; the orders,
        and the device's waiting ones made due, land with it. ``cmp``: a CMP transaction
        whose certConf this is closes confirmed with it."""
        if revocations is not None:
            update += " AND issued_serial IS NOT DISTINCT FROM ?"
            params = (*params, issued_serial)
        with self._db.write() as conn:
            if revocations is None and cmp is None and self._db.dialect == "postgresql":
                # One statement, audit entry included (pg_register_statements).
                return pg_register_statements.transition(conn, update, params, audit)
            if conn.execute(update, params).rowcount != 1:
                return False
            if revocations is not None:
                assert now is not None
                release_waiting(conn, str(params[1]), due_at=now)
                insert_orders(conn, revocations, now=now)
            if cmp is not None:
                assert now is not None
                mark_confirmed(conn, cmp, now=now)
            _audit(conn, audit)
        return True


def _audit(conn: Any, record: AuditRecord | None) -> None:
    if record is not None:
        sqlite_audit.append_records(conn, [record])
