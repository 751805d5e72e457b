"""Open the SQLite stores: the CA system's issuance record and the customer node's register.

Each opens (creating when missing) one database file in WAL mode. ``durable=True`` (the default)
makes every commit reach the disk before it returns (``synchronous=FULL``); ``durable=False``
keeps the database consistent after a crash but may lose the last commits on power loss.
"""

from __future__ import annotations

from pathlib import Path

from ztpki.store.sqlite_ca import SQLiteIssuanceStore
from ztpki.store.sqlite_db import SQLiteDatabase
from ztpki.store.sqlite_register import SQLiteNodeStore

__all__ = [
    "SQLiteDatabase",
    "SQLiteIssuanceStore",
    "SQLiteNodeStore",
    "open_sqlite_ca_store",
    "open_sqlite_node_store",
]


def open_sqlite_ca_store(
    path: Path, *, durable: bool = True, busy_timeout: float = 30.0
) -> SQLiteIssuanceStore:
    return SQLiteIssuanceStore(SQLiteDatabase(path, durable=durable, busy_timeout=busy_timeout))


def open_sqlite_node_store(
    path: Path, *, durable: bool = True, busy_timeout: float = 30.0
) -> SQLiteNodeStore:
    return SQLiteNodeStore(SQLiteDatabase(path, durable=durable, busy_timeout=busy_timeout))
