"""Contract for RegisterStore: the access-control register and its issuance state machine."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from store_backends import T0, Backend, race, race_begin_issuance, sha256_hex
from tests.support.legacy_register import BEFORE_CONSOLE

from ztpki.store import (
    AuditRecord,
    DeviceState,
    DuplicateDevice,
    ManifestRecord,
    NewDevice,
    NodeStore,
    RegisteredDevice,
)
from ztpki.store.sqlite import open_sqlite_node_store

LISTED = DeviceState.LISTED
ISSUING = DeviceState.ISSUING
ISSUED = DeviceState.ISSUED
CUSTOMIZED = DeviceState.CUSTOMIZED
BLOCKED = DeviceState.BLOCKED
RETIRED = DeviceState.RETIRED

LATER = T0 + timedelta(minutes=1)
CHAIN = (b"\x30root", b"\x30sub")


def device(device_id: str) -> NewDevice:
    return NewDevice(device_id, sha256_hex(device_id), manufacturer="Acme", model="X1", batch="b-7")


def manifest(
    manifest_id: str, count: int, *, issued_days_ago: int = 1, manufacturer: str = "Acme"
) -> ManifestRecord:
    return ManifestRecord(
        manufacturer=manufacturer,
        manifest_id=manifest_id,
        issued_at=T0 - timedelta(days=issued_days_ago),
        signer="CN=Acme manifest signer",
        device_count=count,
        imported_at=T0,
    )


def listed(store: NodeStore, *ids: str) -> None:
    for device_id in ids:
        store.add_device(device(device_id), now=T0)


def state_of(store: NodeStore, device_id: str) -> DeviceState:
    row = store.get(device_id)
    assert row is not None
    return row.state


def begin(
    store: NodeStore,
    device_id: str,
    token: str,
    *,
    allowed: frozenset[DeviceState] = frozenset({LISTED}),
    now: datetime = T0,
    lease: float = 60,
    audit: AuditRecord | None = None,
    label: str = "default",
    take_over: str | None = None,
) -> RegisteredDevice | None:
    return store.begin_issuance(
        device_id,
        allowed_from=allowed,
        token=token,
        label=label,
        now=now,
        lease_seconds=lease,
        audit=audit,
        take_over=take_over,
    )


def complete(
    store: NodeStore,
    device_id: str,
    token: str,
    *,
    serial: str = "0a",
    new_state: DeviceState = ISSUED,
    audit: AuditRecord | None = None,
) -> bool:
    return store.complete_issuance(
        device_id,
        token=token,
        new_state=new_state,
        serial=serial,
        spki=sha256_hex("spki-" + serial),
        certificate_der=b"\x30cert-" + serial.encode(),
        chain_der=CHAIN,
        now=LATER,
        audit=audit,
    )


def issued(store: NodeStore, device_id: str, serial: str = "0a") -> None:
    assert begin(store, device_id, "t-setup", allowed=frozenset({LISTED, ISSUED}))
    assert complete(store, device_id, "t-setup", serial=serial)


# ---------------------------------------------------------------- listing devices


def test_ok_import_lists_new_devices(node_store: NodeStore) -> None:
    result = node_store.import_devices([device("d1"), device("d2")], manifest=manifest("m1", 2))
    assert (result.added, result.unchanged, result.already_imported) == (2, 0, False)
    row = node_store.get("d1")
    assert row is not None
    assert row.state is LISTED
    assert (row.temp_fingerprint, row.manufacturer, row.model, row.batch, row.manifest_id) == (
        sha256_hex("d1"),
        "Acme",
        "X1",
        "b-7",
        "m1",
    )
    assert (row.issued_serial, row.issued_certificate_der, row.lease_token) == (None, None, None)
    assert row.issued_chain_der == ()
    assert row.updated_at == T0
    assert node_store.manifests() == [manifest("m1", 2)]
    assert node_store.counts() == {
        LISTED: 2,
        ISSUING: 0,
        ISSUED: 0,
        CUSTOMIZED: 0,
        BLOCKED: 0,
        RETIRED: 0,
    }


def test_fail_same_manifest_twice_is_a_no_op(node_store: NodeStore) -> None:
    node_store.import_devices([device("d1")], manifest=manifest("m1", 1))
    again = node_store.import_devices([device("d1"), device("d9")], manifest=manifest("m1", 2))
    assert (again.added, again.unchanged, again.already_imported) == (0, 2, True)
    assert node_store.get("d9") is None
    assert len(node_store.manifests()) == 1


def test_fail_replayed_manifest_cannot_reset_or_unblock(node_store: NodeStore) -> None:
    node_store.import_devices([device("d1"), device("d2")], manifest=manifest("m1", 2))
    assert node_store.block("d1", now=LATER)
    issued(node_store, "d2")
    before = {d.device_id: d for d in node_store.devices()}

    node_store.import_devices([device("d1"), device("d2")], manifest=manifest("m1", 2))
    older = manifest("m0", 3, issued_days_ago=30)
    result = node_store.import_devices([device("d1"), device("d2"), device("d3")], manifest=older)

    assert (result.added, result.unchanged, result.already_imported) == (1, 2, False)
    after = {d.device_id: d for d in node_store.devices()}
    assert after["d1"] == before["d1"] and after["d1"].state is BLOCKED
    assert after["d2"] == before["d2"] and after["d2"].state is ISSUED
    assert after["d3"].state is LISTED and after["d3"].manifest_id == "m0"


def test_ok_manifest_id_is_unique_per_manufacturer(node_store: NodeStore) -> None:
    node_store.import_devices([device("d1")], manifest=manifest("m1", 1))
    globex = NewDevice("g1", sha256_hex("g1"), manufacturer="Globex")
    theirs = node_store.import_devices([globex], manifest=manifest("m1", 1, manufacturer="Globex"))
    assert (theirs.added, theirs.already_imported) == (1, False)
    row = node_store.get("g1")
    assert row is not None and (row.manufacturer, row.manifest_id) == ("Globex", "m1")
    # Within one manufacturer the id counts once: a second manifest under it lists nothing.
    again = node_store.import_devices([device("d2")], manifest=manifest("m1", 1))
    assert (again.added, again.already_imported) == (0, True)
    assert node_store.get("d2") is None
    assert sorted((m.manufacturer, m.manifest_id) for m in node_store.manifests()) == [
        ("Acme", "m1"),
        ("Globex", "m1"),
    ]


def test_fail_manifest_listing_a_device_of_another_manufacturer(node_store: NodeStore) -> None:
    globex = NewDevice("g1", sha256_hex("g1"), manufacturer="Globex")
    with pytest.raises(ValueError, match="not of the manifest's manufacturer Acme"):
        node_store.import_devices([device("d1"), globex], manifest=manifest("m1", 2))
    assert list(node_store.devices()) == [] and node_store.manifests() == []
    # A device without a manufacturer takes the manifest's.
    node_store.import_devices([NewDevice("d1", None)], manifest=manifest("m1", 1))
    row = node_store.get("d1")
    assert row is not None and row.manufacturer == "Acme"


def test_ok_add_device_by_hand(node_store: NodeStore) -> None:
    node_store.add_device(NewDevice("d1", None), now=T0)
    row = node_store.get("d1")
    assert row is not None
    assert (row.state, row.temp_fingerprint, row.manifest_id) == (LISTED, None, None)


def test_fail_add_device_twice(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    node_store.block("d1", now=T0)
    with pytest.raises(DuplicateDevice) as caught:
        node_store.add_device(device("d1"), now=LATER)
    assert caught.value.code == "conflict"
    assert state_of(node_store, "d1") is BLOCKED


def test_ok_devices_filter_order_and_counts(node_store: NodeStore) -> None:
    listed(node_store, "d3", "d1", "d2")
    issued(node_store, "d2")
    assert [d.device_id for d in node_store.devices()] == ["d1", "d2", "d3"]
    assert [d.device_id for d in node_store.devices(state=LISTED)] == ["d1", "d3"]
    (d2,) = list(node_store.devices(state=ISSUED))
    assert d2.issued_chain_der == CHAIN
    assert list(node_store.devices(state=BLOCKED)) == []
    assert node_store.counts()[LISTED] == 2 and node_store.counts()[ISSUED] == 1
    assert node_store.get("nobody") is None


# ---------------------------------------------------------------- issuance lease


def test_ok_begin_returns_the_row_before_the_change(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    before = begin(node_store, "d1", "t1")
    assert before is not None and before.state is LISTED and before.lease_token is None
    now = node_store.get("d1")
    assert now is not None
    assert (now.state, now.lease_token, now.previous_state) == (ISSUING, "t1", LISTED)
    assert now.lease_expires == T0 + timedelta(seconds=60)


def test_fail_begin_when_not_allowed(node_store: NodeStore) -> None:
    listed(node_store, "d1", "d2")
    issued(node_store, "d2")
    assert begin(node_store, "nobody", "t1") is None
    assert begin(node_store, "d2", "t1") is None  # ISSUED, only LISTED allowed
    assert begin(node_store, "d1", "t1") is not None
    assert begin(node_store, "d1", "t2") is None  # live lease
    node_store.block("d2", now=T0)
    assert begin(node_store, "d2", "t3", allowed=frozenset({LISTED, ISSUED, CUSTOMIZED})) is None
    assert state_of(node_store, "d2") is BLOCKED


@pytest.mark.parametrize(
    "allowed",
    [frozenset(), frozenset({ISSUING}), frozenset({LISTED, BLOCKED})],
    ids=["fail-empty", "fail-issuing", "fail-blocked"],
)
def test_fail_begin_from_non_resting_states_is_a_bug(
    node_store: NodeStore, allowed: frozenset[DeviceState]
) -> None:
    listed(node_store, "d1")
    with pytest.raises(ValueError, match="allowed_from"):
        begin(node_store, "d1", "t1", allowed=allowed)
    assert state_of(node_store, "d1") is LISTED


def test_ok_complete_stores_the_certificate(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    begin(node_store, "d1", "t1")
    assert complete(node_store, "d1", "t1", serial="0a") is True
    row = node_store.get("d1")
    assert row is not None
    assert (row.state, row.issued_serial, row.issued_spki) == (ISSUED, "0a", sha256_hex("spki-0a"))
    assert row.issued_certificate_der == b"\x30cert-0a"
    assert row.issued_chain_der == CHAIN
    assert (row.lease_token, row.lease_expires, row.previous_state) == (None, None, None)
    assert row.updated_at == LATER


def test_fail_complete_with_wrong_token_or_twice(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    begin(node_store, "d1", "t1")
    assert complete(node_store, "d1", "t-other") is False
    assert state_of(node_store, "d1") is ISSUING
    assert complete(node_store, "d1", "t1") is True
    assert complete(node_store, "d1", "t1", serial="0b") is False
    row = node_store.get("d1")
    assert row is not None and row.issued_serial == "0a"


def test_fail_complete_to_a_non_issued_state_is_a_bug(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    begin(node_store, "d1", "t1")
    with pytest.raises(ValueError):
        complete(node_store, "d1", "t1", new_state=LISTED)
    assert state_of(node_store, "d1") is ISSUING


def test_ok_complete_straight_to_customized(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    begin(node_store, "d1", "t1")
    assert complete(node_store, "d1", "t1", new_state=CUSTOMIZED)
    assert state_of(node_store, "d1") is CUSTOMIZED


def test_ok_retry_from_issued_replaces_certificate_and_chain(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    issued(node_store, "d1", serial="0a")
    before = begin(node_store, "d1", "t2", allowed=frozenset({LISTED, ISSUED}))
    assert before is not None and before.issued_serial == "0a"
    during = node_store.get("d1")
    assert during is not None and during.previous_state is ISSUED
    assert node_store.complete_issuance(
        "d1",
        token="t2",
        new_state=ISSUED,
        serial="0b",
        spki=sha256_hex("k2"),
        certificate_der=b"\x30new",
        chain_der=[b"\x30only"],
        now=LATER,
    )
    row = node_store.get("d1")
    assert row is not None
    assert (row.issued_serial, row.issued_chain_der) == ("0b", (b"\x30only",))


def test_ok_abort_returns_to_previous_state(node_store: NodeStore) -> None:
    listed(node_store, "d1", "d2")
    issued(node_store, "d2", serial="0a")
    begin(node_store, "d1", "t1")
    begin(node_store, "d2", "t2", allowed=frozenset({ISSUED}))
    assert node_store.abort_issuance("d1", token="wrong", now=LATER) is False
    assert state_of(node_store, "d1") is ISSUING
    assert node_store.abort_issuance("d1", token="t1", now=LATER) is True
    assert node_store.abort_issuance("d2", token="t2", now=LATER) is True
    assert node_store.abort_issuance("d2", token="t2", now=LATER) is False
    d1, d2 = node_store.get("d1"), node_store.get("d2")
    assert d1 is not None and d1.state is LISTED and d1.lease_token is None
    assert d2 is not None and d2.state is ISSUED and d2.issued_serial == "0a"


def test_ok_stale_lease_is_taken_over(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    issued(node_store, "d1", serial="0a")
    allowed = frozenset({LISTED, ISSUED})
    assert begin(node_store, "d1", "crashed", allowed=allowed, lease=30) is not None
    assert begin(node_store, "d1", "t2", allowed=allowed, now=T0 + timedelta(seconds=30)) is None
    before = begin(node_store, "d1", "t2", allowed=allowed, now=T0 + timedelta(seconds=31))
    assert before is not None
    assert (before.state, before.previous_state, before.issued_serial) == (ISSUING, ISSUED, "0a")
    row = node_store.get("d1")
    assert row is not None
    assert (row.lease_token, row.previous_state) == ("t2", ISSUED)
    assert complete(node_store, "d1", "crashed", serial="0b") is False
    assert complete(node_store, "d1", "t2", serial="0c") is True
    assert node_store.abort_issuance("d1", token="crashed", now=LATER) is False


def test_ok_live_lease_of_a_dead_holder_is_taken_over_by_its_token(node_store: NodeStore) -> None:
    """A worker killed mid-issuance: the caller names the dead holder's token, and takes the
    lease over before it expires; naming any other token (or none, or "") changes nothing."""
    listed(node_store, "d1")
    assert begin(node_store, "d1", "killed", lease=120) is not None
    for wrong in (None, "", "someone-else"):
        assert begin(node_store, "d1", "t2", take_over=wrong) is None
        row = node_store.get("d1")
        assert row is not None and (row.state, row.lease_token) == (ISSUING, "killed")
    before = begin(node_store, "d1", "t2", take_over="killed")
    assert before is not None and before.lease_token == "killed"
    row = node_store.get("d1")
    assert row is not None
    assert (row.state, row.lease_token, row.previous_state) == (ISSUING, "t2", LISTED)
    assert begin(node_store, "d1", "t3", take_over="killed") is None  # t2 holds it now
    assert complete(node_store, "d1", "killed", serial="0b") is False
    assert complete(node_store, "d1", "t2", serial="0c") is True


def test_ok_label_is_remembered_across_abort_and_takeover(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    allowed = frozenset({LISTED, ISSUED})
    assert begin(node_store, "d1", "t1", allowed=allowed, label="meters") is not None
    assert node_store.abort_issuance("d1", token="t1", now=LATER) is True
    row = node_store.get("d1")
    assert row is not None and (row.state, row.issuance_label) == (LISTED, "meters")
    # Another label may not start, not even on a row read before the abort.
    assert begin(node_store, "d1", "t2", allowed=allowed, label="default") is None
    assert state_of(node_store, "d1") is LISTED
    # A crashed issuance under the same label: its takeover is bound to that label too.
    assert begin(node_store, "d1", "crashed", allowed=allowed, lease=1, label="meters")
    stale = T0 + timedelta(hours=1)
    assert begin(node_store, "d1", "t3", allowed=allowed, now=stale, label="default") is None
    assert begin(node_store, "d1", "t3", allowed=allowed, now=stale, label="meters") is not None
    assert complete(node_store, "d1", "t3", serial="0a") is True
    row = node_store.get("d1")
    assert row is not None and (row.state, row.issuance_label) == (ISSUED, "meters")
    assert begin(node_store, "d1", "t4", allowed=allowed, label="default") is None
    # Customized: its operational certificate names its label; the register no longer binds.
    node_store.confirm("d1", serial="0a", now=LATER)
    renewal = begin(node_store, "d1", "t5", allowed=frozenset({CUSTOMIZED}), label="default")
    assert renewal is not None


def test_ok_label_survives_block_and_unblock(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    assert begin(node_store, "d1", "t1", label="meters") is not None
    assert node_store.block("d1", now=LATER) is True
    assert node_store.unblock("d1", now=LATER) is True
    assert begin(node_store, "d1", "t2", label="default") is None
    assert begin(node_store, "d1", "t2", label="meters") is not None


def test_fail_stale_lease_from_a_state_the_caller_may_not_start_from(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    issued(node_store, "d1")
    node_store.confirm("d1", serial="0a", now=T0)
    # A renewal from CUSTOMIZED crashed; a temporary-certificate request must not inherit it.
    assert begin(node_store, "d1", "renewal", allowed=frozenset({CUSTOMIZED}), lease=1)
    stale = T0 + timedelta(hours=1)
    assert begin(node_store, "d1", "temp", allowed=frozenset({LISTED, ISSUED}), now=stale) is None
    assert begin(node_store, "d1", "renewal-2", allowed=frozenset({CUSTOMIZED}), now=stale)


def test_ok_fifty_threads_race_and_exactly_one_wins(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    wins = _race_threads(node_store, ["d1"] * 50)
    assert sum(wins.values()) == 1
    (winner,) = [token for token, won in wins.items() if won]
    row = node_store.get("d1")
    assert row is not None and row.lease_token == winner


def test_ok_fifty_threads_on_fifty_devices_all_win(node_store: NodeStore) -> None:
    ids = [f"d{i}" for i in range(50)]
    listed(node_store, *ids)
    wins = _race_threads(node_store, ids)
    assert all(wins.values()) and len(wins) == 50


def _race_threads(store: NodeStore, device_ids: list[str]) -> dict[str, bool]:
    barrier = threading.Barrier(len(device_ids))
    wins: dict[str, bool] = {}
    errors: list[BaseException] = []

    def run(i: int, device_id: str) -> None:
        token = f"t{i}"
        try:
            barrier.wait(timeout=60)
            wins[token] = begin(store, device_id, token) is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, d)) for i, d in enumerate(device_ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    return wins


@pytest.mark.timeout(180)
def test_ok_four_processes_race_and_exactly_one_wins(
    node_store: NodeStore, backend: Backend
) -> None:
    listed(node_store, "d1")
    names = ["p0", "p1", "p2", "p3"]
    outcomes = race(backend.kind, backend.locator, race_begin_issuance, names, "d1")
    assert sum(outcomes.values()) == 1
    (winner,) = [token for token, won in outcomes.items() if won]
    row = node_store.get("d1")
    assert row is not None and row.lease_token == winner


# ---------------------------------------------------------------- confirm, block, unblock


def test_ok_confirm_only_the_issued_serial(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    assert node_store.confirm("d1", serial="0a", now=LATER) is False  # still LISTED
    issued(node_store, "d1", serial="0a")
    assert node_store.confirm("d1", serial="0b", now=LATER) is False
    assert node_store.confirm("nobody", serial="0a", now=LATER) is False
    assert state_of(node_store, "d1") is ISSUED
    assert node_store.confirm("d1", serial="0a", now=LATER) is True
    assert state_of(node_store, "d1") is CUSTOMIZED
    assert node_store.confirm("d1", serial="0a", now=LATER) is False


@pytest.mark.parametrize("rest", [LISTED, ISSUED, CUSTOMIZED], ids=lambda s: f"ok-from-{s}")
def test_ok_block_and_unblock_restore_the_state(node_store: NodeStore, rest: DeviceState) -> None:
    listed(node_store, "d1")
    if rest is not LISTED:
        issued(node_store, "d1")
    if rest is CUSTOMIZED:
        node_store.confirm("d1", serial="0a", now=T0)
    assert node_store.block("d1", now=LATER) is True
    row = node_store.get("d1")
    assert row is not None and (row.state, row.blocked_from) == (BLOCKED, rest)
    assert node_store.block("d1", now=LATER) is False
    assert node_store.unblock("d1", now=LATER) is True
    row = node_store.get("d1")
    assert row is not None and (row.state, row.blocked_from) == (rest, None)
    assert node_store.unblock("d1", now=LATER) is False


def test_fail_block_and_unblock_unknown_device(node_store: NodeStore) -> None:
    assert node_store.block("nobody", now=T0) is False
    assert node_store.unblock("nobody", now=T0) is False


def test_fail_block_during_issuing_makes_completion_fail(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    begin(node_store, "d1", "t1")
    assert node_store.block("d1", now=LATER) is True
    row = node_store.get("d1")
    assert row is not None
    assert (row.state, row.blocked_from, row.lease_token, row.previous_state) == (
        BLOCKED,
        LISTED,
        None,
        None,
    )
    assert complete(node_store, "d1", "t1") is False
    assert node_store.abort_issuance("d1", token="t1", now=LATER) is False
    assert state_of(node_store, "d1") is BLOCKED
    assert node_store.unblock("d1", now=LATER) is True
    assert state_of(node_store, "d1") is LISTED


# ---------------------------------------------------------------- audit in the same transaction


def record(decision: str, device_id: str = "d1") -> AuditRecord:
    return AuditRecord(
        at=T0, endpoint="simpleenroll", decision=decision, reason="test", device_id=device_id
    )


def test_ok_audit_appended_with_the_change(node_store: NodeStore) -> None:
    node_store.import_devices([device("d1")], manifest=manifest("m1", 1), audit=record("import"))
    node_store.add_device(device("d2"), now=T0, audit=record("add", "d2"))
    begin(node_store, "d1", "t1", audit=record("begin"))
    complete(node_store, "d1", "t1", audit=record("issued"))
    node_store.confirm("d1", serial="0a", now=LATER, audit=record("confirmed"))
    node_store.block("d1", now=LATER, audit=record("blocked"))
    node_store.unblock("d1", now=LATER, audit=record("unblocked"))
    begin(node_store, "d2", "t2")
    node_store.abort_issuance("d2", token="t2", now=LATER, audit=record("aborted", "d2"))
    decisions = [e.decision for e in node_store.entries()]
    assert decisions == [
        "import", "add", "begin", "issued", "confirmed", "blocked", "unblocked", "aborted",
    ]  # fmt: skip
    assert node_store.verify().ok


def test_fail_no_audit_when_the_change_is_refused(node_store: NodeStore) -> None:
    node_store.import_devices([device("d1")], manifest=manifest("m1", 1))
    node_store.import_devices([device("d1")], manifest=manifest("m1", 1), audit=record("x"))
    with pytest.raises(DuplicateDevice):
        node_store.add_device(device("d1"), now=T0, audit=record("x"))
    assert begin(node_store, "nobody", "t1", audit=record("x")) is None
    begin(node_store, "d1", "t1")
    assert begin(node_store, "d1", "t2", audit=record("x")) is None
    assert complete(node_store, "d1", "wrong", audit=record("x")) is False
    assert node_store.abort_issuance("d1", token="wrong", now=LATER, audit=record("x")) is False
    assert node_store.confirm("d1", serial="0a", now=LATER, audit=record("x")) is False
    assert node_store.unblock("d1", now=LATER, audit=record("x")) is False
    assert node_store.block("nobody", now=LATER, audit=record("x")) is False
    assert list(node_store.entries()) == []


# ---------------------------------------------------------------- the schema holds the rules


@pytest.mark.parametrize(
    ("assignment", "params"),
    [
        ("state = ?", ("bogus",)),
        ("state = ?", ("issuing",)),  # no lease
        ("state = ?", ("blocked",)),  # no blocked_from
        ("state = ?", ("issued",)),  # no certificate
        ("blocked_from = ?", ("listed",)),  # not blocked
        ("lease_token = ?", ("t",)),  # not issuing
    ],
    ids=["fail-unknown", "fail-issuing", "fail-blocked", "fail-issued", "fail-from", "fail-lease"],
)
def test_fail_schema_refuses_inconsistent_rows(
    node_store: NodeStore, backend: Backend, assignment: str, params: tuple[str]
) -> None:
    listed(node_store, "d1")
    with pytest.raises(backend.integrity_error):
        backend.raw("node", f"UPDATE device SET {assignment} WHERE device_id = 'd1'", *params)
    assert state_of(node_store, "d1") is LISTED


def test_ok_schema_accepts_consistent_rows(node_store: NodeStore, backend: Backend) -> None:
    listed(node_store, "d1")
    changed = backend.raw(
        "node", "UPDATE device SET state = 'blocked', blocked_from = 'listed' WHERE device_id = ?",
        "d1",
    )  # fmt: skip
    assert changed == 1
    assert state_of(node_store, "d1") is BLOCKED


def test_ok_register_from_before_issuance_labels_opens_and_gains_them(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    store = open_sqlite_node_store(path)
    listed(store, "d1")
    store.close()
    with sqlite3.connect(path) as conn:  # the register as ztpki wrote it before the column
        for statement in BEFORE_CONSOLE:  # before version 6
            conn.execute(statement)
        conn.execute("ALTER TABLE device DROP COLUMN issuance_label")
        conn.execute("ALTER TABLE device DROP COLUMN renewed_from")  # and before version 4
        conn.execute("DROP TABLE node_revocation")
        conn.execute("DROP TABLE node_sender_lease")  # and before version 5
        conn.execute("DROP TABLE cmp_transaction")  # and before version 6
        conn.execute("UPDATE schema_version SET version = 2 WHERE component = 'customer_node'")
    store = open_sqlite_node_store(path)
    try:
        row = store.get("d1")
        assert row is not None and row.issuance_label is None
        assert begin(store, "d1", "t1", label="meters") is not None
        row = store.get("d1")
        assert row is not None and row.issuance_label == "meters"
    finally:
        store.close()
