"""A CA-client for several instances of one CA system: fail over, back off, come back.

The instances share one issuance store and serve the same CAs, so any of them can answer any
request; a request sent again under the same id is answered with the certificate recorded
for it (casystem.service), never a second one. That is what makes failing over safe: an
instance that took a request and then died, hung or refused (``unavailable``) is left for
the next address with the very same request.

Which address to try first is decided by ``AddressHealth``, free of I/O and clock: the
configured order, except that an address that failed is put last until its back-off has
passed (1 s after the first failure, doubling on each further one, at most 30 s; the
requests that fail together while it is backing off count once). When
every address is backing off, all are still tried, soonest first: a request never fails
without having tried each address once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ztpki.casystem.client import CAClient, parse_address
from ztpki.credentials import Credential
from ztpki.errors import ConfigurationError, Unavailable
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest
from ztpki.protocol.revocation import RevocationAnswer, RevocationRequest

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0

_T = TypeVar("_T")


@dataclass
class _Health:
    failures: int = 0
    retry_at: float = 0.0  # monotonic seconds; the address is preferred again from then


class AddressHealth:
    """Which of N addresses to try, in which order, given when each last failed."""

    def __init__(
        self, count: int, *, first: float = BACKOFF_FIRST, maximum: float = BACKOFF_MAX
    ) -> None:
        if count < 1:
            raise ValueError("at least one address is needed")
        if not 0 < first <= maximum:
            raise ValueError("back-off must satisfy 0 < first <= maximum")
        self._health = [_Health() for _ in range(count)]
        self._first = first
        self._maximum = maximum

    def order(self, now: float) -> list[int]:
        """Indexes to try: the healthy in configured order, then the backing-off ones,
        soonest to be retried first."""
        healthy = [i for i, h in enumerate(self._health) if h.retry_at <= now]
        waiting = sorted(
            (i for i, h in enumerate(self._health) if h.retry_at > now),
            key=lambda i: (self._health[i].retry_at, i),
        )
        return healthy + waiting

    def failed(self, index: int, now: float) -> float | None:
        """Note a failure; returns the back-off (seconds) the address now has, or None when
        it was backing off already: the requests in flight when it went down fail together
        and count as one failure (a burst must not push it to the maximum at once)."""
        health = self._health[index]
        if health.retry_at > now:
            return None
        health.failures += 1
        delay = min(self._maximum, self._first * 2.0 ** (health.failures - 1))
        health.retry_at = now + delay
        return delay

    def succeeded(self, index: int) -> None:
        self._health[index] = _Health()

    def backing_off(self, index: int, now: float) -> bool:
        return self._health[index].retry_at > now


def parse_addresses(addresses: str | Sequence[str]) -> tuple[tuple[str, int], ...]:
    """HOST:PORT, or several of them: each parsed, none twice, at least one."""
    texts = (addresses,) if isinstance(addresses, str) else tuple(addresses)
    if not texts:
        raise ConfigurationError("give at least one CA-system address (HOST:PORT)")
    parsed = tuple(parse_address(text) for text in texts)
    if len(set(parsed)) != len(parsed):
        raise ConfigurationError(f"a CA-system address is listed twice in {', '.join(texts)}")
    return parsed


class Instance(Protocol):
    """One CA-system instance as the failover client uses it (CAClient satisfies it)."""

    @property
    def address(self) -> str: ...

    async def enroll(self, request: EnrollmentRequest) -> EnrollmentAnswer: ...

    async def revoke(self, request: RevocationRequest) -> RevocationAnswer: ...

    async def close(self) -> None: ...


class FailoverCAClient:
    """The EnrollmentTransport over several CA-system instances, one CAClient each."""

    def __init__(
        self, instances: Sequence[Instance], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not instances:
            raise ConfigurationError("give at least one CA-system address (HOST:PORT)")
        self._clients = list(instances)
        self.health = AddressHealth(len(self._clients))
        self._clock = clock

    @classmethod
    def connect(
        cls,
        addresses: Sequence[tuple[str, int]],
        credential: Credential,
        *,
        pool_size: int = 4,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> FailoverCAClient:
        """One CAClient (its own pool of kept-alive connections) per address."""
        return cls(
            [
                CAClient(
                    address,
                    credential,
                    pool_size=pool_size,
                    timeout=timeout,
                    connect_timeout=connect_timeout,
                )
                for address in addresses
            ]
        )

    async def enroll(self, request: EnrollmentRequest) -> EnrollmentAnswer:
        return await self._call(lambda client: client.enroll(request))

    async def revoke(self, request: RevocationRequest) -> RevocationAnswer:
        return await self._call(lambda client: client.revoke(request))

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    async def _call(self, send: Callable[[Instance], Awaitable[_T]]) -> _T:
        failures: list[str] = []
        for index in self.health.order(self._clock()):
            client = self._clients[index]
            try:
                result = await send(client)
            except Unavailable as exc:
                delay = self.health.failed(index, self._clock())
                if delay is not None and len(self._clients) > 1:
                    log.warning(
                        "CA system %s unavailable (%s); avoided for %.0f s",
                        client.address,
                        exc.message,
                        delay,
                    )
                failures.append(exc.message)
                continue
            self.health.succeeded(index)
            return result
        if len(failures) == 1:
            raise Unavailable(failures[0])
        raise Unavailable(
            f"none of the {len(failures)} CA-system addresses answered: " + "; ".join(failures)
        )


__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "AddressHealth",
    "FailoverCAClient",
    "Instance",
    "parse_addresses",
]
