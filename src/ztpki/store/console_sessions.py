"""The web console's sessions in the node's register (SQLite or PostgreSQL), so that they
survive a restart of the node and any console process sharing the register finds them.

A row holds only what cannot open a session by itself: the SHA-256 of the session token (the
token is in the operator's cookie alone), the operator and the role, a random salt from which
the session's CSRF token is derived with the session token (so the register cannot forge a
form either), how the operator logged in, the absolute expiry, and the idle timeout with the
instant the session idles out. Logging out, expiring, idling out, and removing or replacing
the operator delete rows; a lookup also checks that the operator is still there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.sql import Database
from ztpki.store.sqlite_console import Role

SESSION_TABLE = """
    CREATE TABLE console_session (
        token_hash   TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
        operator     TEXT NOT NULL REFERENCES console_operator (name) ON DELETE CASCADE,
        role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator')),
        csrf_salt    TEXT NOT NULL CHECK (csrf_salt <> ''),
        how          TEXT NOT NULL CHECK (how IN ('password', 'certificate')),
        created_at   TEXT NOT NULL,
        expires_at   TEXT NOT NULL,
        idle_seconds INTEGER NOT NULL CHECK (idle_seconds > 0),
        idle_until   TEXT NOT NULL
    )"""
SESSION_INDEXES = (
    "CREATE INDEX console_session_by_operator ON console_session (operator)",
    "CREATE INDEX console_session_by_expiry ON console_session (expires_at)",
    "CREATE INDEX console_session_by_idle ON console_session (idle_until)",
)
SESSION_SCHEMA = (SESSION_TABLE, *SESSION_INDEXES)

# One operator keeps at most this many sessions (each login makes one); the oldest go first.
MAX_SESSIONS_PER_OPERATOR = 64


@dataclass(frozen=True)
class SessionRecord:
    """A session as the register keeps it (no token: only its hash is stored)."""

    operator: str
    role: Role
    csrf_salt: str
    how: str
    expires_at: datetime
    idle_until: datetime
    idle_seconds: int


class ConsoleSessionQueries:
    """The console's sessions, a mixin of SQLiteNodeStore over its database."""

    _db: Database

    def open_console_session(
        self,
        token_hash: str,
        *,
        operator: str,
        role: Role,
        csrf_salt: str,
        how: str,
        now: datetime,
        lifetime: timedelta,
        idle: timedelta,
    ) -> None:
        """Record a new session; the expired and idle ones of every operator go first, and
        the oldest of this operator's beyond MAX_SESSIONS_PER_OPERATOR."""
        at = encode_instant(now, name="now")
        with self._db.write() as conn:
            conn.execute(
                "DELETE FROM console_session WHERE expires_at <= ? OR idle_until <= ?", (at, at)
            )
            conn.execute(
                "DELETE FROM console_session WHERE operator = ? AND token_hash NOT IN (SELECT "
                "token_hash FROM console_session WHERE operator = ? ORDER BY created_at DESC, "
                "token_hash LIMIT ?)",
                (operator, operator, MAX_SESSIONS_PER_OPERATOR - 1),
            )
            conn.execute(
                "INSERT INTO console_session (token_hash, operator, role, csrf_salt, how, "
                "created_at, expires_at, idle_seconds, idle_until) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token_hash,
                    operator,
                    role.value,
                    csrf_salt,
                    how,
                    at,
                    encode_instant(now + lifetime, name="expiry"),
                    max(1, int(idle.total_seconds())),
                    encode_instant(min(now + idle, now + lifetime), name="idle"),
                ),
            )

    def console_session(
        self, token_hash: str, *, now: datetime, touch_after: timedelta = timedelta(0)
    ) -> SessionRecord | None:
        """The live session of ``token_hash`` (its operator still there), its idle timeout
        pushed on when it was last pushed more than ``touch_after`` ago; an expired or idle
        one is deleted, and None."""
        at = encode_instant(now, name="now")
        # Read first: most lookups change nothing, and a write would queue behind the
        # devices' issuance on the same register.
        with self._db.read(single=True) as conn:
            row = conn.execute(
                "SELECT s.operator, s.role, s.csrf_salt, s.how, s.expires_at, s.idle_until, "
                "s.idle_seconds, o.name FROM console_session s LEFT JOIN console_operator o "
                "ON o.name = s.operator WHERE s.token_hash = ?",
                (token_hash,),
            ).fetchone()
        if row is None:
            return None
        if row[4] <= at or row[5] <= at or row[7] is None:
            self.close_console_session(token_hash)
            return None
        expires, idle_until, idle = decode_instant(row[4]), decode_instant(row[5]), int(row[6])
        # The last push was at idle_until - idle: write only when that is old enough, so a
        # page's requests do not each cost a write. The push is conditional: a session that
        # idled out or was deleted meanwhile stays ended.
        if now - (idle_until - timedelta(seconds=idle)) > touch_after:
            pushed = min(now + timedelta(seconds=idle), expires)
            with self._db.write() as conn:
                kept = conn.execute(
                    "UPDATE console_session SET idle_until = ? WHERE token_hash = ? "
                    "AND idle_until > ? AND expires_at > ?",
                    (encode_instant(pushed, name="idle"), token_hash, at, at),
                ).rowcount
            if not kept:
                return None
            idle_until = pushed
        return SessionRecord(row[0], Role(row[1]), row[2], row[3], expires, idle_until, idle)

    def close_console_session(self, token_hash: str) -> bool:
        """Forget a session (logging out); whether there was one."""
        with self._db.write() as conn:
            gone = conn.execute(
                "DELETE FROM console_session WHERE token_hash = ?", (token_hash,)
            ).rowcount
        return bool(gone)

    def close_operator_sessions(self, operator: str) -> int:
        """End every session of ``operator``; how many there were."""
        with self._db.write() as conn:
            return int(
                conn.execute("DELETE FROM console_session WHERE operator = ?", (operator,)).rowcount
            )

    def count_console_sessions(self, *, operator: str | None = None) -> int:
        with self._db.read(single=True) as conn:
            if operator is None:
                row = conn.execute("SELECT COUNT(*) FROM console_session").fetchone()
            else:
                row = conn.execute(
                    "SELECT COUNT(*) FROM console_session WHERE operator = ?", (operator,)
                ).fetchone()
        return int(row[0])
