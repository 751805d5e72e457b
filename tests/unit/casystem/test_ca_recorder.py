"""The issuance recorder's group commit over a real SQLite store: which records share a
commit, that a steady stream is still cut into batches, and that stopping writes nothing
of a batch still gathering."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
from tests.unit.store.store_backends import make_certificate

from ztpki.casystem.recorder import LINGER_TURNS, IssuanceRecorder
from ztpki.errors import ZtpkiError
from ztpki.store.interfaces import StagedBatch
from ztpki.store.records import AlreadyIssued, IssuedCertificate
from ztpki.store.sqlite import open_sqlite_ca_store
from ztpki.store.sqlite_ca import SQLiteIssuanceStore

pytestmark = pytest.mark.timeout(60)


class BatchCountingStore:
    """The real store, noting the size of every batch the recorder stages."""

    def __init__(self, store: SQLiteIssuanceStore) -> None:
        self.store = store
        self.batches: list[int] = []

    def stage_issuances(
        self, certs: Sequence[tuple[IssuedCertificate, bool]], *, wait: bool = True
    ) -> StagedBatch:
        staged = self.store.stage_issuances(certs, wait=wait)
        self.batches.append(len(certs))
        return staged

    def issued(self) -> list[IssuedCertificate]:
        return self.store.issued()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BatchCountingStore]:
    with open_sqlite_ca_store(tmp_path / "store.sqlite") as opened:
        yield BatchCountingStore(opened)


@pytest.fixture
def other_writer(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection to the same database, as `ztpki ca ...` would hold."""
    conn = sqlite3.connect(tmp_path / "store.sqlite", isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def with_recorder(
    store: BatchCountingStore, body: Callable[[IssuanceRecorder], Awaitable[None]]
) -> None:
    async def main() -> None:
        recorder = IssuanceRecorder(store)  # type: ignore[arg-type]
        recorder.start()
        try:
            await body(recorder)
        finally:
            await recorder.stop()

    asyncio.run(main())


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_ok_records_arriving_over_a_few_turns_share_one_commit(store: BatchCountingStore) -> None:
    # As after a commit: eight clients' next requests come back one loop turn apart.
    async def body(recorder: IssuanceRecorder) -> None:
        async def client(n: int) -> list[str]:
            await turns(n)
            return await recorder.record(make_certificate(f"{n:02x}", f"dev-{n}"), supersede=False)

        assert await asyncio.gather(*(client(n) for n in range(8))) == [[]] * 8

    with_recorder(store, body)
    assert store.batches == [8]
    assert sorted(c.serial for c in store.issued()) == [f"{n:02x}" for n in range(8)]


def test_ok_a_steady_stream_is_cut_into_bounded_batches(store: BatchCountingStore) -> None:
    # A record every turn never lets the loop go quiet: the batch must close anyway.
    async def body(recorder: IssuanceRecorder) -> None:
        waiting = []
        for n in range(60):
            cert = make_certificate(f"{n:02x}", f"dev-{n}")
            waiting.append(asyncio.ensure_future(recorder.record(cert, supersede=False)))
            await asyncio.sleep(0)
        assert await asyncio.gather(*waiting) == [[]] * 60

    with_recorder(store, body)
    assert store.batches[0] <= LINGER_TURNS + 1
    assert len(store.batches) >= 2 and sum(store.batches) == 60
    assert len(store.issued()) == 60


def test_fail_a_conflict_in_a_shared_batch_fails_only_its_own_record(
    store: BatchCountingStore,
) -> None:
    async def body(recorder: IssuanceRecorder) -> None:
        first = recorder.record(make_certificate("a1", "dev-1"), supersede=False)
        again = recorder.record(make_certificate("a2", "dev-1"), supersede=False)
        other = recorder.record(make_certificate("a3", "dev-3"), supersede=False)
        results = await asyncio.gather(first, again, other, return_exceptions=True)
        assert results[0] == [] and results[2] == []
        assert isinstance(results[1], AlreadyIssued)

    with_recorder(store, body)
    assert store.batches == [3]
    assert sorted(c.serial for c in store.issued()) == ["a1", "a3"]


def test_ok_stop_while_gathering_writes_nothing_of_the_batch(store: BatchCountingStore) -> None:
    outcomes: list[BaseException | list[str]] = []

    async def body(recorder: IssuanceRecorder) -> None:
        waiting = []
        for n in range(4):  # a record every turn: the batch is still gathering
            cert = make_certificate(f"{n:02x}", f"dev-{n}")
            waiting.append(asyncio.ensure_future(recorder.record(cert, supersede=False)))
            await asyncio.sleep(0)
        await recorder.stop()
        outcomes.extend(await asyncio.gather(*waiting, return_exceptions=True))

    with_recorder(store, body)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
    assert not any(isinstance(o, ZtpkiError) for o in outcomes)
    assert store.batches == [] and store.issued() == []


async def record_behind(
    other_writer: sqlite3.Connection, recorder: IssuanceRecorder, serial: str
) -> asyncio.Future[list[str]]:
    """A record made while another writer holds the database, once its batch waits for it."""
    other_writer.execute("BEGIN IMMEDIATE")
    cert = make_certificate(serial, f"dev-{serial}")
    recording = asyncio.ensure_future(recorder.record(cert, supersede=False))
    await turns(50)  # the batch has gathered and now waits for the lock on the commit thread
    return recording


# A loop stuck in the store's busy wait would sit there for its 30-s timeout: fail long before.
@pytest.mark.timeout(10)
def test_ok_another_writer_holding_the_database_does_not_stall_the_loop(
    store: BatchCountingStore, other_writer: sqlite3.Connection
) -> None:
    async def body(recorder: IssuanceRecorder) -> None:
        recording = await record_behind(other_writer, recorder, "b1")
        await turns(150)  # with staging stuck on the loop, no turn would pass for 30 s
        assert not recording.done()
        other_writer.execute("ROLLBACK")
        assert await recording == []

    with_recorder(store, body)
    assert [c.serial for c in store.issued()] == ["b1"]
    assert store.batches == [1]


@pytest.mark.timeout(10)
def test_ok_stop_while_waiting_for_another_writer_answers_nobody_and_writes_nothing(
    store: BatchCountingStore, other_writer: sqlite3.Connection
) -> None:
    async def body(recorder: IssuanceRecorder) -> None:
        recording = await record_behind(other_writer, recorder, "c1")
        stopping = asyncio.ensure_future(recorder.stop())
        await turns(5)
        assert recording.cancelled()
        other_writer.execute("ROLLBACK")  # lets the commit thread finish, so stop returns
        await stopping

    with_recorder(store, body)
    assert store.issued() == []
