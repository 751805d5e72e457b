"""The CA system's registry of CA-clients (with their entitlements) and of refused requests.

Part of SQLiteIssuanceStore, kept apart because it is the CA system's authorization data
rather than its issuance record. The queries use only syntax PostgreSQL shares.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.records import (
    ClientEntitlement,
    ClientRecord,
    ClientStatus,
    DuplicateClient,
    RefusedRequest,
)
from ztpki.store.sql import Database

_CLIENT_COLUMNS = "name, serial, fingerprint, not_after, status, added_at, removed_at, entitlement"
_REFUSAL_COLUMNS = "at, client_name, request_id, device_id, ca_name, reason"


class SQLiteClientRegistry:
    """The CA-client half of SQLiteIssuanceStore."""

    _db: Database

    def add_client(
        self,
        name: str,
        *,
        serial: str,
        fingerprint: str,
        not_after: datetime,
        now: datetime,
        entitlement: ClientEntitlement,
    ) -> None:
        if not name:
            raise ValueError("a CA-client needs a name")
        with self._db.write() as conn:
            clash = conn.execute(
                "SELECT name, status FROM ca_client "
                "WHERE (name = ? AND status = 'active') OR fingerprint = ?",
                (name, fingerprint),
            ).fetchone()
            if clash is not None:
                raise DuplicateClient(_clash_message(name, clash))
            conn.execute(
                f"INSERT INTO ca_client ({_CLIENT_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, 'active', ?, NULL, ?)",
                (
                    name,
                    serial,
                    fingerprint,
                    encode_instant(not_after),
                    encode_instant(now),
                    _encode_entitlement(entitlement),
                ),
            )

    def set_entitlement(self, name: str, entitlement: ClientEntitlement) -> bool:
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE ca_client SET entitlement = ? WHERE name = ? AND status = 'active'",
                (_encode_entitlement(entitlement), name),
            )
            return cursor.rowcount == 1

    def record_refusal(self, refusal: RefusedRequest) -> None:
        with self._db.write() as conn:
            conn.execute(
                f"INSERT INTO refused_request ({_REFUSAL_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    encode_instant(refusal.at),
                    refusal.client,
                    refusal.request_id,
                    refusal.device_id,
                    refusal.ca_name,
                    refusal.reason,
                ),
            )

    def refusals(self, *, limit: int | None = None) -> list[RefusedRequest]:
        query = f"SELECT {_REFUSAL_COLUMNS} FROM refused_request ORDER BY refusal_id DESC"  # noqa: S608
        with self._db.read() as conn:
            if limit is None:
                rows = conn.execute(query).fetchall()
            else:
                rows = conn.execute(f"{query} LIMIT ?", (limit,)).fetchall()
        return [_refusal(row) for row in reversed(rows)]

    def remove_client(self, name: str, *, now: datetime) -> bool:
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE ca_client SET status = 'revoked', removed_at = ? "
                "WHERE name = ? AND status = 'active'",
                (encode_instant(now), name),
            )
            return cursor.rowcount == 1

    def client_by_fingerprint(self, fingerprint: str) -> ClientRecord | None:
        with self._db.read(single=True) as conn:
            row = conn.execute(
                f"SELECT {_CLIENT_COLUMNS} FROM ca_client WHERE fingerprint = ?",  # noqa: S608
                (fingerprint,),
            ).fetchone()
        return None if row is None else _client(row)

    def clients(self) -> list[ClientRecord]:
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_CLIENT_COLUMNS} FROM ca_client ORDER BY added_at, client_id"  # noqa: S608
            ).fetchall()
        return [_client(row) for row in rows]


def _client(row: Sequence[Any]) -> ClientRecord:
    return ClientRecord(
        name=row[0],
        serial=row[1],
        fingerprint=row[2],
        not_after=decode_instant(row[3]),
        status=ClientStatus(row[4]),
        added_at=decode_instant(row[5]),
        removed_at=None if row[6] is None else decode_instant(row[6]),
        entitlement=None if row[7] is None else _decode_entitlement(row[7]),
    )


_ENTITLEMENT_KEYS = {
    "cas": "cas",
    "device_ids": "device_ids",
    "dns": "dns_names",
    "ip": "ip_ranges",
}


def _encode_entitlement(entitlement: ClientEntitlement) -> str:
    return json.dumps(
        {key: list(getattr(entitlement, field)) for key, field in _ENTITLEMENT_KEYS.items()},
        sort_keys=True,
    )


def _decode_entitlement(text: str) -> ClientEntitlement:
    data = json.loads(text)
    return ClientEntitlement(
        **{field: tuple(data.get(key, ())) for key, field in _ENTITLEMENT_KEYS.items()}
    )


def _refusal(row: Sequence[Any]) -> RefusedRequest:
    return RefusedRequest(
        at=decode_instant(row[0]),
        client=row[1],
        request_id=row[2],
        device_id=row[3],
        ca_name=row[4],
        reason=row[5],
    )


def _clash_message(name: str, clash: Sequence[Any]) -> str:
    if clash[0] == name and clash[1] == ClientStatus.ACTIVE:
        return f"a CA-client named {name} is already active; remove it first or pick another name"
    return (
        f"this certificate is already registered for CA-client {clash[0]}; "
        "issue a new client certificate"
    )
