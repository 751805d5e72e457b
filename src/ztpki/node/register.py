"""The access-control register as the event loop sees it: store calls on one thread, group commit.

SQLite calls block (a durable commit waits for fsync), so they run on the register's own
thread while the loop keeps serving TLS handshakes and other devices. The thread takes every
call that queued up while its previous round ran and, when the store offers ``group()``
(SQLiteNodeStore does), runs them in one transaction: each call is a savepoint of its own
(all or nothing, as alone), and one commit makes all of them durable together. No caller
hears its result before that commit returned, so a state change the node acts on is on disk
before a device sees the answer, and devices served at the same time share one fsync instead
of paying one each. Each round hands its results back to the loop with one wake-up.

Calls run in the order they were made, one at a time, as they did on their own connections
before: every transition stays a conditional update, so exactly-once holds as before. Reading
one device's row is the exception: with the SQLite store it runs on the loop's own connection
(committed rows only, as any other connection sees them), unless the database is busy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from ztpki.errors import StorageError, Unavailable
from ztpki.store.cmp_secrets import CmpSecret
from ztpki.store.cmp_transactions import CmpTransaction, CmpTransactionState
from ztpki.store.interfaces import NodeStore
from ztpki.store.records import AuditRecord, DeviceState, RegisteredDevice
from ztpki.store.revocation_records import QueuedRevocation, RevocationOrder, SenderLease
from ztpki.store.sqlite_db import GroupAborted
from ztpki.store.sqlite_register import SQLiteNodeStore

T = TypeVar("T")

log = logging.getLogger(__name__)

# Calls run in one transaction at most; a longer queue is served in several rounds.
MAX_GROUP = 128


@dataclass(frozen=True, slots=True)
class _Call:
    run: Callable[[], object]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass(frozen=True, slots=True)
class _Outcome:
    value: object = None
    error: BaseException | None = None


def _attempt(run: Callable[[], object], *, grouped: bool) -> _Outcome:
    try:
        return _Outcome(value=run())
    except BaseException as exc:  # handed to the caller, as an executor would
        if grouped and isinstance(exc, GroupAborted):
            raise  # the whole group is gone: the caller runs its calls again, one by one
        return _Outcome(error=exc)


def _resolve(pairs: Sequence[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    for future, outcome in pairs:
        if future.done():  # the caller was cancelled meanwhile
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.value)


class AsyncRegister:
    """The NodeStore operations the enrollment service needs, as coroutines."""

    def __init__(self, store: NodeStore, *, max_group: int = MAX_GROUP) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self.store = store
        self._max_group = max_group
        group = getattr(store, "group", None)
        self._group: Callable[[], AbstractContextManager[None]] | None = (
            group if callable(group) else None
        )
        self._sqlite = store if isinstance(store, SQLiteNodeStore) else None
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="node-register", daemon=True)
        self._thread.start()

    async def _run(self, call: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        if self._closed:
            raise StorageError("the customer register was closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put(_Call(functools.partial(call, *args, **kwargs), future, loop))
        return await future

    # ------------------------------------------------------------------ the register thread

    def _serve(self) -> None:
        while True:
            first = self._calls.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_group:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is None:
                    stop = True
                    break
                batch.append(call)
            self._settle(batch, self._execute([call.run for call in batch]))
            if stop:
                return

    def _execute(self, runs: Sequence[Callable[[], object]]) -> list[_Outcome]:
        if self._group is not None and len(runs) > 1:
            try:
                with self._group():
                    return [_attempt(run, grouped=True) for run in runs]
            except GroupAborted as exc:
                # Nothing of the group was committed, so running each call again is safe.
                log.warning("register group rolled back (%s); its calls run one by one", exc)
            except Exception as exc:  # the group's own BEGIN or COMMIT failed
                # Each call alone would have met the same error; none is run twice, because a
                # commit that reported failure may still have reached the disk.
                return [_Outcome(error=exc) for _ in runs]
        return [_attempt(run, grouped=False) for run in runs]

    @staticmethod
    def _settle(batch: Sequence[_Call], outcomes: Sequence[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
        for call, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(call.loop, []).append((call.future, outcome))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, pairs)
            except RuntimeError:  # that loop is closed: nobody waits for these any more
                continue

    # ------------------------------------------------------------------ operations

    async def get(self, device_id: str) -> RegisteredDevice | None:
        if self._sqlite is not None:
            # One indexed read of committed rows costs less than the hop to the register
            # thread and back; it runs here unless the database is busy, never waiting.
            try:
                return self._sqlite.get(device_id, wait=False)
            except Unavailable:
                pass
        return await self._run(self.store.get, device_id)

    async def counts(self) -> dict[DeviceState, int]:
        return await self._run(self.store.counts)

    async def begin_issuance(
        self,
        device_id: str,
        *,
        allowed_from: Collection[DeviceState],
        token: str,
        label: str,
        now: datetime,
        lease_seconds: float,
        take_over: str | None = None,
    ) -> RegisteredDevice | None:
        return await self._run(
            self.store.begin_issuance,
            device_id,
            allowed_from=allowed_from,
            token=token,
            label=label,
            now=now,
            lease_seconds=lease_seconds,
            take_over=take_over,
        )

    async def complete_issuance(
        self,
        device_id: str,
        *,
        token: str,
        new_state: DeviceState,
        serial: str,
        spki: str,
        certificate_der: bytes,
        chain_der: Sequence[bytes],
        now: datetime,
        audit: AuditRecord,
        revocations: Sequence[RevocationOrder] = (),
        renewed_from: str | None = None,
    ) -> bool:
        return await self._run(
            self.store.complete_issuance,
            device_id,
            token=token,
            new_state=new_state,
            serial=serial,
            spki=spki,
            certificate_der=certificate_der,
            chain_der=chain_der,
            now=now,
            audit=audit,
            revocations=revocations,
            renewed_from=renewed_from,
        )

    async def abort_issuance(
        self, device_id: str, *, token: str, now: datetime, audit: AuditRecord | None
    ) -> bool:
        return await self._run(
            self.store.abort_issuance, device_id, token=token, now=now, audit=audit
        )

    async def confirm(
        self, device_id: str, *, serial: str, now: datetime, audit: AuditRecord
    ) -> bool:
        return await self._run(self.store.confirm, device_id, serial=serial, now=now, audit=audit)

    async def retire(
        self,
        device_id: str,
        *,
        now: datetime,
        audit: AuditRecord,
        revocations: Sequence[RevocationOrder],
        issued_serial: str | None,
    ) -> bool:
        return await self._run(
            self.store.retire,
            device_id,
            now=now,
            audit=audit,
            revocations=revocations,
            issued_serial=issued_serial,
        )

    async def audit(self, *records: AuditRecord) -> None:
        if records:
            await self._run(self.store.append_many, list(records))

    # ------------------------------------------------------------------ revocation queue

    async def confirm_renewal(
        self, device_id: str, *, serial: str, now: datetime, due_at: datetime, audit: AuditRecord
    ) -> bool:
        return await self._run(
            self.store.confirm_renewal,
            device_id,
            serial=serial,
            now=now,
            due_at=due_at,
            audit=audit,
        )

    async def queue_revocations(
        self, orders: Sequence[RevocationOrder], *, now: datetime, audit: AuditRecord | None
    ) -> None:
        await self._run(self.store.queue_revocations, orders, now=now, audit=audit)

    async def open_revocation_counts(self) -> dict[str, int]:
        return await self._run(self.store.open_revocation_counts)

    async def due_revocations(self, *, now: datetime, limit: int) -> list[QueuedRevocation]:
        return await self._run(self.store.due_revocations, now=now, limit=limit)

    async def revocation_done(
        self, seq: int, *, lease: int, now: datetime, refused: str | None, audit: AuditRecord
    ) -> bool:
        return await self._run(
            self.store.revocation_done, seq, lease=lease, now=now, refused=refused, audit=audit
        )

    async def revocation_failed(
        self, seq: int, *, lease: int, error: str, retry_at: datetime, audit: AuditRecord
    ) -> bool:
        return await self._run(
            self.store.revocation_failed,
            seq,
            lease=lease,
            error=error,
            retry_at=retry_at,
            audit=audit,
        )

    async def take_sender_lease(
        self, holder: str, *, now: datetime, until: datetime, take_over: str | None = None
    ) -> int | None:
        return await self._run(
            self.store.take_sender_lease, holder, now=now, until=until, take_over=take_over
        )

    async def sender_lease(self) -> SenderLease | None:
        return await self._run(self.store.sender_lease)

    async def release_sender_lease(self, token: int, *, now: datetime) -> bool:
        return await self._run(self.store.release_sender_lease, token, now=now)

    # ------------------------------------------------------------------ CMP transactions

    async def begin_cmp_transaction(self, transaction: CmpTransaction) -> bool:
        return await self._run(self.store.begin_cmp_transaction, transaction)

    async def record_cmp_issued(
        self,
        transaction_id: bytes,
        *,
        serial: str,
        certificate_der: bytes,
        response_nonce: bytes,
        confirmed: bool,
        now: datetime,
    ) -> bool:
        return await self._run(
            self.store.record_cmp_issued,
            transaction_id,
            serial=serial,
            certificate_der=certificate_der,
            response_nonce=response_nonce,
            confirmed=confirmed,
            now=now,
        )

    async def close_cmp_transaction(
        self, transaction_id: bytes, *, state: CmpTransactionState, now: datetime
    ) -> bool:
        return await self._run(
            self.store.close_cmp_transaction, transaction_id, state=state, now=now
        )

    async def mark_cmp_waiting(self, transaction_id: bytes, *, now: datetime) -> bool:
        return await self._run(self.store.mark_cmp_waiting, transaction_id, now=now)

    async def cmp_transaction(self, transaction_id: bytes) -> CmpTransaction | None:
        return await self._run(self.store.cmp_transaction, transaction_id)

    async def cmp_secret(self, device_id: str) -> CmpSecret | None:
        return await self._run(self.store.cmp_secret, device_id)

    def close(self) -> None:
        """Finish the calls already queued, stop the thread; later calls raise StorageError."""
        if self._closed:
            return
        self._closed = True
        self._calls.put(None)
        self._thread.join()
        # Calls queued behind the stop (made while closing) are answered, never left waiting.
        leftovers: list[_Call] = []
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                leftovers.append(call)
        closed = _Outcome(error=StorageError("the customer register was closed"))
        self._settle(leftovers, [closed] * len(leftovers))
