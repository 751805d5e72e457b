"""The register thread: calls queued together share one transaction, each all or nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ztpki.errors import StorageError, Unavailable
from ztpki.node.register import AsyncRegister
from ztpki.store.records import DeviceState, NewDevice, RegisteredDevice
from ztpki.store.sql import GroupAborted
from ztpki.store.sqlite_db import SQLiteDatabase
from ztpki.store.sqlite_register import SQLiteNodeStore

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def in_loop(
    test: Callable[[GatedStore, AsyncRegister], Coroutine[None, None, None]],
) -> Callable[[GatedStore], None]:
    """Run an async test body with a register over ``store`` in a fresh event loop (the
    suite has no asyncio plugin); the register is closed afterwards, whatever happened."""

    def run(store: GatedStore) -> None:
        register = AsyncRegister(store)
        try:
            asyncio.run(test(store, register))
        finally:
            register.close()

    # Named like the test, but not wrapping it: pytest must see only the store fixture.
    run.__name__ = run.__qualname__ = test.__name__
    run.__doc__ = test.__doc__
    return run


class GatedStore(SQLiteNodeStore):
    """Holds the register thread inside a call on device "gate" until released; counts groups
    and lease calls, and can make a group fail at its end."""

    def __init__(self, path: Path) -> None:
        super().__init__(SQLiteDatabase(path, durable=False))
        self.inside = threading.Event()
        self.release = threading.Event()
        self.groups: list[int] = []
        self.begun: list[str] = []
        self.fail_group: Exception | None = None
        self.busy_reads = False

    def begin_issuance(self, device_id: str, **kwargs: object) -> RegisteredDevice | None:
        if device_id == "gate":
            self.inside.set()
            assert self.release.wait(10)
        self.begun.append(device_id)
        return super().begin_issuance(device_id, **kwargs)  # type: ignore[arg-type]

    def group(self) -> AbstractContextManager[None]:
        return self._counted_group()

    @contextmanager
    def _counted_group(self) -> Iterator[None]:
        self.groups.append(len(self.begun))
        with super().group():
            yield
            if self.fail_group is not None:
                raise self.fail_group

    def get(self, device_id: str, *, wait: bool = True) -> RegisteredDevice | None:
        if self.busy_reads and not wait:
            raise Unavailable("busy", retry_after=1)
        return super().get(device_id, wait=wait)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatedStore]:
    store = GatedStore(tmp_path / "node.sqlite")
    for device_id in ("gate", *(f"d{i}" for i in range(6))):
        store.add_device(NewDevice(device_id, None), now=NOW)
    yield store
    store.close()


def _lease(
    register: AsyncRegister, device_id: str, *, seconds: float = 60.0
) -> asyncio.Task[object]:
    return asyncio.ensure_future(
        register.begin_issuance(
            device_id,
            allowed_from=[DeviceState.LISTED],
            token=f"t-{device_id}",
            label="default",
            now=NOW,
            lease_seconds=seconds,
        )
    )


async def _queued_behind_gate(
    store: GatedStore, register: AsyncRegister, leases: list[tuple[str, float]]
) -> list[object]:
    """Ask for ``leases`` while the register thread is held inside the gate call."""
    gate = _lease(register, "gate")
    await asyncio.to_thread(store.inside.wait, 10)
    calls = [_lease(register, device_id, seconds=seconds) for device_id, seconds in leases]
    await asyncio.sleep(0)  # let the tasks put their calls on the queue
    store.release.set()
    await gate
    return await asyncio.gather(*calls, return_exceptions=True)


@in_loop
async def test_ok_calls_queued_together_share_one_group(
    store: GatedStore, register: AsyncRegister
) -> None:
    results = await _queued_behind_gate(store, register, [(f"d{i}", 60.0) for i in range(5)])
    assert all(isinstance(r, RegisteredDevice) for r in results)
    assert store.groups == [1]  # the five calls after the gate: one transaction
    assert {d.state for d in store.devices() if d.device_id != "gate"} == {
        DeviceState.ISSUING,
        DeviceState.LISTED,  # d5 was not asked
    }
    # negative control: a call made alone runs alone, without a group
    assert await register.abort_issuance("d0", token="t-d0", now=NOW, audit=None)
    assert store.groups == [1]


@in_loop
async def test_fail_a_failing_call_fails_alone_in_its_group(
    store: GatedStore, register: AsyncRegister
) -> None:
    leases = [("d0", 60.0), ("d1", 0.0), ("d2", 60.0)]
    results = await _queued_behind_gate(store, register, leases)
    assert isinstance(results[1], ValueError)
    assert isinstance(results[0], RegisteredDevice) and isinstance(results[2], RegisteredDevice)
    states = {d.device_id: d.state for d in store.devices()}
    assert (states["d0"], states["d1"], states["d2"]) == (
        DeviceState.ISSUING,
        DeviceState.LISTED,
        DeviceState.ISSUING,
    )


@in_loop
async def test_fail_a_failed_commit_fails_every_call_and_runs_none_again(
    store: GatedStore, register: AsyncRegister
) -> None:
    store.fail_group = StorageError("disk full")
    results = await _queued_behind_gate(store, register, [("d0", 60.0), ("d1", 60.0)])
    assert all(isinstance(r, StorageError) and "disk full" in str(r) for r in results)
    assert store.begun.count("d0") == 1 and store.begun.count("d1") == 1
    assert {d.state for d in store.devices()} == {DeviceState.LISTED, DeviceState.ISSUING}
    assert store.get("d0") is not None and store.get("d0").state is DeviceState.LISTED  # type: ignore[union-attr]


@in_loop
async def test_ok_an_aborted_group_runs_its_calls_one_by_one(
    store: GatedStore, register: AsyncRegister
) -> None:
    store.fail_group = GroupAborted("the transaction ended early")
    results = await _queued_behind_gate(store, register, [("d0", 60.0), ("d1", 60.0)])
    assert all(isinstance(r, RegisteredDevice) for r in results)
    assert store.begun.count("d0") == 2  # in the rolled-back group, then alone
    assert store.get("d0").state is DeviceState.ISSUING  # type: ignore[union-attr]


@in_loop
async def test_ok_reads_wait_on_the_register_thread_when_the_database_is_busy(
    store: GatedStore, register: AsyncRegister
) -> None:
    assert (await register.get("d0")).state is DeviceState.LISTED  # type: ignore[union-attr]
    store.busy_reads = True
    assert (await register.get("d0")).state is DeviceState.LISTED  # type: ignore[union-attr]
    assert await register.get("absent") is None  # negative control


@in_loop
async def test_fail_calls_after_close(store: GatedStore, register: AsyncRegister) -> None:
    assert await register.counts()
    register.close()
    with pytest.raises(StorageError, match="closed"):
        await register.counts()
