"""A psycopg connection speaking the stores' SQL dialect, and counting what it sends.

Each round trip to the server costs both sides CPU, so the connection carries our own
parameterless SQL that is due (a group's BEGIN and the write lock) until the next statement
goes out, and sends both at once; the transaction's first round trip also reads what the
stores asked to know under the write lock (``lock_reads``: the audit trail's head), so that
they need not read it again. Inside a group it notes whether the current unit wrote anything:
a unit that raises after writing cannot be undone alone (units take no savepoint: that would
be a round trip each), so the group is given up (see ``PostgresDatabase._unit``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import psycopg
import psycopg.errors
from psycopg import pq

from ztpki.store.counters import DatabaseCounters

# 'ztpk' as an integer: the one advisory lock every write transaction of a ztpki database takes.
WRITE_LOCK = 0x7A74706B
LOCKING_BEGIN = f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
_IDLE = pq.TransactionStatus.IDLE


@lru_cache(maxsize=2048)
def to_pyformat(sql: str) -> str:
    """The stores' ``?`` placeholders as psycopg's ``%s``, literal ``%`` escaped; a ``?`` inside
    a quoted literal or identifier is left alone."""
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if quote is not None:
            quote = None if char == quote else quote
            out.append("%%" if char == "%" else char)
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        else:
            out.append("%%" if char == "%" else char)
    return "".join(out)


@lru_cache(maxsize=2048)
def _reads_only(sql: str) -> bool:
    """Whether a statement of the stores only reads (a SELECT; a WITH may hold an UPDATE)."""
    return sql.lstrip()[:6].upper() == "SELECT"


class PostgresConnection:
    """A psycopg connection speaking the stores' dialect (see ztpki.store.sql.SQLConnection)."""

    Error = psycopg.Error
    IntegrityError = psycopg.errors.IntegrityError

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        counters: DatabaseCounters,
        memo: dict[str, Any],
        lock_reads: Mapping[str, str],
    ) -> None:
        self.raw = conn
        self.counters = counters
        self.memo = memo  # what the stores remember per database (see sqlite_audit)
        self.lock_reads = lock_reads  # memo key -> a one-row query run as the lock is taken
        # Our own parameterless SQL due before the next statement (a group's BEGIN): sent in
        # the same round trip as our next own statement.
        self.prefix = ""
        # A one-statement read: how many statements it may still run (None: any number).
        self.statements_left: int | None = None
        # Inside a group's unit: whether a statement of the unit may have changed a row.
        self.unit_wrote = False
        # Why the group on this connection was given up (see PostgresDatabase._unit).
        self.group_aborted = ""

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != _IDLE

    @property
    def failed(self) -> bool:
        """The transaction met an error: PostgreSQL refuses the rest of it."""
        return self.raw.info.transaction_status == pq.TransactionStatus.INERROR

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[Any]:
        self._statement()
        self.counters.round_trip()
        cursor = self.raw.execute(to_pyformat(sql), tuple(parameters))
        if not _reads_only(sql) and cursor.rowcount != 0:
            self.unit_wrote = True
        return cursor

    def executemany(self, sql: str, parameters: Any, /) -> psycopg.Cursor[Any]:
        self._statement()
        self.counters.round_trip()  # psycopg pipelines the rows: one exchange with the server
        self.unit_wrote = True
        cursor = self.raw.cursor()
        cursor.executemany(to_pyformat(sql), [tuple(row) for row in parameters])
        return cursor

    def run(self, sql: str) -> psycopg.Cursor[Any]:
        """Our own SQL, without parameters (several statements may share the round trip),
        after the prefix due."""
        sql, self.prefix = self.prefix + sql, ""
        self.counters.round_trip()
        cursor = self.raw.execute(sql)
        if self.lock_reads and sql.startswith(LOCKING_BEGIN):
            cursor.nextset()  # BEGIN's result, then the lock's; the reads follow in order
            for key in self.lock_reads:
                cursor.nextset()
                self.memo[key] = cursor.fetchone()
        return cursor

    def _statement(self) -> None:
        if self.statements_left is not None:
            if self.statements_left < 1:
                # Outside a transaction a second statement would see another snapshot.
                raise RuntimeError("a one-statement read ran a second statement")
            self.statements_left -= 1
        if self.prefix:
            self.run("")


def first(row: Any) -> Any:
    return None if row is None else row[0]


def rollback(conn: PostgresConnection) -> bool:
    """Roll back whatever is open; False when the connection cannot even do that."""
    conn.prefix = ""
    if conn.raw.closed:
        return False
    try:
        if conn.in_transaction:
            conn.run("ROLLBACK")
    except psycopg.Error:
        return False
    return True
