"""One SQLite database file shared safely by threads and processes.

Each thread (and each process, after a fork) gets its own connection; writes run inside
``BEGIN IMMEDIATE`` so a conditional update reads and writes under the one database write
lock, across processes too. WAL lets readers work while one writer writes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ztpki.errors import ConfigurationError, StorageError, Unavailable, ZtpkiError
from ztpki.store.counters import DatabaseCounters
from ztpki.store.sql import GroupAborted, SQLConnection, needs_migration, stored_or_created

logger = logging.getLogger(__name__)

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

_SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    component TEXT PRIMARY KEY,
    version   INTEGER NOT NULL CHECK (version >= 1)
)"""


def storage_error(exc: sqlite3.Error, *, path: Path) -> ZtpkiError:
    """The ztpki error for a driver error: busy means retry later, anything else is storage."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _BUSY_CODES:
        return Unavailable(f"the database {path} is busy; retry shortly", retry_after=1)
    return StorageError(f"the database {path} failed an operation: {exc}")


def stored_schema_version(path: Path, component: str) -> int | None:
    """The schema version of ``component`` in the database at ``path``, read without writing
    (no file, WAL switch or table is created); None when there is no such database yet."""
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            if not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone():
                return None
            row = conn.execute(
                "SELECT version FROM schema_version WHERE component = ?", (component,)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise storage_error(exc, path=path) from exc
    return None if row is None else int(row[0])


class _CountingConnection(sqlite3.Connection):
    """A connection that counts the statements it runs (the database's round trips)."""

    counters: DatabaseCounters
    memo: dict[str, Any]  # what the stores remember per database (see sqlite_audit)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.counters.round_trip()
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        self.counters.round_trip()
        return super().executemany(sql, parameters)


class SQLiteDatabase:
    """Connections, transactions and schema versions for one database file."""

    dialect = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        durable: bool = True,
        busy_timeout: float = 30.0,
        counters: DatabaseCounters | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.durable = durable
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._pid = os.getpid()
        self._staging: SQLiteDatabase | None = None
        self.counters = counters or DatabaseCounters(self.dialect)
        self.memo: dict[str, Any] = {}
        self._create_private_file()
        try:
            self._enable_wal()
        except BaseException:
            self.close()
            raise

    def _enable_wal(self) -> None:
        """Switch the file to WAL (a property of the file, so once, before any transaction).

        Switching a fresh file can fail with SQLITE_BUSY at once, without the busy handler,
        while another process switches it too; so this one step retries on its own.
        """
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.002
        while True:
            try:
                mode = self.connection().execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.Error as exc:
                error = storage_error(exc, path=self.path)
                if not isinstance(error, Unavailable) or time.monotonic() >= deadline:
                    raise error from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        if mode != "wal":
            logger.warning(
                "database %s runs in %s mode, not WAL: readers wait for writers", self.path, mode
            )

    def _create_private_file(self) -> None:
        if not self.path.parent.is_dir():
            raise ConfigurationError(f"the directory for database {self.path} does not exist")
        # SQLite gives the -wal and -shm files the main file's mode, so 0600 covers all three.
        # Only create: closing any descriptor of a file drops every POSIX lock this process
        # holds on it, including the locks of SQLite connections already open on it.
        if self.path.exists():
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another process created it between our check and open
        except OSError as exc:
            raise ConfigurationError(f"cannot open database {self.path}: {exc.strerror}") from exc
        os.close(fd)

    def connection(self, *, wait: bool = True) -> sqlite3.Connection:
        """This thread's connection, opened on first use (again in a forked child).

        ``wait=False``: this thread's second connection, which never waits for a busy
        database (busy timeout 0), for reads on a thread that must not block.
        """
        if self._closed:
            raise StorageError(f"the database {self.path} was closed")
        pid = os.getpid()
        slot = "owned" if wait else "owned_nowait"
        owned: tuple[int, sqlite3.Connection] | None = getattr(self._local, slot, None)
        if owned is not None and owned[0] == pid:
            return owned[1]
        if pid != self._pid:
            # A forked child must neither use nor close the parent's connections.
            self._pid, self._lock, self._connections = pid, threading.Lock(), []
            self.counters.reset()
        conn = self._connect(busy_timeout=self._busy_timeout if wait else 0.0)
        setattr(self._local, slot, (pid, conn))
        with self._lock:
            self._connections.append(conn)
        return conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        """Close conn and let this thread open a fresh connection on its next use."""
        for slot in ("owned", "owned_nowait"):
            owned = getattr(self._local, slot, None)
            if owned is not None and owned[1] is conn:
                delattr(self._local, slot)
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    def _connect(self, *, busy_timeout: float) -> sqlite3.Connection:
        try:
            # isolation_level=None: the driver never opens transactions on its own; we do.
            conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,  # only close() touches it from another thread
                factory=_CountingConnection,
            )
            conn.counters = self.counters
            conn.memo = self.memo
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        except sqlite3.Error as exc:
            raise storage_error(exc, path=self.path) from exc
        return conn

    @contextmanager
    def write(self, *, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database write lock from its first statement.

        ``sync=False``: this commit does not wait for fsync even in a durable database
        (``synchronous=NORMAL`` for it: consistent after any crash, but a power loss may take
        it back); the next synced commit makes it durable along with its own changes.
        """
        if sync or not self.durable or getattr(self._local, "grouped", False):
            with self._transaction("BEGIN IMMEDIATE") as conn:
                yield conn
            return
        conn = self.connection()
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise storage_error(exc, path=self.path) from exc
        try:
            with self._transaction("BEGIN IMMEDIATE") as conn:
                yield conn
        finally:
            try:
                conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.Error:
                # Left at NORMAL the connection would stop syncing: never use it again.
                logger.exception("could not restore synchronous=FULL on %s", self.path)
                self._forget(conn)

    @contextmanager
    def read(self, *, wait: bool = True, single: bool = False) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees one snapshot. ``single`` (the body runs
        one statement) changes nothing here: BEGIN and COMMIT cost no round trip in-process.

        ``wait=False`` is for a thread that must not block (an event loop): when the database
        is busy (rare in WAL mode: recovery, a checkpoint resetting the log) it raises
        Unavailable at once instead of waiting up to the busy timeout.
        """
        del single
        with self._transaction("BEGIN", wait=wait) as conn:
            yield conn

    def remember_at_lock(self, key: str, query: str) -> None:
        """Nothing to save: SQLite's lock is taken in process, with no round trip to share."""
        del key, query

    @contextmanager
    def group(self) -> Iterator[None]:
        """One write transaction around several units of work of this thread (group commit).

        Inside it, ``write()`` and ``read()`` run as savepoints of the group's transaction: a
        unit that raises is undone alone, and the group's one COMMIT makes every other unit
        durable at once, with one fsync for all of them. A unit whose failure ended the whole
        transaction (SQLite rolls back by itself on some I/O errors) raises GroupAborted, and
        nothing of the group is committed.
        """
        if getattr(self._local, "grouped", False):
            raise RuntimeError("a group of units does not nest")
        with self.write():
            self._local.grouped = True
            try:
                yield
            finally:
                self._local.grouped = False

    @contextmanager
    def _transaction(self, begin: str, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        if getattr(self._local, "grouped", False):
            conn = self.connection()
            with self._unit(conn):
                yield conn
            return
        conn = self.connection(wait=wait)
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            raise storage_error(exc, path=self.path) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(conn)
            raise storage_error(exc, path=self.path) from exc
        except BaseException:
            rollback(conn)
            raise
        self.counters.commit("read" if begin == "BEGIN" else "write")

    @contextmanager
    def _unit(self, conn: sqlite3.Connection) -> Iterator[None]:
        """One unit of a group, as a savepoint of the group's transaction."""
        try:
            if not conn.in_transaction:
                raise GroupAborted(f"the group transaction on {self.path} ended early")
            conn.execute("SAVEPOINT unit")
        except sqlite3.Error as exc:
            raise GroupAborted(f"the database {self.path} failed a group: {exc}") from exc
        try:
            yield
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK TO SAVEPOINT unit")
                conn.execute("RELEASE SAVEPOINT unit")
            except sqlite3.Error:
                raise GroupAborted(f"the database {self.path} failed a group: {exc}") from exc
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, path=self.path) from exc
            raise
        try:
            conn.execute("RELEASE SAVEPOINT unit")
        except sqlite3.Error as exc:
            raise GroupAborted(f"the database {self.path} failed a group: {exc}") from exc

    def storage_error(self, exc: Exception) -> ZtpkiError:
        if isinstance(exc, sqlite3.Error):
            return storage_error(exc, path=self.path)
        return StorageError(f"the database {self.path} failed an operation: {exc}")

    def detached_write(self, *, wait: bool = True) -> DetachedWrite:
        """A write transaction on a connection of its own (this thread's reads never see it
        before it commits); ``wait=False``: Unavailable at once when another writer holds
        the database."""
        if self._staging is None:
            self._staging = SQLiteDatabase(self.path, durable=self.durable, counters=self.counters)
        conn = self._staging.connection(wait=wait)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise storage_error(exc, path=self.path) from exc
        return DetachedWrite(conn, self.path, self.counters)

    @contextmanager
    def session(self) -> Iterator[SQLiteSession]:
        """This thread's connection (each thread has its own already), its TEMP tables
        dropped at the end."""
        if getattr(self._local, "grouped", False):
            raise RuntimeError("a session does not run inside a group")
        conn = self.connection()
        try:
            yield SQLiteSession(self, conn)
        finally:
            try:
                temp = conn.execute("SELECT name FROM temp.sqlite_master WHERE type = 'table'")
                for (name,) in temp.fetchall():
                    conn.execute(f'DROP TABLE temp."{name}"')
            except sqlite3.Error:
                logger.exception("could not drop the TEMP tables of a session on %s", self.path)
                self._forget(conn)

    def schema_version(self, component: str) -> int | None:
        return stored_schema_version(self.path, component)

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
        """Create ``component``'s tables when missing; bring an older version up to date with
        ``migrations`` (version N -> the statements that make it N + 1) only when ``migrate``
        (SchemaOutdated otherwise, naming the command); refuse a newer one."""
        del postgres_migrations  # the other engine's steps
        steps = migrations or {}
        with self.write() as conn:
            conn.execute(_SCHEMA_VERSION_TABLE)
            found = stored_or_created(conn, component, version, ddl)
            if found is None:
                logger.info("created %s schema version %d in %s", component, version, self.path)
                return
            if not needs_migration(self.name, component, found, version, steps, migrate=migrate):
                return
        self._migrate(component, version, steps)

    def _migrate(self, component: str, version: int, steps: Mapping[int, Sequence[str]]) -> None:
        """Run the migrations in one transaction with foreign keys off (tables are rebuilt, as
        SQLite's ALTER TABLE cannot change constraints), checking every key before COMMIT."""
        conn = self.connection()
        conn.execute("PRAGMA foreign_keys = OFF")  # only takes effect outside a transaction
        try:
            with self._transaction("BEGIN IMMEDIATE") as conn:
                (found,) = conn.execute(
                    "SELECT version FROM schema_version WHERE component = ?", (component,)
                ).fetchone()
                for step in range(found, version):  # another process may have migrated
                    for statement in steps[step]:
                        conn.execute(statement)
                broken = conn.execute("PRAGMA foreign_key_check").fetchone()
                if broken is not None:
                    raise StorageError(
                        f"database {self.path}: migrating {component} to schema version "
                        f"{version} would break a reference in table {broken[0]}; nothing changed"
                    )
                conn.execute(
                    "UPDATE schema_version SET version = ? WHERE component = ?",
                    (version, component),
                )
        finally:
            conn.execute("PRAGMA foreign_keys = ON")
        logger.warning("migrated %s to schema version %d in %s", component, version, self.path)

    def close(self) -> None:
        """Close every connection this object opened; later use raises StorageError."""
        if self._staging is not None:
            self._staging.close()
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


class SQLiteSession:
    """See ztpki.store.sql.Session: on SQLite, the thread's own connection."""

    _CHUNK = 5000

    def __init__(self, db: SQLiteDatabase, conn: sqlite3.Connection) -> None:
        self._db = db
        self._conn = conn

    def staging(self) -> AbstractContextManager[sqlite3.Connection]:
        # A deferred transaction that writes only the TEMP database takes no lock on the file.
        return self._db.read()

    def write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.write()

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Chunks of executemany: each chunk one pass through SQLite's C loop."""
        marks = ", ".join("?" for _ in columns)
        statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
        count = 0
        chunk: list[Sequence[Any]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == self._CHUNK:
                count += self._conn.executemany(statement, chunk).rowcount
                chunk = []
        if chunk:
            count += self._conn.executemany(statement, chunk).rowcount
        return count


class DetachedWrite:
    """A write transaction left open; ``commit`` or ``rollback`` may run on another thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, counters: DatabaseCounters) -> None:
        self.connection = conn
        self._path = path
        self._counters = counters

    def commit(self) -> None:
        try:
            self.connection.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(self.connection)
            raise storage_error(exc, path=self._path) from exc
        self._counters.commit("write")

    def rollback(self) -> None:
        rollback(self.connection)


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.exception("rollback failed; the connection is left for SQLite to recover")


@contextmanager
def savepoint(conn: SQLConnection, name: str) -> Iterator[None]:
    """A nested unit inside a transaction: undone alone when its body raises."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
        conn.execute(f"RELEASE SAVEPOINT {name}")
        raise
    conn.execute(f"RELEASE SAVEPOINT {name}")
