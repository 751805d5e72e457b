"""The lease of the one process that sends the register's revocation orders.

Several node machines (and each machine's worker 0) may share one register; two senders on
its queue could send an order twice, or a hold after its release. At most one process holds
the lease at a time, until it expires unless the holder renews it as it works; another
process takes it over once it has expired. Each taking draws a new fencing token, and the
queue closes an order only under the current token (``FENCE``), so a sender that lost the
lease, stuck past its expiry and taken over, changes nothing. Instants are the callers' (the
store never reads the clock): the machines sharing a register keep their clocks in step.
"""

from __future__ import annotations

from datetime import datetime

from ztpki.store.instants import decode_instant, encode_instant
from ztpki.store.revocation_records import SenderLease
from ztpki.store.sql import Database

_NAME = "revocations"
_SELECT = "SELECT holder, token, expires_at FROM node_sender_lease WHERE name = ?"

# The condition an order is closed under: its one parameter is the sender's token.
FENCE = "EXISTS (SELECT 1 FROM node_sender_lease WHERE name = 'revocations' AND token = ?)"


class SenderLeases:
    """The lease operations of SQLiteNodeStore (a mixin over its database)."""

    _db: Database

    def take_sender_lease(
        self, holder: str, *, now: datetime, until: datetime, take_over: str | None = None
    ) -> int | None:
        """Hold the sender lease until ``until``; its token, or None while another holds it.

        Taken (a new token) when nobody holds it, its holder let it expire by ``now``, or its
        holder is ``take_over`` (one the caller found dead: a compare-and-swap on the holder);
        renewed (the same token) when ``holder`` holds it still.
        """
        if not holder:
            raise ValueError("holder must not be empty")
        at, end = encode_instant(now, name="now"), encode_instant(until, name="until")
        seen = self.sender_lease()
        if seen is not None and seen.holder not in (holder, take_over) and seen.expires_at > now:
            # Held by another: refused without a write (every look of every other sender).
            return None
        with self._db.write() as conn:  # read again: the lease may have changed meanwhile
            row = conn.execute(_SELECT, (_NAME,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO node_sender_lease (name, holder, token, expires_at) "
                    "VALUES (?, ?, 1, ?)",
                    (_NAME, holder, end),
                )
                return 1
            current, token, expires_at = row[0], int(row[1]), row[2]
            if expires_at > at and current == holder:
                conn.execute(
                    "UPDATE node_sender_lease SET expires_at = ? WHERE name = ?", (end, _NAME)
                )
                return token
            if expires_at > at and current != take_over:
                return None
            conn.execute(
                "UPDATE node_sender_lease SET holder = ?, token = ?, expires_at = ? WHERE name = ?",
                (holder, token + 1, end, _NAME),
            )
            return token + 1

    def release_sender_lease(self, token: int, *, now: datetime) -> bool:
        """Let the lease expire at ``now`` (a sender that stops): another takes it at once."""
        at = encode_instant(now, name="now")
        with self._db.write() as conn:
            return (
                conn.execute(
                    "UPDATE node_sender_lease SET expires_at = ? "
                    "WHERE name = ? AND token = ? AND expires_at > ?",
                    (at, _NAME, token, at),
                ).rowcount
                == 1
            )

    def sender_lease(self) -> SenderLease | None:
        """The lease as it stands (maybe expired), or None before any sender took it."""
        with self._db.read() as conn:
            row = conn.execute(_SELECT, (_NAME,)).fetchone()
        if row is None:
            return None
        return SenderLease(holder=row[0], token=int(row[1]), expires_at=decode_instant(row[2]))
