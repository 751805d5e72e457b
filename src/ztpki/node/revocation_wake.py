"""With several workers only worker 0 sends the register's revocation orders (two senders on
one queue could send an order twice, or a stale hold after its release). A worker that queues
an order wakes worker 0 at once through a Unix socket in the workers' private directory (made
0700 by the supervisor), as worker 0 would wake its own sender; worker 0 also reads the queue
every ``[revocation] poll_seconds``, so a wake that does not arrive only delays an order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

WAKE_SOCKET = "revocations.wake.sock"
WAKE_TIMEOUT = 2.0


class WakeListener:
    """Worker 0's side: every connection wakes its revocation sender."""

    def __init__(self, directory: Path, wake: Callable[[], None]) -> None:
        self.path = directory / WAKE_SOCKET
        self._wake = wake
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # left by a worker 0 that died
        self._server = await asyncio.start_unix_server(self._woken, path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _woken(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._wake()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class WakeSender:
    """Another worker's side: ``wake()`` connects to worker 0's socket, in the background."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / WAKE_SOCKET
        self._pending: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        task = asyncio.get_running_loop().create_task(self._send(), name="wake revocations")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self) -> None:
        try:
            async with asyncio.timeout(WAKE_TIMEOUT):
                _, writer = await asyncio.open_unix_connection(str(self.path))
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            # Worker 0 is restarting: its next look at the queue sends the order.
            log.info("revocation sender not woken (%s); it looks again within its poll", exc)
