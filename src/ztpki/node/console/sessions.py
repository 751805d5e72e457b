"""Console sessions, kept on the server, and the throttle of failed logins.

A session is a random token in a cookie (``__Host-``: Secure, Path=/, no Domain; HttpOnly;
SameSite=Strict) that names a row here; the row holds the operator, the role, the CSRF
synchronizer token and the expiry, so logging out or expiring ends it whatever the browser
keeps. One process serves the console (`node serve --workers N`: worker 0), so memory is
the right place: a restart logs everyone out.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ztpki.store.sqlite_console import Role

COOKIE = "__Host-ztpki_console"
# Sessions kept at most; the oldest go first past it (each login makes one).
MAX_SESSIONS = 10_000
# Names and addresses whose failures are remembered at most (the oldest are forgotten).
MAX_TRACKED = 10_000


@dataclass
class Session:
    operator: str
    role: Role
    csrf: str
    expires: float
    how: str  # "password" or "certificate"

    def may_change(self) -> bool:
        return self.role is Role.OPERATOR

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


@dataclass
class Sessions:
    lifetime: float
    clock: Callable[[], float] = time.monotonic
    _sessions: dict[str, Session] = field(default_factory=dict)

    def open(self, operator: str, role: Role, *, how: str) -> tuple[str, Session]:
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        token = secrets.token_urlsafe(32)
        session = Session(
            operator, role, secrets.token_urlsafe(32), self.clock() + self.lifetime, how
        )
        self._sessions[token] = session
        return token, session

    def find(self, token: str | None) -> Session | None:
        """The live session of ``token``; an expired one is forgotten."""
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._sessions[token]
            return None
        return session

    def close(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)


# One address may fail this many times more than one name: several operators may share an
# address (a NAT, a jump host), and guessing one name is throttled by the name's own limit.
ADDRESS_FACTOR = 4


@dataclass
class LoginThrottle:
    """At most ``attempts`` failed logins per name, and ADDRESS_FACTOR times as many per
    address, within ``window`` seconds."""

    attempts: int
    window: float
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str) -> deque[float]:
        seen = self._failures.get(key)
        if seen is None:
            return deque()
        horizon = self.clock() - self.window
        while seen and seen[0] <= horizon:
            seen.popleft()
        if not seen:
            del self._failures[key]
        return seen

    def _limits(self, name: str, address: str) -> tuple[tuple[str, int], ...]:
        return (
            (f"name:{name}", self.attempts),
            (f"address:{address}", self.attempts * ADDRESS_FACTOR),
        )

    def blocked(self, name: str, address: str) -> bool:
        return any(len(self._recent(key)) >= limit for key, limit in self._limits(name, address))

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        for key in (f"name:{name}", f"address:{address}"):
            if key not in self._failures:
                while len(self._failures) >= MAX_TRACKED:
                    del self._failures[next(iter(self._failures))]
                self._failures[key] = deque()
            self._failures[key].append(now)

    def retry_after(self, name: str, address: str) -> int:
        waits = [
            seen[0] + self.window - self.clock()
            for key, limit in self._limits(name, address)
            if len(seen := self._recent(key)) >= limit
        ]
        return max(1, int(max(waits, default=1.0)) + 1)
