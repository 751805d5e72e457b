"""The access-control register as the event loop sees it: every store call in worker threads.

SQLite calls block (and a durable commit waits for fsync), so they run in a small thread pool
of their own; the loop keeps serving TLS handshakes and other devices meanwhile. The store
gives each thread its own connection and serializes writers with BEGIN IMMEDIATE.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TypeVar

from ztpki.store.interfaces import NodeStore
from ztpki.store.records import AuditRecord, DeviceState, RegisteredDevice

T = TypeVar("T")


class AsyncRegister:
    """The NodeStore operations the enrollment service needs, as coroutines."""

    def __init__(self, store: NodeStore, *, threads: int = 4) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="node-register")

    async def _run(self, call: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    async def get(self, device_id: str) -> RegisteredDevice | None:
        return await self._run(self.store.get, device_id)

    async def counts(self) -> dict[DeviceState, int]:
        return await self._run(self.store.counts)

    async def begin_issuance(
        self,
        device_id: str,
        *,
        allowed_from: Collection[DeviceState],
        token: str,
        now: datetime,
        lease_seconds: float,
    ) -> RegisteredDevice | None:
        return await self._run(
            self.store.begin_issuance,
            device_id,
            allowed_from=allowed_from,
            token=token,
            now=now,
            lease_seconds=lease_seconds,
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

    async def audit(self, record: AuditRecord) -> None:
        await self._run(self.store.append_many, [record])

    def close(self) -> None:
        self._pool.shutdown(wait=True)
