"""The CA system's issuance record and CA-client registry in SQLite.

The schema itself keeps the rules: one serial per CA (primary key), at most one ACTIVE
certificate per device and CA (partial unique index), one active CA-client per name, one
certificate per CA-client request id (``issuance_request``, primary key): several CA-system
instances sharing the store answer a repeated request with the certificate recorded for it,
and the database, not a process, decides which instance recorded it first.
Each CA-client's entitlement is kept with its registration (JSON in ``ca_client``), and
each certificate names the CA-client that obtained it, so that only that client supersedes
it. Requests refused as not authorized are kept in ``refused_request``.
The DDL and queries use only syntax PostgreSQL shares (BLOB becomes BYTEA there).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

from ztpki.errors import ZtpkiError
from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.pg_schema import postgres_ddl
from ztpki.store.records import (
    AlreadyIssued,
    AnsweredRequest,
    CertificateStatus,
    DuplicateSerial,
    IssuedCertificate,
    RequestAnswered,
    SupersedeRefused,
)
from ztpki.store.sql import Database, DetachedWrite, SQLConnection
from ztpki.store.sqlite_ca_clients import SQLiteClientRegistry
from ztpki.store.sqlite_ca_revocations import SCHEMA as REVOCATION_SCHEMA
from ztpki.store.sqlite_ca_revocations import SQLiteRevocations
from ztpki.store.sqlite_db import savepoint

SCHEMA_COMPONENT = "ca_system"
SCHEMA_VERSION = 4

_REFUSED_REQUEST = """
    CREATE TABLE refused_request (
        refusal_id  INTEGER PRIMARY KEY,
        at          TEXT NOT NULL,
        client_name TEXT NOT NULL CHECK (client_name <> ''),
        request_id  TEXT NOT NULL,
        device_id   TEXT,
        ca_name     TEXT,
        reason      TEXT NOT NULL
    )"""
# The request each certificate answered, written just before its certificate in the same
# transaction: a second request with the same id finds the row taken and writes nothing, and
# a certificate refused gives its row back (so every row names a recorded certificate; no
# foreign key, whose upkeep cost more than both inserts). ``private_key`` is the answer's key
# encrypted under the requester's one-time passphrase, or NULL (a CSR; a key sent in the
# clear is never kept; a key forgotten once no retry can come any more: forget_answer_keys,
# on the partial index of the few still kept).
_ISSUANCE_REQUEST = (
    """
    CREATE TABLE issuance_request (
        client_name TEXT NOT NULL CHECK (client_name <> ''),
        request_id  TEXT NOT NULL CHECK (request_id <> ''),
        digest      TEXT NOT NULL CHECK (length(digest) = 64),
        ca_name     TEXT NOT NULL,
        serial      TEXT NOT NULL,
        answered_at TEXT NOT NULL,
        private_key BLOB,
        PRIMARY KEY (client_name, request_id)
    )""",
    """
    CREATE INDEX issuance_request_kept_keys ON issuance_request (answered_at)
        WHERE private_key IS NOT NULL
    """,
)
SCHEMA = (
    """
    CREATE TABLE issued_certificate (
        ca_name         TEXT NOT NULL CHECK (ca_name <> ''),
        serial          TEXT NOT NULL CHECK (serial <> '' AND serial = lower(serial)),
        device_id       TEXT NOT NULL CHECK (device_id <> ''),
        subject         TEXT NOT NULL,
        not_before      TEXT NOT NULL,
        not_after       TEXT NOT NULL CHECK (not_after > not_before),
        status          TEXT NOT NULL CHECK (status IN ('active', 'superseded', 'revoked')),
        request_id      TEXT NOT NULL,
        fingerprint     TEXT NOT NULL CHECK (length(fingerprint) = 64),
        issued_at       TEXT NOT NULL,
        certificate_der BLOB NOT NULL,
        client_name     TEXT,
        PRIMARY KEY (ca_name, serial)
    )""",
    # Exactly one live certificate per device and CA, whatever the code above it does.
    """
    CREATE UNIQUE INDEX issued_certificate_one_active
        ON issued_certificate (ca_name, device_id) WHERE status = 'active'
    """,
    "CREATE INDEX issued_certificate_by_device ON issued_certificate (device_id, issued_at)",
    "CREATE INDEX issued_certificate_by_time ON issued_certificate (issued_at, serial)",
    """
    CREATE TABLE ca_client (
        client_id   INTEGER PRIMARY KEY,
        name        TEXT NOT NULL CHECK (name <> ''),
        serial      TEXT NOT NULL,
        fingerprint TEXT NOT NULL UNIQUE CHECK (length(fingerprint) = 64),
        not_after   TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
        added_at    TEXT NOT NULL,
        removed_at  TEXT,
        entitlement TEXT,
        CHECK ((status = 'active' AND removed_at IS NULL)
               OR (status = 'revoked' AND removed_at IS NOT NULL))
    )""",
    "CREATE UNIQUE INDEX ca_client_one_active_name ON ca_client (name) WHERE status = 'active'",
    _REFUSED_REQUEST,
    *REVOCATION_SCHEMA,
    *_ISSUANCE_REQUEST,
)
# Version 1 had no entitlements: its clients keep a NULL one, which `ca serve` refuses to
# start with (naming the `ca set-client` command), and its certificates name no client.
MIGRATIONS = {
    1: (
        "ALTER TABLE issued_certificate ADD COLUMN client_name TEXT",
        "ALTER TABLE ca_client ADD COLUMN entitlement TEXT",
        _REFUSED_REQUEST,
    ),
    # Version 2 had no revocations: no certificate was revoked, every CRL number is unused.
    2: REVOCATION_SCHEMA,
    # Version 3 kept no request ids: its certificates answer no repeated request.
    3: _ISSUANCE_REQUEST,
}
# PostgreSQL stores began at version 3.
POSTGRES_MIGRATIONS = {3: tuple(postgres_ddl(statement) for statement in _ISSUANCE_REQUEST)}

_CERT_COLUMNS = (
    "serial, ca_name, device_id, subject, not_before, not_after, status, request_id, "
    "fingerprint, issued_at, certificate_der, client_name"
)
_INSERT_CERT = (
    f"INSERT INTO issued_certificate ({_CERT_COLUMNS}) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
# A live certificate of this device at this CA that another (known) client obtained.
_HELD_BY_OTHER = (
    "SELECT 1 FROM issued_certificate WHERE ca_name = ? AND device_id = ? "
    "AND status = 'active' AND client_name IS NOT NULL AND client_name <> ?"
)
_SUPERSEDE = (
    "UPDATE issued_certificate SET status = 'superseded' "
    "WHERE ca_name = ? AND device_id = ? AND status = 'active' RETURNING serial"
)
_GIVE_BACK_REQUEST = "DELETE FROM issuance_request WHERE client_name = ? AND request_id = ?"
_TAKE_REQUEST = (
    "INSERT INTO issuance_request (client_name, request_id, digest, ca_name, serial, "
    "answered_at, private_key) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (client_name, request_id) DO NOTHING"
)
# Column names from the fixed list above, never from a caller.
_ANSWERED = (
    "SELECT r.digest, r.private_key, "  # noqa: S608
    + ", ".join(f"c.{column.strip()}" for column in _CERT_COLUMNS.split(","))
    + " FROM issuance_request r JOIN issued_certificate c "
    "ON c.ca_name = r.ca_name AND c.serial = r.serial "
    "WHERE r.client_name = ? AND r.request_id = ?"
)
_ACTIVE_SERIALS = (
    "SELECT serial FROM issued_certificate "
    "WHERE ca_name = ? AND device_id = ? AND status = 'active' ORDER BY serial"
)


class SQLiteIssuanceStore(SQLiteClientRegistry, SQLiteRevocations):
    """IssuanceStore over one database (a SQLite file or PostgreSQL)."""

    def __init__(self, db: Database, *, migrate: bool = True) -> None:
        self._db = db
        try:
            db.ensure_schema(
                SCHEMA_COMPONENT,
                SCHEMA_VERSION,
                SCHEMA,
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

    def __enter__(self) -> SQLiteIssuanceStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ issuance record

    def record_issuance(self, cert: IssuedCertificate, *, supersede: bool) -> list[str]:
        _require_active(cert)
        with self._db.write() as conn:
            return _record(conn, cert, supersede=supersede)

    def record_issuances(
        self, certs: Sequence[tuple[IssuedCertificate, bool]]
    ) -> list[list[str] | ZtpkiError]:
        for cert, _ in certs:
            _require_active(cert)
        with self._db.write() as conn:
            return _record_each(conn, certs)

    def stage_issuances(
        self, certs: Sequence[tuple[IssuedCertificate, bool]], *, wait: bool = True
    ) -> StagedIssuances:
        """``record_issuances`` up to, not including, its commit (see StagedIssuances).

        The batch runs on a connection of its own, so this thread's reads (and their
        snapshots) never see it before it commits. ``wait=False``: Unavailable at once when
        another writer holds the database.
        """
        for cert, _ in certs:
            _require_active(cert)
        transaction = self._db.detached_write(wait=wait)
        try:
            results = _record_each(transaction.connection, certs)
        except Exception as exc:
            transaction.rollback()
            if isinstance(exc, transaction.connection.Error):
                raise self._db.storage_error(exc) from exc
            raise
        except BaseException:
            transaction.rollback()
            raise
        return StagedIssuances(transaction, results)

    def issued(
        self,
        *,
        ca_name: str | None = None,
        device_id: str | None = None,
        status: CertificateStatus | None = None,
    ) -> list[IssuedCertificate]:
        filters = {"ca_name": ca_name, "device_id": device_id, "status": status}
        given = {column: value for column, value in filters.items() if value is not None}
        # Column names come from the fixed dict above, never from the caller.
        where = " AND ".join(f"{column} = ?" for column in given) or "1 = 1"
        query = (
            f"SELECT {_CERT_COLUMNS} FROM issued_certificate "  # noqa: S608
            f"WHERE {where} ORDER BY issued_at, serial"
        )
        with self._db.read() as conn:
            rows = conn.execute(query, tuple(str(v) for v in given.values())).fetchall()
        return [_certificate(row) for row in rows]

    def active_certificate(self, ca_name: str, device_id: str) -> IssuedCertificate | None:
        return self._one("device_id = ? AND status = 'active'", ca_name, device_id)

    def set_status(self, ca_name: str, serial: str, status: CertificateStatus) -> bool:
        status = CertificateStatus(status)
        if status is CertificateStatus.ACTIVE:
            raise ValueError("a certificate can only leave ACTIVE, never return to it")
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE issued_certificate SET status = ? "
                "WHERE ca_name = ? AND serial = ? AND status = 'active'",
                (status.value, ca_name, serial),
            )
            return cursor.rowcount == 1

    def certificate(self, ca_name: str, serial: str) -> IssuedCertificate | None:
        return self._one("serial = ?", ca_name, serial)

    def _one(self, where: str, ca_name: str, key: str) -> IssuedCertificate | None:
        # ``where`` is one of the two literals above, never a caller's text.
        with self._db.read(single=True) as conn:
            row = conn.execute(
                f"SELECT {_CERT_COLUMNS} FROM issued_certificate "  # noqa: S608
                f"WHERE ca_name = ? AND {where}",
                (ca_name, key),
            ).fetchone()
        return None if row is None else _certificate(row)

    def answered_request(self, client: str, request_id: str) -> AnsweredRequest | None:
        with self._db.read() as conn:
            row = conn.execute(_ANSWERED, (client, request_id)).fetchone()
        if row is None:
            return None
        key = None if row[1] is None else bytes(row[1])
        return AnsweredRequest(_certificate(row[2:]), row[0], key)

    def forget_answer_keys(self, *, answered_before: datetime) -> int:
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE issuance_request SET private_key = NULL "
                "WHERE private_key IS NOT NULL AND answered_at < ?",
                (encode_instant(answered_before),),
            )
            return cursor.rowcount

    def count(self) -> int:
        with self._db.read(single=True) as conn:
            row = conn.execute("SELECT COUNT(*) FROM issued_certificate").fetchone()
        return int(row[0])


class StagedIssuances:
    """A batch of issuances written inside an open transaction, not yet committed.

    ``commit`` may run on another thread (the CA system's recorder waits for the fsync
    there while its event loop goes on); until it returns, no answer may leave.
    """

    def __init__(self, transaction: DetachedWrite, results: list[list[str] | ZtpkiError]) -> None:
        self.results = results
        self._transaction = transaction

    def commit(self) -> None:
        self._transaction.commit()


def _record_each(
    conn: SQLConnection, certs: Sequence[tuple[IssuedCertificate, bool]]
) -> list[list[str] | ZtpkiError]:
    results: list[list[str] | ZtpkiError] = []
    for cert, supersede in certs:
        try:
            results.append(_record(conn, cert, supersede=supersede))
        except ZtpkiError as exc:
            results.append(exc)
    return results


def _require_active(cert: IssuedCertificate) -> None:
    if cert.status is not CertificateStatus.ACTIVE:
        raise ValueError(f"certificate {cert.serial} must be recorded as ACTIVE")


def _record(conn: SQLConnection, cert: IssuedCertificate, *, supersede: bool) -> list[str]:
    """One issuance inside the caller's transaction; on error nothing of it is left.

    Without a request to record, the common case is one INSERT, atomic on its own; the
    schema's unique indexes refuse a second live certificate or a repeated serial, and only
    then is the cause looked up. The request is taken first: RequestAnswered when its id
    was, and then nothing is written (no second live certificate, no supersession).
    """
    requested = cert.request_digest is not None and cert.client is not None
    if not supersede:
        # Two statements, no savepoint (which costs as much as both): the request taken,
        # then the certificate; a refused certificate gives its request back.
        if requested:
            _take_request(conn, cert)
        try:
            _insert(conn, cert)
        except ZtpkiError:
            if requested:
                conn.execute(_GIVE_BACK_REQUEST, (cert.client, cert.request_id))
            raise
        return []
    with savepoint(conn, "issuance"):
        if requested:
            _take_request(conn, cert)
        if (
            cert.client is not None
            and conn.execute(_HELD_BY_OTHER, (cert.ca_name, cert.device_id, cert.client)).fetchone()
        ):
            raise SupersedeRefused(
                client=cert.client, ca_name=cert.ca_name, device_id=cert.device_id
            )
        live = conn.execute(_SUPERSEDE, (cert.ca_name, cert.device_id)).fetchall()
        _insert(conn, cert)
    return sorted(row[0] for row in live)


def _take_request(conn: SQLConnection, cert: IssuedCertificate) -> None:
    assert cert.client is not None
    taken = conn.execute(
        _TAKE_REQUEST,
        (
            cert.client,
            cert.request_id,
            cert.request_digest,
            cert.ca_name,
            cert.serial,
            encode_instant(cert.issued_at),
            cert.answer_key_der,
        ),
    )
    if taken.rowcount != 1:
        raise RequestAnswered(client=cert.client, request_id=cert.request_id)


def _insert(conn: SQLConnection, cert: IssuedCertificate) -> None:
    """One INSERT; when a unique key refuses it (nothing written, the transaction still
    usable on both engines), the cause is looked up and raised as its own error."""
    if conn.execute(_INSERT_CERT, _certificate_row(cert)).rowcount != 1:
        live = conn.execute(_ACTIVE_SERIALS, (cert.ca_name, cert.device_id)).fetchone()
        if (
            cert.client is not None
            and live is not None
            and conn.execute(_HELD_BY_OTHER, (cert.ca_name, cert.device_id, cert.client)).fetchone()
        ):
            raise SupersedeRefused(
                client=cert.client, ca_name=cert.ca_name, device_id=cert.device_id
            )
        if live is not None:
            raise AlreadyIssued(ca_name=cert.ca_name, device_id=cert.device_id, serial=live[0])
        if conn.execute(
            "SELECT 1 FROM issued_certificate WHERE ca_name = ? AND serial = ?",
            (cert.ca_name, cert.serial),
        ).fetchone():
            raise DuplicateSerial(
                f"CA {cert.ca_name} already recorded serial {cert.serial}; serials must be unique"
            )
        raise AssertionError("a unique key refused an issuance, but no row clashes with it")


def _certificate_row(cert: IssuedCertificate) -> tuple[Any, ...]:
    return (
        cert.serial,
        cert.ca_name,
        cert.device_id,
        cert.subject,
        encode_instant(cert.not_before),
        encode_instant(cert.not_after),
        cert.status.value,
        cert.request_id,
        cert.fingerprint,
        encode_instant(cert.issued_at),
        cert.certificate_der,
        cert.client,
    )


def _certificate(row: Sequence[Any]) -> IssuedCertificate:
    return IssuedCertificate(
        serial=row[0],
        ca_name=row[1],
        device_id=row[2],
        subject=row[3],
        not_before=decode_instant(row[4]),
        not_after=decode_instant(row[5]),
        status=CertificateStatus(row[6]),
        request_id=row[7],
        fingerprint=row[8],
        issued_at=decode_instant(row[9]),
        certificate_der=bytes(row[10]),
        client=row[11],
    )
