"""A value the console makes in the background and shows with its age (the audit chain's
verification, the CA systems' health): a page never waits for a new one, only for the first
one, and at most ``wait`` seconds; a new one starts when the last is older than ``every``
(one at a time)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Refreshed(Generic[T]):
    def __init__(
        self, make: Callable[[], Awaitable[T]], *, every: float, wait: float, name: str
    ) -> None:
        self._make = make
        self._every = every
        self._wait = wait
        self._name = name
        self.last: tuple[float, T] | None = None  # (loop time, value); None: forget it
        self._running: asyncio.Task[None] | None = None

    async def get(self) -> tuple[T, float] | None:
        """The last value and its age in seconds; None while the first is being made."""
        loop = asyncio.get_running_loop()
        stale = self.last is None or loop.time() - self.last[0] > self._every
        if stale and (self._running is None or self._running.done()):
            self._running = asyncio.create_task(self._refresh(), name=self._name)
        if self.last is None and self._running is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._running), self._wait)
        if self.last is None:
            return None
        return self.last[1], loop.time() - self.last[0]

    async def _refresh(self) -> None:
        value = await self._make()
        self.last = (asyncio.get_running_loop().time(), value)

    async def close(self) -> None:
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._running
