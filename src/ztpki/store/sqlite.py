"""Open the stores: the CA system's issuance record and the customer node's register, in a
SQLite file (the embedded default) or in a PostgreSQL database named by a URL.

A SQLite file is opened (created when missing) in WAL mode. ``durable=True`` (the default)
makes every commit reach the disk before it returns (``synchronous=FULL``, or PostgreSQL's
``synchronous_commit``); ``durable=False`` keeps the database consistent after a crash but
may lose the last commits on power loss.

``migrate=False`` (what services and everyday commands use) refuses a database holding an
older schema with SchemaOutdated, which names the migrate command; only that command, and
tests, pass ``migrate=True``. A missing schema is always created.
"""

from __future__ import annotations

from pathlib import Path

from ztpki.store.database_url import is_postgres_url
from ztpki.store.sql import Database
from ztpki.store.sqlite_ca import SQLiteIssuanceStore
from ztpki.store.sqlite_db import SQLiteDatabase, stored_schema_version
from ztpki.store.sqlite_register import SQLiteNodeStore

# Where a store lives: a SQLite file, or a PostgreSQL URL (which may carry a password).
StoreLocation = Path | str

__all__ = [
    "SQLiteDatabase",
    "SQLiteIssuanceStore",
    "SQLiteNodeStore",
    "StoreLocation",
    "describe_location",
    "open_ca_store",
    "open_database",
    "open_node_store",
    "open_sqlite_ca_store",
    "open_sqlite_node_store",
    "stored_schema",
]


def open_database(
    location: StoreLocation, *, durable: bool = True, busy_timeout: float = 30.0
) -> Database:
    if isinstance(location, str) and is_postgres_url(location):
        from ztpki.store.pg_db import PostgresDatabase  # psycopg loads only when used

        return PostgresDatabase(location, durable=durable)
    return SQLiteDatabase(Path(location), durable=durable, busy_timeout=busy_timeout)


def open_ca_store(
    location: StoreLocation, *, durable: bool = True, migrate: bool = False
) -> SQLiteIssuanceStore:
    return SQLiteIssuanceStore(open_database(location, durable=durable), migrate=migrate)


def open_node_store(
    location: StoreLocation, *, durable: bool = True, migrate: bool = False
) -> SQLiteNodeStore:
    return SQLiteNodeStore(open_database(location, durable=durable), migrate=migrate)


def stored_schema(location: StoreLocation, component: str) -> int | None:
    """The schema version ``component`` has in the store, without creating or changing
    anything; None when there is no such store (or no such component in it) yet."""
    if isinstance(location, str) and is_postgres_url(location):
        db = open_database(location)
        try:
            return db.schema_version(component)
        finally:
            db.close()
    return stored_schema_version(Path(location), component)


def describe_location(location: StoreLocation) -> str:
    """The store as messages and listings name it (a URL without its password)."""
    if isinstance(location, str) and is_postgres_url(location):
        from ztpki.store.database_url import redact_url

        return redact_url(location)
    return str(location)


def open_sqlite_ca_store(
    path: Path, *, durable: bool = True, busy_timeout: float = 30.0, migrate: bool = True
) -> SQLiteIssuanceStore:
    db = SQLiteDatabase(path, durable=durable, busy_timeout=busy_timeout)
    return SQLiteIssuanceStore(db, migrate=migrate)


def open_sqlite_node_store(
    path: Path, *, durable: bool = True, busy_timeout: float = 30.0, migrate: bool = True
) -> SQLiteNodeStore:
    db = SQLiteDatabase(path, durable=durable, busy_timeout=busy_timeout)
    return SQLiteNodeStore(db, migrate=migrate)
