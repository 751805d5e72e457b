"""Console sessions, kept in the node's register, and the throttle of failed logins.

A session is a random token in a cookie (``__Host-``: Secure, Path=/, no Domain; HttpOnly;
SameSite=Strict) whose SHA-256 names a row of the register (ztpki.store.console_sessions);
the row holds the operator, the role, a salt for the CSRF token, the expiry and the idle
timeout, so logging out, expiring or removing the operator ends it whatever the browser keeps,
and a restarted node, or another console process on the same register, finds it. The token
itself is never stored: reading the register opens no session, and the CSRF token is an HMAC
of the salt under the token, so the register cannot forge a form either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ztpki.store.console_sessions import SessionRecord
from ztpki.store.sqlite_console import Role

COOKIE = "__Host-ztpki_console"
# Names and addresses whose failures are remembered at most (the oldest are forgotten).
MAX_TRACKED = 10_000
# A session's idle timeout is pushed on (a write) at most this often.
TOUCH_AFTER = timedelta(seconds=30)
# A token is 32 random bytes, URL-safe base64: anything longer is no token of ours.
MAX_TOKEN = 64


class SessionStore(Protocol):
    """What the sessions need of the register (ztpki.store.console_sessions)."""

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
    ) -> None: ...

    def console_session(
        self, token_hash: str, *, now: datetime, touch_after: timedelta = ...
    ) -> SessionRecord | None: ...

    def close_console_session(self, token_hash: str) -> bool: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _csrf(token: str, salt: str) -> str:
    mac = hmac.new(token.encode(), b"ztpki console csrf " + salt.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


@dataclass(frozen=True)
class Session:
    operator: str
    role: Role
    csrf: str
    expires: datetime
    how: str  # "password" or "certificate"

    def may_change(self) -> bool:
        return self.role is Role.OPERATOR

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Sessions:
    """Opening, finding and closing sessions; blocking calls (run them off the event loop)."""

    store: SessionStore
    lifetime: float  # seconds from login to expiry, whatever the use
    idle: float  # seconds without a request after which a session ends
    clock: Callable[[], datetime] = _utcnow

    def open(self, operator: str, role: Role, *, how: str) -> tuple[str, Session]:
        token, salt = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
        now = self.clock()
        lifetime = timedelta(seconds=self.lifetime)
        self.store.open_console_session(
            token_hash(token),
            operator=operator,
            role=role,
            csrf_salt=salt,
            how=how,
            now=now,
            lifetime=lifetime,
            idle=timedelta(seconds=min(self.idle, self.lifetime)),
        )
        return token, Session(operator, role, _csrf(token, salt), now + lifetime, how)

    def find(self, token: str | None) -> Session | None:
        """The live session of ``token``; an expired or idle one is deleted."""
        if not token or len(token) > MAX_TOKEN:
            return None
        record = self.store.console_session(
            token_hash(token), now=self.clock(), touch_after=TOUCH_AFTER
        )
        if record is None:
            return None
        return Session(
            record.operator,
            record.role,
            _csrf(token, record.csrf_salt),
            record.expires_at,
            record.how,
        )

    def close(self, token: str | None) -> None:
        if token and len(token) <= MAX_TOKEN:
            self.store.close_console_session(token_hash(token))


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
