"""Both engines, through the node's register thread: a call the database refuses mid-group.

On SQLite the refused call's savepoint undoes it alone; on PostgreSQL (no savepoints) the group
is given up and its calls run again one by one. Either way every other call lands exactly once,
the refused one changes nothing, and the audit chain stays whole.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from store_backends import T0, Backend, sha256_hex

from ztpki.errors import StorageError
from ztpki.node.register import AsyncRegister
from ztpki.store import AuditRecord, DeviceState, NewDevice, NodeStore


def record(device_id: str) -> AuditRecord:
    return AuditRecord(
        at=T0, endpoint="simpleenroll", decision="issued", reason="test", device_id=device_id
    )


async def complete_all(register: AsyncRegister, store: Any, ids: list[str]) -> list[object]:
    """Hold the register thread in a gate call, queue a completion per device (d1's chain
    holds a NULL certificate, which the database refuses), then let them run as one round."""
    inside, release = threading.Event(), threading.Event()
    counts = store.counts

    def gated_counts() -> object:
        inside.set()
        release.wait(10)
        return counts()

    store.counts = gated_counts  # the register calls the instance's attribute
    gate = asyncio.ensure_future(register.counts())
    assert await asyncio.to_thread(inside.wait, 10)
    calls = [
        asyncio.ensure_future(
            register.complete_issuance(
                device_id,
                token="t",
                new_state=DeviceState.ISSUED,
                serial=f"5e{device_id}",
                spki=sha256_hex(device_id),
                certificate_der=b"\x30c",
                chain_der=[b"\x30r", None if device_id == "d1" else b"\x30s"],  # type: ignore[list-item]
                now=T0,
                audit=record(device_id),
            )
        )
        for device_id in ids
    ]
    await asyncio.sleep(0)  # the calls go on the queue behind the gate
    release.set()
    await gate
    return await asyncio.gather(*calls, return_exceptions=True)


def test_fail_a_refused_call_in_a_group_changes_nothing_and_the_others_land_once(
    backend: Backend,
) -> None:
    store: NodeStore = backend.node()
    ids = ["d0", "d1", "d2", "d3"]
    for device_id in ids:
        store.add_device(NewDevice(device_id, sha256_hex(device_id)), now=T0)
        assert store.begin_issuance(
            device_id, allowed_from={DeviceState.LISTED}, token="t", label="default", now=T0,
            lease_seconds=60,
        )  # fmt: skip
    database = store.database  # type: ignore[attr-defined]
    before = database.counters.snapshot()["commits_write"]

    async def run() -> list[object]:
        register = AsyncRegister(store)
        try:
            return await complete_all(register, store, ids)
        finally:
            register.close()

    results = asyncio.run(run())
    assert isinstance(results[1], StorageError)
    assert [results[0], results[2], results[3]] == [True, True, True]
    states = {device_id: store.get(device_id) for device_id in ids}
    assert states["d1"] is not None and states["d1"].state is DeviceState.ISSUING  # unchanged
    assert states["d1"].issued_chain_der == ()
    for device_id in ("d0", "d2", "d3"):
        row = states[device_id]
        assert row is not None and row.state is DeviceState.ISSUED
        assert row.issued_chain_der == (b"\x30r", b"\x30s")
    entries = list(store.entries())
    assert sorted(e.device_id for e in entries) == ["d0", "d2", "d3"]  # once each, none for d1
    assert store.verify().ok
    spent = database.counters.snapshot()["commits_write"] - before
    if database.dialect == "postgresql":
        assert spent == 3  # the group committed nothing; the calls alone, d1 refused
    else:
        assert spent == 1  # one group: d1 undone by its savepoint
