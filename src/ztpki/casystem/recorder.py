"""Durable issuance records with group commit.

Every answer waits until its certificate is durably recorded. One writer thread commits
whatever accumulated while the previous commit ran, so many concurrent issuances share one
fsync instead of paying one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ztpki.errors import ZtpkiError
from ztpki.store.interfaces import IssuanceStore
from ztpki.store.records import IssuedCertificate

log = logging.getLogger(__name__)
MAX_GROUP = 256

_Item = tuple[IssuedCertificate, bool, "asyncio.Future[list[str]]"]


class IssuanceRecorder:
    def __init__(self, store: IssuanceStore) -> None:
        self._store = store
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="issuance-recorder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def record(self, certificate: IssuedCertificate, *, supersede: bool) -> list[str]:
        """Serials this one superseded; AlreadyIssued when one is live and not superseded."""
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        await self._queue.put((certificate, supersede, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_GROUP and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await asyncio.to_thread(
                    self._store.record_issuances, [(c, s) for c, s, _ in batch]
                )
            except Exception as exc:  # the whole transaction failed: fail every waiter
                log.exception("issuance store write failed")
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, ZtpkiError):
                    future.set_exception(result)
                else:
                    future.set_result(result)
