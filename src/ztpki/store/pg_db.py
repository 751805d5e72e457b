"""One PostgreSQL database shared by threads, processes and machines (psycopg 3 and its pool).

A write transaction first takes one transaction-scoped advisory lock, so write transactions
of every node worker and CA-system instance run one after another, as SQLite runs them: the
stores' read-then-write units and the audit chain (one order for every entry) stay correct
unchanged, and the unique keys and partial unique indexes still refuse whatever slips past.
Reads take no lock: each is one REPEATABLE READ snapshot.

Each round trip to the server costs both sides CPU, so transactions are shaped to need few:
BEGIN and the lock go in one, a read of one statement needs neither BEGIN nor COMMIT (the
statement is its own snapshot), the write lock's round trip also reads the audit trail's
head (``remember_at_lock``), and a group's units take no savepoints (see ``_unit``).
``counters`` counts round trips and commits for /metrics.

A lost connection or a restarting server raises ``Unavailable``, which the services answer
with 503 and Retry-After; the broken connection is dropped from the pool, and the next
transaction opens a fresh one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ztpki.errors import StorageError, Unavailable, ZtpkiError
from ztpki.store.counters import DatabaseCounters
from ztpki.store.database_url import redact_url, without_password
from ztpki.store.pg_connection import (
    LOCKING_BEGIN,
    WRITE_LOCK,
    PostgresConnection,
    first,
    rollback,
)
from ztpki.store.pg_schema import postgres_ddl
from ztpki.store.sql import GroupAborted, needs_migration, stored_or_created

logger = logging.getLogger(__name__)

_SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    component TEXT COLLATE "C" PRIMARY KEY,
    version   BIGINT NOT NULL CHECK (version >= 1)
)"""
# Connection failures, a server shutting down, serialization failures and deadlocks: retry.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "55P03"})
_READ_ONLY = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
# Pools a forked child inherited: never closed there (closing would end the parent's sessions).
_INHERITED: list[ConnectionPool[Any]] = []


class _Detached:
    def __init__(self, db: PostgresDatabase, conn: PostgresConnection) -> None:
        self._db = db
        self.connection = conn

    def commit(self) -> None:
        try:
            self.connection.run("COMMIT")
        except psycopg.Error as exc:
            self._db.release(self.connection, broken=True)
            raise self._db.storage_error(exc) from exc
        self._db.counters.commit("write")
        self._db.release(self.connection)

    def rollback(self) -> None:
        self._db.release(self.connection, broken=not rollback(self.connection))


class PostgresDatabase:
    """Connections, transactions and schema versions for one PostgreSQL database."""

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        durable: bool = True,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.name = redact_url(url)
        self.durable = durable
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._pid = os.getpid()
        self._closed = False
        self.counters = DatabaseCounters(self.dialect)
        self.memo: dict[str, Any] = {}
        self.lock_reads: dict[str, str] = {}

    # ------------------------------------------------------------------ connections

    def pool(self) -> ConnectionPool[Any]:
        if self._closed:
            raise StorageError(f"the database {self.name} was closed")
        with self._lock:
            if self._pid != os.getpid():
                if self._pool is not None:
                    _INHERITED.append(self._pool)
                self._pool, self._pid = None, os.getpid()
                self._local = threading.local()
                self.counters.reset()
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self._pool_size,
                    kwargs={"autocommit": True, "connect_timeout": int(self._connect_timeout)},
                    timeout=self._connect_timeout,
                    name="ztpki",
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool

    def acquire(self, *, wait: bool = True) -> PostgresConnection:
        try:
            raw = self.pool().getconn(timeout=None if wait else 0.05)
        except PoolTimeout as exc:
            raise Unavailable(
                f"no connection to the database {self.name} is free or can be opened"
                f"{self._why_not_connecting() if wait else ''}; retry shortly",
                retry_after=1,
            ) from exc
        return PostgresConnection(raw, self.counters, self.memo, self.lock_reads)

    def remember_at_lock(self, key: str, query: str) -> None:
        """Run ``query`` (one row, no parameters) in the round trip that takes the write lock
        and keep its row in ``memo[key]``: what it reads cannot change until the commit."""
        self.lock_reads[key] = query

    def _why_not_connecting(self) -> str:
        """What the server says to a new connection (wrong password, no such database...),
        for the message of a pool that could not open one; the password never in it."""
        try:
            psycopg.connect(self.url, connect_timeout=int(self._connect_timeout)).close()
        except psycopg.Error as exc:
            said = str(exc).strip().splitlines()
            return f" ({without_password(said[-1] if said else type(exc).__name__, self.url)})"
        return ""

    def release(self, conn: PostgresConnection, *, broken: bool = False) -> None:
        if broken or conn.raw.closed or conn.in_transaction:
            conn.raw.close()  # the pool drops a closed connection and opens a new one
        pool = self._pool
        if pool is not None and not pool.closed:
            pool.putconn(conn.raw)
        else:
            conn.raw.close()

    def storage_error(self, exc: Exception) -> ZtpkiError:
        """Unavailable for what a retry may cure (lost connection, restart, serialization);
        StorageError for anything else. The message names the database without a password."""
        state = getattr(exc, "sqlstate", None)
        if isinstance(exc, psycopg.OperationalError) or state in _RETRYABLE_SQLSTATES:
            return Unavailable(
                f"the database {self.name} is unavailable ({type(exc).__name__}); retry shortly",
                retry_after=1,
            )
        detail = without_password(
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.url
        )
        return StorageError(f"the database {self.name} failed an operation: {detail}")

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def write(self, *, sync: bool = True) -> Iterator[PostgresConnection]:
        grouped: PostgresConnection | None = getattr(self._local, "grouped", None)
        if grouped is not None:
            with self._unit(grouped):
                yield grouped
            return
        with self._transaction(write=True, sync=sync) as conn:
            yield conn

    @contextmanager
    def read(self, *, wait: bool = True, single: bool = False) -> Iterator[PostgresConnection]:
        """A read transaction (one snapshot). ``single``: the body runs one statement, which
        then runs on its own, as its own snapshot: no BEGIN and COMMIT round trips."""
        grouped: PostgresConnection | None = getattr(self._local, "grouped", None)
        if grouped is not None:
            with self._unit(grouped):
                yield grouped
            return
        if not single:
            with self._transaction(write=False, wait=wait) as conn:
                yield conn
            return
        conn = self.acquire(wait=wait)
        conn.statements_left = 1
        with self._undone_on_failure(conn):
            yield conn
        self.counters.commit("read")
        self.release(conn)

    @contextmanager
    def group(self) -> Iterator[None]:
        """One write transaction around several units of this thread, each a savepoint: a unit
        that raises is undone alone, and one COMMIT makes the others durable together."""
        if getattr(self._local, "grouped", None) is not None:
            raise RuntimeError("a group of units does not nest")
        with self._transaction(write=True, sync=True, lazy=True) as conn:
            self._local.grouped = conn
            try:
                yield
            finally:
                self._local.grouped = None
            if conn.group_aborted:  # a unit gave the group up, and its caller went on
                raise GroupAborted(conn.group_aborted)

    def detached_write(self, *, wait: bool = True) -> _Detached:
        conn = self.acquire(wait=wait)
        try:
            if wait:
                conn.run(self._begin(write=True, sync=True))
            else:
                locked = conn.run(f"BEGIN; SELECT pg_try_advisory_xact_lock({WRITE_LOCK})")
                locked.nextset()  # the lock's answer follows BEGIN's
                if not first(locked.fetchone()):
                    rollback(conn)
                    self.release(conn)
                    raise Unavailable(
                        f"another writer holds the database {self.name}; retry shortly",
                        retry_after=1,
                    )
        except psycopg.Error as exc:
            self.release(conn, broken=True)
            raise self.storage_error(exc) from exc
        return _Detached(self, conn)

    @contextmanager
    def session(self) -> Iterator[PostgresSession]:
        conn = self.acquire()
        try:
            yield PostgresSession(self, conn)
        finally:
            try:
                if not conn.raw.closed:
                    conn.run("DISCARD TEMP")  # a pooled connection is handed back clean
            except psycopg.Error:
                conn.raw.close()
            self.release(conn)

    def _begin(self, *, write: bool, sync: bool) -> str:
        if not write:
            return _READ_ONLY
        statements = [LOCKING_BEGIN, *self.lock_reads.values()]
        if not (sync and self.durable):
            statements.append("SET LOCAL synchronous_commit = off")
        return "; ".join(statements)

    @contextmanager
    def _transaction(
        self, *, write: bool, sync: bool = True, wait: bool = True, lazy: bool = False
    ) -> Iterator[PostgresConnection]:
        conn = self.acquire(wait=wait)
        with self.transaction_on(conn, self._begin(write=write, sync=sync), lazy=lazy):
            yield conn
        self.release(conn)

    @contextmanager
    def transaction_on(
        self, conn: PostgresConnection, begin: str, *, lazy: bool = False, keep: bool = False
    ) -> Iterator[None]:
        """A transaction on ``conn`` opened by ``begin``; ``lazy``: BEGIN goes out with the
        first statement of ours (a group's first SAVEPOINT), and a group that ran nothing
        sends nothing. On failure, see ``_undone_on_failure``."""
        with self._undone_on_failure(conn, keep=keep):
            if lazy:
                conn.prefix = begin + "; "
            else:
                conn.run(begin)
            yield
            begun = not conn.prefix.startswith("BEGIN")
            conn.prefix = ""
            if begun:
                conn.run("COMMIT")
        if begun:
            self.counters.commit("read" if begin.startswith(_READ_ONLY) else "write")

    @contextmanager
    def _undone_on_failure(self, conn: PostgresConnection, *, keep: bool = False) -> Iterator[None]:
        """When the body raises: roll back, give ``conn`` back (closed if it cannot even roll
        back; ``keep``: its session keeps it, closed then), and raise a driver error as ours."""
        try:
            yield
        except psycopg.Error as exc:
            self._undo(conn, keep=keep)
            raise self.storage_error(exc) from exc
        except BaseException:
            self._undo(conn, keep=keep)
            raise

    def _undo(self, conn: PostgresConnection, *, keep: bool) -> None:
        rolled_back = rollback(conn)
        if not keep:
            self.release(conn, broken=not rolled_back)
        elif not rolled_back:
            conn.raw.close()  # the session's end gives it back, and the pool drops it

    @contextmanager
    def _unit(self, conn: PostgresConnection) -> Iterator[None]:
        """One unit of a group, with no savepoint of its own (a SAVEPOINT and its RELEASE are
        a round trip per unit, and the stores' units are mostly one statement). A unit that
        raises before it changed a row leaves nothing to undo, and the group goes on. One that
        raises after changing rows, or whose statement failed (PostgreSQL then refuses the
        rest of the transaction), cannot be undone alone: GroupAborted, the group is rolled
        back, and nothing of it is committed (the register then runs its calls one by one)."""
        if conn.group_aborted:
            raise GroupAborted(conn.group_aborted)
        conn.unit_wrote = False
        try:
            yield
        except BaseException as exc:
            if conn.unit_wrote or conn.failed or isinstance(exc, psycopg.Error):
                conn.group_aborted = (
                    f"the database {self.name} gave up a group: one of its units failed "
                    f"after writing ({type(exc).__name__}); nothing of the group took effect"
                )
                raise GroupAborted(conn.group_aborted) from exc
            raise

    # ------------------------------------------------------------------ schema

    def schema_version(self, component: str) -> int | None:
        with self.read() as conn:
            exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
            if exists is None or not exists[0]:
                return None
            row = conn.execute(
                "SELECT version FROM schema_version WHERE component = ?", (component,)
            ).fetchone()
        return None if row is None else int(row[0])

    def ensure_schema(
        self,
        component: str,
        version: int,
        ddl: Sequence[str],
        *,
        migrations: Mapping[int, Sequence[str]] | None = None,
        postgres_migrations: Mapping[int, Sequence[str]] | None = None,
        migrate: bool = True,
    ) -> None:
        """Create ``component``'s tables when missing (the shared DDL in PostgreSQL's types);
        bring an older version up to date with ``postgres_migrations`` only when ``migrate``
        (SchemaOutdated otherwise, naming the command); refuse a newer one."""
        del migrations  # SQLite's steps: they rebuild tables the SQLite way
        steps = postgres_migrations or {}
        with self.write() as conn:
            conn.raw.execute(_SCHEMA_VERSION_TABLE)
            translated = (postgres_ddl(statement) for statement in ddl)
            found = stored_or_created(conn, component, version, translated)
            if found is None:
                logger.info("created %s schema version %d in %s", component, version, self.name)
                return
            if not needs_migration(self.name, component, found, version, steps, migrate=migrate):
                return
            for step in range(found, version):
                for statement in steps[step]:
                    conn.raw.execute(statement)
            conn.execute(
                "UPDATE schema_version SET version = ? WHERE component = ?", (version, component)
            )
        logger.warning("migrated %s to schema version %d in %s", component, version, self.name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()


class PostgresSession:
    """One pooled connection kept for a sequence of transactions (see ztpki.store.sql.Session)."""

    def __init__(self, db: PostgresDatabase, conn: PostgresConnection) -> None:
        self._db = db
        self._conn = conn

    @contextmanager
    def staging(self) -> Iterator[PostgresConnection]:
        # No advisory lock: TEMP tables are this session's alone.
        with self._db.transaction_on(self._conn, "BEGIN", keep=True):
            yield self._conn

    @contextmanager
    def write(self) -> Iterator[PostgresConnection]:
        with self._db.transaction_on(self._conn, self._db._begin(write=True, sync=True), keep=True):
            yield self._conn

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """COPY in text form: psycopg streams the rows in buffers of its own, one exchange
        with the server for all of them."""
        self._conn.counters.round_trip()
        count = 0
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with self._conn.raw.cursor().copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        return count
