"""Both engines: an import stages its devices in a pinned session without the register's
write lock, so enrollments (other connections, other processes) write while a manifest's
devices arrive; only the short listing step at the end holds the lock. A session's TEMP
tables end with it, and a stream that fails stages nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from store_backends import T0, Backend
from test_contract_register import device, manifest

from ztpki.errors import MalformedInput, Unavailable
from ztpki.store import DuplicateDevice, NewDevice
from ztpki.store.sql import Database

IDS = [f"d{n:03d}" for n in range(23)]


def database(store: object) -> Database:
    db: Database = store.database  # type: ignore[attr-defined]
    return db


def test_ok_register_stays_writable_while_devices_arrive(backend: Backend) -> None:
    store, other = backend.node(), backend.node()  # two connections, as `node serve` has

    def devices() -> Iterator[NewDevice]:
        for n, device_id in enumerate(IDS):
            # wait=False: a write lock held by the import would refuse at once.
            probe = database(other).detached_write(wait=False)
            probe.rollback()
            other.add_device(device(f"x{n:03d}"), now=T0)
            yield device(device_id)

    result = store.import_devices(devices(), manifest=manifest("m1", len(IDS)))
    assert (result.added, result.unchanged) == (len(IDS), 0)
    assert len(list(store.devices())) == 2 * len(IDS)


def test_ok_listing_step_holds_the_write_lock(backend: Backend) -> None:
    # Negative control of the test above: the probe does see a held lock.
    store, other = backend.node(), backend.node()
    held = database(store).detached_write()
    try:
        with pytest.raises(Unavailable):
            database(other).detached_write(wait=False)
    finally:
        held.rollback()


def test_ok_session_temp_tables_end_with_it(backend: Backend) -> None:
    db = database(backend.node())
    for _ in range(3):  # the same table name again: the last session dropped it
        with db.session() as session:
            with session.staging() as conn:
                conn.execute("CREATE TEMP TABLE scratch (name TEXT NOT NULL)")
                assert session.copy_rows("scratch", ["name"], ([n] for n in IDS)) == len(IDS)
            with session.staging() as conn:  # and it lives from one transaction to the next
                assert conn.execute("SELECT COUNT(*) FROM scratch").fetchone()[0] == len(IDS)


def test_fail_stream_error_stages_nothing_and_the_session_recovers(backend: Backend) -> None:
    db = database(backend.node())

    def rows() -> Iterator[list[str]]:
        yield ["a"]
        raise MalformedInput("the manifest file changed while it was read; import it again")

    with db.session() as session:
        with session.staging() as conn:
            conn.execute("CREATE TEMP TABLE scratch (name TEXT NOT NULL)")
        with pytest.raises(MalformedInput, match="changed"), session.staging():
            session.copy_rows("scratch", ["name"], rows())
        with session.staging() as conn:
            assert conn.execute("SELECT COUNT(*) FROM scratch").fetchone()[0] == 0
            assert session.copy_rows("scratch", ["name"], [["b"]]) == 1


def test_fail_repeat_in_a_big_stream_lists_nothing_and_names_the_first(backend: Backend) -> None:
    store = backend.node()
    ids = [f"d{n:05d}" for n in range(12_000)]
    ids[9_000], ids[11_000] = ids[8_000], ids[100]  # d08000 repeats first
    with pytest.raises(DuplicateDevice, match="device d08000 appears twice"):
        store.import_devices((device(i) for i in ids), manifest=manifest("m1", len(ids)))
    assert list(store.devices()) == [] and store.manifests() == []
    assert list(store.entries()) == []
