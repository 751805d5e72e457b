"""On SQLite an import stages its devices without the register's write lock: enrollments
(other connections) write while the device stream is read. (On PostgreSQL the import runs
in one write transaction: a TEMP table lives in one pooled session.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from store_backends import T0
from test_contract_register import device, manifest

from ztpki.store import NewDevice
from ztpki.store.sqlite import open_sqlite_node_store


def test_ok_register_stays_writable_while_devices_arrive(tmp_path: Path) -> None:
    store = open_sqlite_node_store(tmp_path / "node.db")
    # Another connection, as `node serve` has; busy_timeout 0: a held lock fails at once.
    other = open_sqlite_node_store(tmp_path / "node.db", busy_timeout=0)
    ids = [f"d{n:03d}" for n in range(23)]

    def devices() -> Iterator[NewDevice]:
        for n, device_id in enumerate(ids):
            other.add_device(device(f"x{n:03d}"), now=T0)
            yield device(device_id)

    try:
        result = store.import_devices(devices(), manifest=manifest("m1", len(ids)))
        assert result.added == len(ids)
        assert len(list(store.devices())) == 2 * len(ids)
    finally:
        other.close()
        store.close()
