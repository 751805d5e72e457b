"""What a database did for its callers, counted for the node's /metrics.

Each ``Database`` counts its round trips (a request to the engine and its answer: for
PostgreSQL a network round trip to the server, for SQLite one statement run by the library)
and its commits, write and read transactions apart. They are what a customization costs the
database, and what `benchmarks/fleet.py` divides by the customizations it made.
"""

from __future__ import annotations

import threading

KINDS = ("write", "read")


class DatabaseCounters:
    """Counters of one database object in one process (a forked child starts from zero)."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._round_trips = 0
        self._commits = dict.fromkeys(KINDS, 0)

    def round_trip(self, count: int = 1) -> None:
        with self._lock:
            self._round_trips += count

    def commit(self, kind: str) -> None:
        with self._lock:
            self._commits[kind] += 1

    def reset(self) -> None:
        """Start from zero: a forked child counts only its own work."""
        with self._lock:
            self._round_trips = 0
            self._commits = dict.fromkeys(KINDS, 0)

    def snapshot(self) -> dict[str, int]:
        """``round_trips`` and ``commits_write``/``commits_read`` so far."""
        with self._lock:
            return {
                "round_trips": self._round_trips,
                **{f"commits_{kind}": n for kind, n in self._commits.items()},
            }
