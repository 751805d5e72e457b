"""Durable issuance records with group commit.

Every answer waits until its certificate is durably recorded. The records that accumulated
while the previous commit ran are written as one batch on the event loop (a few statements,
microseconds each) and committed, the one fsync, on the recorder's own thread. Running the
statements on the loop and handing over once per batch keeps the two threads from passing
the interpreter lock back and forth on every statement, which cost more CPU than the writes.

A batch lingers for a few turns of the loop while records keep arriving. When a commit
ends, its answers go out together and their clients' next requests come back together a
few turns later; a batch started on the first of them would split every such round into a
commit of one and a commit of the rest, two fsyncs and two hand-offs where one will do.
Measured with 8 clients this took a fifth off the CPU per certificate (benchmarks/README.md,
"Fifth round"). A lone request waits only for the quiet turns, microseconds when idle.

Staging never waits on the loop: when another process holds the database's write lock,
the batch is staged on the commit thread instead, and the loop goes on serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from ztpki.errors import Unavailable, ZtpkiError
from ztpki.eventloop import cancel_tasks
from ztpki.store.interfaces import IssuanceStore, StagedBatch
from ztpki.store.records import IssuedCertificate

log = logging.getLogger(__name__)
MAX_GROUP = 256
# A batch closes after this many loop turns in a row brought no record, or after LINGER_TURNS.
QUIET_TURNS = 2
LINGER_TURNS = 16

_Item = tuple[IssuedCertificate, bool, "asyncio.Future[list[str]]"]


class IssuanceRecorder:
    def __init__(self, store: IssuanceStore) -> None:
        self._store = store
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="issuance-recorder")

    async def stop(self) -> None:
        await cancel_tasks(self._task)
        # A commit in progress completes; waiting for it off the loop keeps the loop serving.
        finish = functools.partial(self._committer.shutdown, wait=True)
        await asyncio.get_running_loop().run_in_executor(None, finish)
        while not self._queue.empty():  # never taken into a batch: never written
            self._queue.get_nowait()[2].cancel()

    async def record(self, certificate: IssuedCertificate, *, supersede: bool) -> list[str]:
        """Serials this one superseded; AlreadyIssued when one is live and not superseded."""
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((certificate, supersede, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            try:
                await self._linger(batch)
                staged = await self._stage([(c, s) for c, s, _ in batch])
                await loop.run_in_executor(self._committer, staged.commit)
            except asyncio.CancelledError:  # stopping: no waiter of this batch gets an answer
                for _, _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # the whole transaction failed: fail every waiter
                log.exception("issuance store write failed")
                _fail(batch, exc)
                continue
            _settle(batch, staged.results)

    async def _stage(self, items: list[tuple[IssuedCertificate, bool]]) -> StagedBatch:
        try:
            return self._store.stage_issuances(items, wait=False)
        except Unavailable:
            # Another process holds the write lock (an operator's `ztpki ca ...`, a backup):
            # wait for it on the commit thread, so the loop goes on serving meanwhile.
            stage = functools.partial(self._store.stage_issuances, items)
            return await asyncio.get_running_loop().run_in_executor(self._committer, stage)

    async def _linger(self, batch: list[_Item]) -> None:
        """Add the records that arrive while the loop takes turns, until it goes quiet."""
        quiet = turns = 0
        while len(batch) < MAX_GROUP and quiet < QUIET_TURNS and turns < LINGER_TURNS:
            await asyncio.sleep(0)  # one turn: ready sockets are read, ready requests run
            turns += 1
            quiet = 0 if not self._queue.empty() else quiet + 1
            while len(batch) < MAX_GROUP and not self._queue.empty():
                batch.append(self._queue.get_nowait())


def _settle(batch: list[_Item], results: list[list[str] | ZtpkiError]) -> None:
    for (_, _, future), result in zip(batch, results, strict=True):
        if future.done():
            continue
        if isinstance(result, ZtpkiError):
            future.set_exception(result)
        else:
            future.set_result(result)


def _fail(batch: list[_Item], exc: Exception) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)
