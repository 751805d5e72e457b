"""What the stores need of a SQL database, whichever engine holds it.

The store modules speak one SQL dialect, the part SQLite and PostgreSQL share, with ``?``
placeholders; ``SQLiteDatabase`` and ``PostgresDatabase`` each give them connections and
transactions with the same guarantees: a write transaction holds the database's one write lock
from its first statement (so a read-then-write inside it is never raced), a read transaction
sees one snapshot, and a group commits several units with one flush.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ztpki.errors import ConfigurationError, StorageError
from ztpki.store.counters import DatabaseCounters

# The command that brings each component's schema up to date, named in SchemaOutdated.
MIGRATE_COMMANDS = {"customer_node": "ztpki node migrate", "ca_system": "ztpki ca migrate"}


class SQLCursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SQLConnection(Protocol):
    """A DB-API connection with sqlite3's extras: ``execute`` on the connection and the
    driver's exception classes as attributes (``conn.IntegrityError``)."""

    @property
    def Error(self) -> type[Exception]: ...

    @property
    def IntegrityError(self) -> type[Exception]: ...

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> SQLCursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> SQLCursor: ...


class DetachedWrite(Protocol):
    """A write transaction left open on a connection of its own; ``commit`` or ``rollback``
    may run on another thread, and ends it."""

    @property
    def connection(self) -> SQLConnection: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class Session(Protocol):
    """One connection kept across several transactions, so that its TEMP tables live from one
    to the next (they end with the session): a long staging step runs without the write lock,
    and only a short write transaction after it holds the lock."""

    def staging(self) -> AbstractContextManager[SQLConnection]:
        """A transaction that writes only this session's TEMP tables: it takes no write lock,
        so other writers go on meanwhile."""
        ...

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Inside ``staging()``: append ``rows`` (any number, streamed) to the TEMP ``table``
        in bulk (PostgreSQL's COPY); how many. An exception from ``rows`` ends it."""
        ...

    def write(self) -> AbstractContextManager[SQLConnection]:
        """A write transaction on this session's connection (the write lock, as
        ``Database.write``)."""
        ...


class Database(Protocol):
    """Connections and transactions for one database (a SQLite file, a PostgreSQL database)."""

    @property
    def name(self) -> str:
        """The database as messages name it: a path, or a URL without its password."""
        ...

    @property
    def durable(self) -> bool: ...

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        ...

    @property
    def counters(self) -> DatabaseCounters:
        """Round trips and commits so far, for /metrics."""
        ...

    def write(self, *, sync: bool = True) -> AbstractContextManager[SQLConnection]: ...

    def read(
        self, *, wait: bool = True, single: bool = False
    ) -> AbstractContextManager[SQLConnection]:
        """A read transaction; ``single``: its body runs exactly one statement, which a
        database server may then run without BEGIN and COMMIT (a statement is a snapshot)."""
        ...

    def group(self) -> AbstractContextManager[None]: ...

    def remember_at_lock(self, key: str, query: str) -> None:
        """Keep the row of ``query`` (one row, no parameters) in the connections' ``memo[key]``
        each time a write transaction takes the write lock, when that costs nothing extra."""
        ...

    def detached_write(self, *, wait: bool = True) -> DetachedWrite: ...

    def session(self) -> AbstractContextManager[Session]:
        """One connection for a sequence of transactions; its TEMP tables are dropped when
        it ends."""
        ...

    def storage_error(self, exc: Exception) -> Exception:
        """The ztpki error for a driver error: Unavailable (retry) or StorageError."""
        ...

    def ensure_schema(
        self,
        component: str,
        version: int,
        ddl: Sequence[str],
        *,
        migrations: Mapping[int, Sequence[str]] | None = None,
        postgres_migrations: Mapping[int, Sequence[str]] | None = None,
        migrate: bool = True,
    ) -> None: ...

    def schema_version(self, component: str) -> int | None: ...

    def close(self) -> None: ...


class GroupAborted(StorageError):
    """A group transaction ended before its commit: none of its units took effect."""


class SchemaOutdated(ConfigurationError):
    """The database holds an older schema than this ztpki uses: run the migrate command."""

    def __init__(self, database: str, component: str, found: int, expected: int) -> None:
        command = MIGRATE_COMMANDS.get(component, "the migrate command")
        super().__init__(
            f"database {database} holds {component} schema version {found}, but this ztpki "
            f"uses version {expected}: stop every service using it, back it up, and run "
            f"`{command} --dir DIR`"
        )
        self.component = component
        self.found = found
        self.expected = expected


class SchemaTooNew(ConfigurationError):
    """The database was written by a newer ztpki than this one."""

    def __init__(self, database: str, component: str, found: int, expected: int) -> None:
        super().__init__(
            f"database {database} holds {component} schema version {found}, but this ztpki "
            f"uses version {expected}: use the ztpki release that wrote it, or a newer one"
        )


def needs_migration(
    database: str,
    component: str,
    found: int,
    version: int,
    steps: Mapping[int, Sequence[str]],
    *,
    migrate: bool,
) -> bool:
    """Whether a store holding ``component`` schema ``found`` must be migrated to ``version``
    (both engines judge alike): SchemaTooNew, SchemaOutdated (unless ``migrate``), or a
    ConfigurationError when ``steps`` lack one."""
    if found == version:
        return False
    if found > version:
        raise SchemaTooNew(database, component, found, version)
    if not migrate:
        raise SchemaOutdated(database, component, found, version)
    if any(step not in steps for step in range(found, version)):
        raise ConfigurationError(
            f"database {database}: no migration from {component} schema version {found} to "
            f"{version}; use the ztpki release that wrote it"
        )
    return True


def stored_or_created(
    conn: SQLConnection, component: str, version: int, ddl: Iterable[str]
) -> int | None:
    """Inside a write transaction: the schema version ``component`` holds, or None after
    creating its tables (``ddl``, already in this engine's types) at ``version``."""
    row = conn.execute(
        "SELECT version FROM schema_version WHERE component = ?", (component,)
    ).fetchone()
    if row is not None:
        return int(row[0])
    for statement in ddl:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO schema_version (component, version) VALUES (?, ?)", (component, version)
    )
    return None
