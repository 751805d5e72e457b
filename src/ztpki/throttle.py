"""Log lines a stranger can cause, at a bounded rate.

A party the server could not authenticate (a refused TLS handshake, a request without a
client certificate) costs it nothing to repeat; one log line per attempt would let it fill
the disk and bury the lines that matter. ``LogThrottle`` keeps a token bucket per kind of
event: the first ``burst`` of a kind are logged, then one line says that more are being
suppressed, and the next line logged once the bucket refills says how many were. The
counters in the metrics stay exact; only the log is thinned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LogThrottle"]

# Kinds are fixed phrases chosen by the code (or OpenSSL's reason strings); the cap only
# guards against a bug that would make them unbounded.
_MAX_KINDS = 512
_OTHER = "other"


@dataclass
class _Bucket:
    tokens: float
    at: float
    suppressed: int = 0


class LogThrottle:
    """Per kind of event: at most ``burst`` lines at once, refilled over ``interval`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be at least 1 and interval positive")
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        # One throttle may serve several threads (a process-wide one for TLS refusals).
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless this kind is over its rate; True if it was logged."""
        with self._lock:
            return self._log(level, kind, message, args)

    def _log(self, level: int, kind: str, message: str, args: tuple[object, ...]) -> bool:
        now = self._clock()
        if kind not in self._buckets and len(self._buckets) >= _MAX_KINDS:
            kind = _OTHER
        bucket = self._buckets.setdefault(kind, _Bucket(float(self.burst), now))
        bucket.tokens = min(
            float(self.burst), bucket.tokens + (now - bucket.at) * self.burst / self.interval
        )
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            if bucket.suppressed:
                message += " (%d similar line(s) suppressed before this one)"
                args = (*args, bucket.suppressed)
                bucket.suppressed = 0
            self.logger.log(level, message, *args)
            return True
        if not bucket.suppressed:
            self.logger.log(
                level,
                "more lines like the last one (%s) are suppressed: over %d in %.0f s",
                kind,
                self.burst,
                self.interval,
            )
        bucket.suppressed += 1
        return False

    def info(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.INFO, kind, message, *args)

    def warning(self, kind: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, message, *args)
