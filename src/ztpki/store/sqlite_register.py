"""The customer node's access-control register and audit trail in one SQLite file.

The state machine lives in the schema as well as here: CHECK constraints allow only the known
states and tie ISSUING to a held lease and BLOCKED to a remembered state, and every transition
is one conditional ``UPDATE ... WHERE state ...`` whose row count says whether it happened.
An ``audit`` record given to a transition is appended in the same transaction, only when the
transition happens.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from ztpki.store import sqlite_audit
from ztpki.store.audit import verify_chain
from ztpki.store.cmp_secrets import CmpSecrets
from ztpki.store.cmp_transactions import CmpTransactions
from ztpki.store.console_sessions import SESSION_SCHEMA, ConsoleSessionQueries
from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.records import (
    RESTING_STATES,
    AuditEntry,
    AuditRecord,
    AuditVerification,
    DeviceState,
    DuplicateDevice,
    ImportResult,
    ManifestRecord,
    NewDevice,
    RegisteredDevice,
)
from ztpki.store.revocation_records import RevocationOrder
from ztpki.store.sql import Database, SQLConnection
from ztpki.store.sqlite_console import CONSOLE_SCHEMA, ConsoleQueries
from ztpki.store.sqlite_register_import import MANIFEST_COLUMNS as _MANIFEST_COLUMNS
from ztpki.store.sqlite_register_import import import_devices
from ztpki.store.sqlite_register_schema import (
    MIGRATIONS,
    POSTGRES_MIGRATIONS,
    REGISTER_SCHEMA,
    SCHEMA_COMPONENT,
    SCHEMA_VERSION,
)
from ztpki.store.sqlite_register_transitions import RegisterTransitions
from ztpki.store.sqlite_revocation_queue import insert_orders

# The schema names are re-exported: callers read the component and version from this module.
__all__ = ["MIGRATIONS", "REGISTER_SCHEMA", "SCHEMA_COMPONENT", "SCHEMA_VERSION", "SQLiteNodeStore"]

_DEVICE_COLUMNS = (
    "device_id, state, temp_fingerprint, manufacturer, model, batch, manifest_id, "
    "issued_serial, issued_spki, issued_certificate_der, blocked_from, lease_token, "
    "lease_expires, previous_state, updated_at, issuance_label, renewed_from"
)
_JOINED_COLUMNS = ", ".join(f"d.{name.strip()}" for name in _DEVICE_COLUMNS.split(","))
_INSERT_DEVICE = (
    "INSERT INTO device (device_id, state, temp_fingerprint, manufacturer, model, batch, "
    "manifest_id, updated_at) VALUES (?, 'listed', ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device_id) DO NOTHING"
)

_COMPLETE = (
    "UPDATE device SET state = ?, issued_serial = ?, issued_spki = ?, "
    "issued_certificate_der = ?, lease_token = NULL, lease_expires = NULL, "
    "previous_state = NULL, renewed_from = ?, updated_at = ? "
    "WHERE device_id = ? AND state = 'issuing' AND lease_token = ?"
)
_COMPLETE_DROPPING_CHAIN = (
    f"WITH changed AS ({_COMPLETE} RETURNING device_id), gone AS (DELETE FROM device_chain "  # noqa: S608
    "WHERE device_id IN (SELECT device_id FROM changed)) SELECT COUNT(*) FROM changed"
)


class SQLiteNodeStore(
    RegisterTransitions, CmpTransactions, CmpSecrets, ConsoleQueries, ConsoleSessionQueries
):
    """RegisterStore, AuditLog and the revocation queue over one database (a SQLite file or
    PostgreSQL)."""

    def __init__(self, db: Database, *, migrate: bool = True) -> None:
        self._db = db
        try:
            db.ensure_schema(
                SCHEMA_COMPONENT,
                SCHEMA_VERSION,
                REGISTER_SCHEMA + sqlite_audit.SCHEMA + CONSOLE_SCHEMA + SESSION_SCHEMA,
                migrations=MIGRATIONS,
                postgres_migrations=POSTGRES_MIGRATIONS,
                migrate=migrate,
            )
        except BaseException:
            db.close()
            raise

    @property
    def database(self) -> Database:
        return self._db

    def close(self) -> None:
        self._db.close()

    def group(self) -> AbstractContextManager[None]:
        """Run the calls made inside on this thread in one transaction with one commit.

        Each call keeps its own all-or-nothing behaviour (a savepoint); the calls that did not
        raise become durable together when the group ends. GroupAborted: nothing did.
        """
        return self._db.group()

    def __enter__(self) -> SQLiteNodeStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ listing devices

    def import_devices(
        self,
        devices: Iterable[NewDevice],
        *,
        manifest: ManifestRecord,
        audit: AuditRecord | None = None,
    ) -> ImportResult:
        return import_devices(self._db, devices, manifest=manifest, audit=audit)

    def add_device(
        self, device: NewDevice, *, now: datetime, audit: AuditRecord | None = None
    ) -> None:
        with self._db.write() as conn:
            if conn.execute(_INSERT_DEVICE, _new_device_row(device, None, now)).rowcount != 1:
                raise DuplicateDevice(
                    f"device {device.device_id} is already in the register; "
                    "block or inspect it instead of adding it again"
                )
            _audit(conn, audit)

    # ------------------------------------------------------------------ reading

    def get(self, device_id: str, *, wait: bool = True) -> RegisteredDevice | None:
        """The device's row. ``wait=False``: Unavailable at once if the database is busy."""
        with self._db.read(wait=wait, single=True) as conn:
            return _select_device(conn, device_id)

    def devices(
        self, *, state: DeviceState | None = None, page: int = 1000
    ) -> Iterator[RegisteredDevice]:
        # Page by page (keyset on device_id), each page its own short read: memory stays
        # bounded and no transaction is held while the caller works on the rows.
        if page < 1:
            raise ValueError("page must be at least 1")
        where = "d.state = ? AND " if state else ""
        params: tuple[Any, ...] = (DeviceState(state).value,) if state else ()
        after = ""
        while True:
            with self._db.read() as conn:
                rows = conn.execute(
                    f"SELECT {_DEVICE_COLUMNS} FROM device d "  # noqa: S608
                    f"WHERE {where}d.device_id > ? ORDER BY d.device_id LIMIT ?",
                    (*params, after, page),
                ).fetchall()
                if not rows:
                    return
                chains: dict[str, list[bytes]] = {}
                for device_id, der in conn.execute(
                    "SELECT device_id, certificate_der FROM device_chain "
                    "WHERE device_id >= ? AND device_id <= ? ORDER BY device_id, position",
                    (rows[0][0], rows[-1][0]),
                ):
                    chains.setdefault(device_id, []).append(bytes(der))
            yield from (_device(row, chains.get(row[0], [])) for row in rows)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def counts(self) -> dict[DeviceState, int]:
        with self._db.read(single=True) as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM device GROUP BY state").fetchall()
        found = {DeviceState(state): int(count) for state, count in rows}
        return {state: found.get(state, 0) for state in DeviceState}

    def manifests(self) -> list[ManifestRecord]:
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_MANIFEST_COLUMNS} FROM manifest "  # noqa: S608
                "ORDER BY imported_at, manufacturer, manifest_id"
            ).fetchall()
        return [_manifest(row) for row in rows]

    # ------------------------------------------------------------------ issuance lease

    def begin_issuance(
        self,
        device_id: str,
        *,
        allowed_from: Collection[DeviceState],
        token: str,
        label: str,
        now: datetime,
        lease_seconds: float,
        audit: AuditRecord | None = None,
        take_over: str | None = None,
    ) -> RegisteredDevice | None:
        allowed = _resting_states(allowed_from)
        if not token:
            raise ValueError("an issuance lease needs a non-empty token")
        if not label:
            raise ValueError("an issuance needs the EST label it runs under")
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be positive")
        marks = ", ".join("?" for _ in allowed)
        at = encode_instant(now, name="now")
        expires = encode_instant(now + timedelta(seconds=lease_seconds))
        # A lease alone is not synced on its own: it is volatile by nature. It is visible to
        # every process at once, and the next synced commit (the completion or abort that
        # ends it, before any answer reaches the device) makes it durable. A power loss that
        # takes it back leaves the device where it was, which a retry handles like a lost
        # answer (the CA system's live certificate is superseded). With an audit record it
        # is a decision, and synced.
        params = (token, expires, label, at, device_id, *allowed, at, take_over or "",
                  *allowed, label)  # fmt: skip
        with self._db.write(sync=audit is not None) as conn:
            if self._db.dialect == "postgresql":
                # One statement: the UPDATE returns the row as it was (a subquery's snapshot),
                # one round trip fewer than a read and then the UPDATE.
                row = conn.execute(_begin_issuance("old.", marks), params).fetchone()
                if row is None:
                    return None
                before = _device(row[:-1], [bytes(der) for der in row[-1] or ()])
            else:
                found = _select_device(conn, device_id)
                if found is None or conn.execute(_begin_issuance("", marks), params).rowcount != 1:
                    return None
                before = found
            _audit(conn, audit)
        return before

    def complete_issuance(
        self,
        device_id: str,
        *,
        token: str,
        new_state: DeviceState,
        serial: str,
        spki: str,
        certificate_der: bytes,
        chain_der: Sequence[bytes],
        now: datetime,
        audit: AuditRecord | None = None,
        revocations: Sequence[RevocationOrder] = (),
        renewed_from: str | None = None,
    ) -> bool:
        new_state = DeviceState(new_state)
        if new_state not in (DeviceState.ISSUED, DeviceState.CUSTOMIZED):
            raise ValueError("an issuance completes as ISSUED or CUSTOMIZED")
        params = (new_state.value, serial, spki, certificate_der, renewed_from,
                  encode_instant(now), device_id, token)  # fmt: skip
        with self._db.write() as conn:
            if self._db.dialect == "postgresql":
                # The old chain goes in the same statement (one round trip fewer).
                changed = conn.execute(_COMPLETE_DROPPING_CHAIN, params).fetchone()[0]
            else:
                changed = conn.execute(_COMPLETE, params).rowcount
            if changed != 1:
                return False
            if self._db.dialect != "postgresql":
                conn.execute("DELETE FROM device_chain WHERE device_id = ?", (device_id,))
            if chain_der:  # one statement for the whole chain: one round trip
                conn.execute(
                    "INSERT INTO device_chain (device_id, position, certificate_der) VALUES "  # noqa: S608
                    + ", ".join("(?, ?, ?)" for _ in chain_der),
                    [v for row in enumerate(chain_der) for v in (device_id, *row)],
                )
            insert_orders(conn, revocations, now=now)
            _audit(conn, audit)
        return True

    def abort_issuance(
        self, device_id: str, *, token: str, now: datetime, audit: AuditRecord | None = None
    ) -> bool:
        return self._transition(
            "UPDATE device SET state = previous_state, lease_token = NULL, lease_expires = NULL, "
            "previous_state = NULL, updated_at = ? "
            "WHERE device_id = ? AND state = 'issuing' AND lease_token = ?",
            (encode_instant(now), device_id, token),
            audit,
        )

    # ------------------------------------------------------------------ audit trail

    def append(
        self,
        *,
        at: datetime,
        device_id: str | None,
        client_fingerprint: str | None,
        endpoint: str,
        decision: str,
        reason: str,
        serial: str | None,
    ) -> AuditEntry:
        record = AuditRecord(
            at=at,
            device_id=device_id,
            client_fingerprint=client_fingerprint,
            endpoint=endpoint,
            decision=decision,
            reason=reason,
            serial=serial,
        )
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        with self._db.write() as conn:
            return sqlite_audit.append_records(conn, records)

    def entries(
        self, *, device_id: str | None = None, limit: int | None = None, page: int = 1000
    ) -> Iterator[AuditEntry]:
        # Page by page (keyset on seq), like ``devices``; the trail only grows at its end.
        if page < 1:
            raise ValueError("page must be at least 1")
        after = 0
        if limit is not None:
            with self._db.read() as conn:
                after = sqlite_audit.seq_before_newest(conn, device_id=device_id, limit=limit)
        while True:
            with self._db.read() as conn:
                entries = sqlite_audit.select_entries(
                    conn, device_id=device_id, after=after, limit=page
                )
            yield from entries
            if len(entries) < page:
                return
            after = entries[-1].seq

    def verify(self) -> AuditVerification:
        with self._db.read() as conn:
            try:
                return verify_chain(sqlite_audit.iterate_entries(conn))
            except sqlite_audit.UnreadableEntry as exc:
                return AuditVerification(False, exc.seq, exc.seq, str(exc))

    def counts_by_decision(self) -> dict[str, int]:
        with self._db.read() as conn:
            return sqlite_audit.count_by_decision(conn)


def _audit(conn: SQLConnection, record: AuditRecord | None) -> None:
    if record is not None:
        sqlite_audit.append_records(conn, [record])


def _begin_issuance(t: str, marks: str) -> str:
    """The UPDATE that leases a device; ``t``: how the row's old values are named ("" in
    place; "old." for PostgreSQL's form, which returns them, with the chain as an array).

    A lease that expired, or whose holder the caller knows is dead (take_over; "" never
    matches, a token is never empty), belongs to a node that crashed mid-issuance: take it
    over, but only for an issuance that started from a state this caller may start from.
    The label binds the device until it is customized: an aborted or taken-over issuance may
    have reached that label's CA, and only a retry there supersedes it.
    """
    resting = f"CASE WHEN {t}state = 'issuing' THEN {t}previous_state ELSE {t}state END"
    update = (
        f"UPDATE device{' AS d' if t else ''} SET state = 'issuing', lease_token = ?, "  # noqa: S608
        f"lease_expires = ?, previous_state = {resting}, issuance_label = ?, updated_at = ? "
    )
    where = (
        f"({t}state IN ({marks}) OR ({t}state = 'issuing' AND ({t}lease_expires < ? OR "
        f"{t}lease_token = ?) AND {t}previous_state IN ({marks}))) AND ({t}issuance_label IS "
        f"NULL OR {t}issuance_label = ? OR {resting} = 'customized')"
    )
    if not t:
        return f"{update}WHERE device_id = ? AND {where}"
    returned = ", ".join(f"old.{name.strip()}" for name in _DEVICE_COLUMNS.split(","))
    return (
        f"{update}FROM (SELECT {_DEVICE_COLUMNS} FROM device WHERE device_id = ?) AS old "  # noqa: S608
        f"WHERE d.device_id = old.device_id AND {where} RETURNING {returned}, (SELECT "
        "array_agg(c.certificate_der ORDER BY c.position) FROM device_chain c "
        "WHERE c.device_id = old.device_id)"
    )


def _resting_states(allowed_from: Collection[DeviceState]) -> list[str]:
    allowed = sorted({DeviceState(state) for state in allowed_from})
    if not allowed or not set(allowed) <= RESTING_STATES:
        raise ValueError("allowed_from must name one or more of LISTED, ISSUED, CUSTOMIZED")
    return [state.value for state in allowed]


def _select_device(conn: SQLConnection, device_id: str) -> RegisteredDevice | None:
    # One statement for the row and its chain (a row per chain certificate): one round trip
    # to a database server, and a read that needs no transaction around it.
    rows = conn.execute(
        f"SELECT {_JOINED_COLUMNS}, c.certificate_der FROM device d "  # noqa: S608
        "LEFT JOIN device_chain c ON c.device_id = d.device_id "
        "WHERE d.device_id = ? ORDER BY c.position",
        (device_id,),
    ).fetchall()
    if not rows:
        return None
    return _device(rows[0][:-1], [bytes(row[-1]) for row in rows if row[-1] is not None])


def _new_device_row(device: NewDevice, manifest_id: str | None, now: datetime) -> tuple[Any, ...]:
    return (
        device.device_id,
        device.temp_fingerprint,
        device.manufacturer,
        device.model,
        device.batch,
        manifest_id,
        encode_instant(now, name="now"),
    )


def _optional_state(value: str | None) -> DeviceState | None:
    return None if value is None else DeviceState(value)


def _device(row: Sequence[Any], chain: list[bytes]) -> RegisteredDevice:
    return RegisteredDevice(
        device_id=row[0],
        state=DeviceState(row[1]),
        temp_fingerprint=row[2],
        manufacturer=row[3],
        model=row[4],
        batch=row[5],
        manifest_id=row[6],
        issued_serial=row[7],
        issued_spki=row[8],
        issued_certificate_der=None if row[9] is None else bytes(row[9]),
        issued_chain_der=tuple(chain),
        blocked_from=_optional_state(row[10]),
        lease_token=row[11],
        lease_expires=None if row[12] is None else decode_instant(row[12]),
        previous_state=_optional_state(row[13]),
        updated_at=decode_instant(row[14]),
        issuance_label=row[15],
        renewed_from=row[16],
    )


def _manifest(row: Sequence[Any]) -> ManifestRecord:
    return ManifestRecord(
        manufacturer=row[0],
        manifest_id=row[1],
        issued_at=decode_instant(row[2]),
        signer=row[3],
        device_count=int(row[4]),
        imported_at=decode_instant(row[5]),
    )
