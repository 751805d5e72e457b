"""Contract for the register's streamed reads and streamed imports (any backend).

``devices`` and ``entries`` read page by page: every row once, in order, whatever the page
size, a state or device filter, or a limit. ``import_devices`` consumes a stream of devices
all or nothing: an error raised by the stream, or a repeated id, lists nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from store_backends import T0
from test_contract_register import CHAIN, device, issued, manifest

from ztpki.errors import MalformedInput
from ztpki.store import AuditRecord, DeviceState, DuplicateDevice, NewDevice, NodeStore

IDS = [f"d{n:03d}" for n in range(23)]


def imported(store: NodeStore, ids: list[str]) -> None:
    result = store.import_devices((device(i) for i in ids), manifest=manifest("m1", len(ids)))
    assert (result.added, result.unchanged) == (len(ids), 0)


@pytest.mark.parametrize("page", [1, 2, 5, 22, 23, 24, 1000])
def test_ok_devices_stream_in_order_across_pages(node_store: NodeStore, page: int) -> None:
    imported(node_store, IDS[::-1])
    for device_id in IDS[3::4]:
        issued(node_store, device_id)
    every = list(node_store.devices(page=page))
    assert [d.device_id for d in every] == IDS
    issued_ids = [d.device_id for d in node_store.devices(state=DeviceState.ISSUED, page=page)]
    assert issued_ids == IDS[3::4]
    rows = {d.device_id: d for d in every}
    assert all(rows[i].issued_chain_der == CHAIN for i in issued_ids)  # chains of each page
    assert all(rows[i].issued_chain_der == () for i in IDS if i not in issued_ids)
    listed = [d.device_id for d in node_store.devices(state=DeviceState.LISTED, page=page)]
    assert listed == [i for i in IDS if i not in issued_ids]


def test_ok_devices_stream_lets_the_caller_write_between_rows(node_store: NodeStore) -> None:
    imported(node_store, IDS)
    # No transaction is held across pages: the caller may change the register meanwhile.
    seen = []
    for row in node_store.devices(state=DeviceState.LISTED, page=3):
        seen.append(row.device_id)
        assert node_store.block(row.device_id, now=T0)
    assert seen == IDS
    assert list(node_store.devices(state=DeviceState.LISTED)) == []


def test_fail_devices_page_must_be_positive(node_store: NodeStore) -> None:
    with pytest.raises(ValueError, match="page"):
        list(node_store.devices(page=0))


@pytest.mark.parametrize("page", [1, 2, 7, 1000])
def test_ok_entries_stream_with_filters_and_limit(node_store: NodeStore, page: int) -> None:
    node_store.append_many(
        [
            AuditRecord(at=T0, endpoint="e", decision="d", reason=str(n), device_id=f"d{n % 3}")
            for n in range(20)
        ]
    )
    assert [e.seq for e in node_store.entries(page=page)] == list(range(1, 21))
    assert [e.seq for e in node_store.entries(limit=5, page=page)] == list(range(16, 21))
    by_device = [e.seq for e in node_store.entries(device_id="d1", page=page)]
    assert by_device == [n + 1 for n in range(20) if n % 3 == 1]
    newest = [e.seq for e in node_store.entries(device_id="d1", limit=2, page=page)]
    assert newest == by_device[-2:]
    assert list(node_store.entries(limit=0, page=page)) == []
    assert len(list(node_store.entries(limit=100, page=page))) == 20


def test_fail_stream_raising_midway_lists_nothing(node_store: NodeStore) -> None:
    def devices() -> Iterator[NewDevice]:
        yield from (device(i) for i in IDS)
        raise MalformedInput("the manifest file changed while it was read; import it again")

    with pytest.raises(MalformedInput, match="changed"):
        node_store.import_devices(devices(), manifest=manifest("m1", len(IDS)))
    assert list(node_store.devices()) == [] and node_store.manifests() == []
    # Negative control: the same devices, without the error, are listed.
    imported(node_store, IDS)
    assert len(list(node_store.devices())) == len(IDS)


@pytest.mark.parametrize(
    "ids",
    [[*IDS, "d000"], ["x", "x"], [*IDS[:5], "d002", *IDS[5:]]],
    ids=["fail-repeat-at-the-end", "fail-repeat-adjacent", "fail-repeat-in-the-middle"],
)
def test_fail_repeated_id_lists_nothing(node_store: NodeStore, ids: list[str]) -> None:
    repeated = next(i for n, i in enumerate(ids) if i in ids[:n])
    with pytest.raises(DuplicateDevice, match=f"device {repeated} appears twice"):
        node_store.import_devices((device(i) for i in ids), manifest=manifest("m1", len(ids)))
    assert list(node_store.devices()) == [] and node_store.manifests() == []
    assert list(node_store.entries()) == []


def test_ok_import_counts_devices_listed_before(node_store: NodeStore) -> None:
    node_store.add_device(device("d005"), now=T0)
    audit = AuditRecord(at=T0, endpoint="cli/import", decision="imported", reason="m1")
    result = node_store.import_devices(
        (device(i) for i in IDS), manifest=manifest("m1", len(IDS)), audit=audit
    )
    assert (result.added, result.unchanged, result.already_imported) == (len(IDS) - 1, 1, False)
    assert [e.decision for e in node_store.entries()] == ["imported"]
    again = node_store.import_devices(iter(()), manifest=manifest("m1", len(IDS)), audit=audit)
    assert (again.added, again.unchanged, again.already_imported) == (0, len(IDS), True)
    assert [e.decision for e in node_store.entries()] == ["imported"]
