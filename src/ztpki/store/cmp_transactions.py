"""CMP transactions in the register: one row per transactionID the node ever accepted.

A transactionID names one exchange (ir/cr/p10cr/kur, then certConf) of one device (RFC 9483
section 3.1). Its row is written before the request is served, so a second request under
the same id -- a replay, or another device's collision -- is refused (transactionIdInUse)
by the primary key, on every node machine sharing the register. The row then holds what the
certConf must match: the certificate issued in the exchange and the nonce the answer carried.
Rows are never reused; a finished transaction stays, as the audit trail does.

The row also keeps the key request it was opened with (schema version 8), so that a request
answered ``waiting`` (the customer CA system slow or unavailable, RFC 9483 section 4.4) can be
served on the device's pollReq by any worker of any node machine, after a restart too:
``waiting_since`` says the device was told to poll.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from ztpki.errors import ZtpkiError
from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.sql import Database, SQLConnection


class CmpTransactionState(enum.StrEnum):
    OPEN = "open"  # request accepted, being served
    ISSUED = "issued"  # certificate sent, its certConf awaited
    CONFIRMED = "confirmed"  # certConf accepted (or implicitConfirm granted)
    REJECTED = "rejected"  # the request was refused, or the device rejected the certificate


@dataclass(frozen=True)
class CmpTransaction:
    transaction_id: bytes
    device_id: str
    label: str
    body: str  # the request's body type: ir, cr, p10cr, kur
    signer_fingerprint: str  # SHA-256 of the certificate that protected the request
    state: CmpTransactionState
    created_at: datetime
    updated_at: datetime
    cert_req_id: int | None = None
    serial: str | None = None
    certificate_der: bytes | None = field(default=None, repr=False)
    response_nonce: bytes | None = None  # the senderNonce of the node's answer
    # The key request the transaction waits with (version 8; None in older rows).
    operation: str | None = None  # the enrollment operation serving it
    public_key_der: bytes | None = field(default=None, repr=False)
    csr_der: bytes | None = field(default=None, repr=False)
    named_device_id: str | None = None
    waiting_since: datetime | None = None  # answered ``waiting``: the device polls

    @property
    def waiting(self) -> bool:
        return self.state is CmpTransactionState.OPEN and self.waiting_since is not None


# Instants are encoded as everywhere in the register (UTC, fixed width).
CMP_TRANSACTION_TABLE = """
    CREATE TABLE cmp_transaction (
        transaction_id     BLOB PRIMARY KEY,
        device_id          TEXT NOT NULL CHECK (device_id <> ''),
        label              TEXT NOT NULL CHECK (label <> ''),
        body               TEXT NOT NULL CHECK (body IN ('ir', 'cr', 'p10cr', 'kur')),
        signer_fingerprint TEXT NOT NULL CHECK (length(signer_fingerprint) = 64),
        state              TEXT NOT NULL
                           CHECK (state IN ('open', 'issued', 'confirmed', 'rejected')),
        cert_req_id        INTEGER,
        serial             TEXT,
        certificate_der    BLOB,
        response_nonce     BLOB,
        created_at         TEXT NOT NULL,
        updated_at         TEXT NOT NULL,
        CHECK (state IN ('open', 'rejected') OR (serial IS NOT NULL
               AND certificate_der IS NOT NULL AND response_nonce IS NOT NULL))
    )"""
CMP_TRANSACTION_INDEX = "CREATE INDEX cmp_transaction_by_device ON cmp_transaction (device_id)"
# Version 8: the key request, so that a pollReq can be served from the register alone.
CMP_TRANSACTION_V8 = tuple(
    f"ALTER TABLE cmp_transaction ADD COLUMN {column}"
    for column in (
        "operation TEXT",
        "public_key_der BLOB",
        "csr_der BLOB",
        "named_device_id TEXT",
        "waiting_since TEXT",
    )
)

_COLUMNS = (
    "transaction_id, device_id, label, body, signer_fingerprint, state, created_at, "
    "updated_at, cert_req_id, serial, certificate_der, response_nonce, operation, "
    "public_key_der, csr_der, named_device_id, waiting_since"
)


@dataclass(frozen=True)
class CmpIssued:
    """What a CMP transaction records when its certificate goes out: the senderNonce of the
    answer (its certConf must echo it) and whether implicitConfirm was granted."""

    transaction_id: bytes
    response_nonce: bytes
    confirmed: bool = False
    # Not over a row answered ``waiting``: that certificate goes out on the device's pollReq,
    # which records its own answer (the request's issuance finishing in the background).
    unless_waiting: bool = False


class TransactionIdTaken(ZtpkiError):
    """A CMP request's transactionID was used before (a replay, or another device's): the
    request is not served. The CMP front end answers it with failInfo transactionIdInUse."""

    code = "transaction-id-in-use"

    def __init__(self, transaction_id: bytes) -> None:
        super().__init__(
            f"transactionID {transaction_id.hex()} was used before: start every request "
            "with a new transactionID"
        )


class CmpTransactionStore(Protocol):
    """What the node's CMP front end keeps of its transactions."""

    def begin_cmp_transaction(self, transaction: CmpTransaction) -> bool: ...

    def record_cmp_issued(
        self,
        transaction_id: bytes,
        *,
        serial: str,
        certificate_der: bytes,
        response_nonce: bytes,
        confirmed: bool,
        now: datetime,
    ) -> bool: ...

    def close_cmp_transaction(
        self, transaction_id: bytes, *, state: CmpTransactionState, now: datetime
    ) -> bool: ...

    def mark_cmp_waiting(self, transaction_id: bytes, *, now: datetime) -> bool: ...

    def cmp_transaction(self, transaction_id: bytes) -> CmpTransaction | None: ...


class CmpTransactions:
    """The CMP transaction operations of SQLiteNodeStore (a mixin over its database)."""

    _db: Database

    def begin_cmp_transaction(self, transaction: CmpTransaction) -> bool:
        """Record a new transaction; False if its id was ever used (nothing written)."""
        with self._db.write() as conn:
            return insert_transaction(conn, transaction)

    def record_cmp_issued(
        self,
        transaction_id: bytes,
        *,
        serial: str,
        certificate_der: bytes,
        response_nonce: bytes,
        confirmed: bool,
        now: datetime,
    ) -> bool:
        """An open transaction's certificate was sent (or, confirmed: implicitly accepted)."""
        issued = CmpIssued(transaction_id, response_nonce, confirmed=confirmed)
        with self._db.write() as conn:
            return mark_issued(
                conn, issued, serial=serial, certificate_der=certificate_der, now=now
            )

    def close_cmp_transaction(
        self, transaction_id: bytes, *, state: CmpTransactionState, now: datetime
    ) -> bool:
        """An open or issued transaction ends (confirmed or rejected); False if it had."""
        if state not in (CmpTransactionState.CONFIRMED, CmpTransactionState.REJECTED):
            raise ValueError(f"a transaction closes confirmed or rejected, not {state.value}")
        with self._db.write() as conn:
            return (
                conn.execute(
                    "UPDATE cmp_transaction SET state = ?, updated_at = ? "
                    "WHERE transaction_id = ? AND state IN ('open', 'issued') "
                    "AND (? = 'rejected' OR state = 'issued')",
                    (state.value, encode_instant(now), transaction_id, state.value),
                ).rowcount
                == 1
            )

    def mark_cmp_waiting(self, transaction_id: bytes, *, now: datetime) -> bool:
        """An open transaction was answered ``waiting``; False if it is no longer open."""
        with self._db.write() as conn:
            return (
                conn.execute(
                    "UPDATE cmp_transaction SET waiting_since = COALESCE(waiting_since, ?), "
                    "updated_at = ? WHERE transaction_id = ? AND state = 'open'",
                    (encode_instant(now), encode_instant(now), transaction_id),
                ).rowcount
                == 1
            )

    def cmp_transaction(self, transaction_id: bytes) -> CmpTransaction | None:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM cmp_transaction WHERE transaction_id = ?",  # noqa: S608
                (transaction_id,),
            ).fetchone()
        if row is None:
            return None
        return CmpTransaction(
            transaction_id=bytes(row[0]),
            device_id=row[1],
            label=row[2],
            body=row[3],
            signer_fingerprint=row[4],
            state=CmpTransactionState(row[5]),
            created_at=decode_instant(row[6]),
            updated_at=decode_instant(row[7]),
            cert_req_id=row[8],
            serial=row[9],
            certificate_der=None if row[10] is None else bytes(row[10]),
            response_nonce=None if row[11] is None else bytes(row[11]),
            operation=row[12],
            public_key_der=None if row[13] is None else bytes(row[13]),
            csr_der=None if row[14] is None else bytes(row[14]),
            named_device_id=row[15],
            waiting_since=None if row[16] is None else decode_instant(row[16]),
        )


# -- the statements, for a caller's own transaction (SQLiteNodeStore.begin_issuance and
# complete_issuance put a CMP request's row in the issuance's own commit) --------------------


def insert_transaction(conn: SQLConnection, transaction: CmpTransaction) -> bool:
    """INSERT the row unless its transactionID was ever used; False then (nothing written)."""
    t = transaction
    return (
        conn.execute(
            f"INSERT INTO cmp_transaction ({_COLUMNS}) "  # noqa: S608 (constant columns)
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (transaction_id) DO NOTHING",
            (
                t.transaction_id,
                t.device_id,
                t.label,
                t.body,
                t.signer_fingerprint,
                t.state.value,
                encode_instant(t.created_at),
                encode_instant(t.updated_at),
                t.cert_req_id,
                t.serial,
                t.certificate_der,
                t.response_nonce,
                t.operation,
                t.public_key_der,
                t.csr_der,
                t.named_device_id,
                None if t.waiting_since is None else encode_instant(t.waiting_since),
            ),
        ).rowcount
        == 1
    )


_MARK_ISSUED = (
    "UPDATE cmp_transaction SET state = ?, serial = ?, certificate_der = ?, "
    "response_nonce = ?, updated_at = ? WHERE transaction_id = ? AND state = 'open'"
)
_MARK_ISSUED_UNLESS_WAITING = _MARK_ISSUED + " AND waiting_since IS NULL"


def mark_issued(
    conn: SQLConnection, issued: CmpIssued, *, serial: str, certificate_der: bytes, now: datetime
) -> bool:
    """An open transaction's certificate goes out: ISSUED (or CONFIRMED, implicitConfirm)."""
    state = CmpTransactionState.CONFIRMED if issued.confirmed else CmpTransactionState.ISSUED
    return (
        conn.execute(
            _MARK_ISSUED_UNLESS_WAITING if issued.unless_waiting else _MARK_ISSUED,
            (
                state.value,
                serial,
                certificate_der,
                issued.response_nonce,
                encode_instant(now),
                issued.transaction_id,
            ),
        ).rowcount
        == 1
    )


def mark_confirmed(conn: SQLConnection, transaction_id: bytes, *, now: datetime) -> bool:
    """An issued transaction's certConf was accepted: CONFIRMED (False if it was not issued)."""
    return (
        conn.execute(
            "UPDATE cmp_transaction SET state = 'confirmed', updated_at = ? "
            "WHERE transaction_id = ? AND state = 'issued'",
            (encode_instant(now), transaction_id),
        ).rowcount
        == 1
    )
