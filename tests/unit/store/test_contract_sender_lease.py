"""The revocation sender's lease, on every engine: one holder at a time across every process
sharing the register, taken over after it expires, and a fencing token without which a sender
that lost the lease closes no order."""

from __future__ import annotations

from datetime import timedelta

import pytest
from store_backends import T0, Backend, race, race_take_sender_lease
from test_contract_register import listed

from ztpki.store import AuditRecord, NodeStore
from ztpki.store.revocation_records import QueueStatus, RevocationOrder, SenderLease

LEASE = timedelta(seconds=30)
EXPIRED = T0 + LEASE
LATER = T0 + timedelta(minutes=5)


def hold(serial: str = "0a") -> RevocationOrder:
    return RevocationOrder("d1", "default", "operational", serial, "certificateHold")


def sent(decision: str) -> AuditRecord:
    return AuditRecord(
        at=LATER, endpoint="node/revocation", decision=decision, reason="test", device_id="d1"
    )


def test_ok_first_sender_takes_the_lease_and_renews_it(node_store: NodeStore) -> None:
    assert node_store.sender_lease() is None
    token = node_store.take_sender_lease("a", now=T0, until=T0 + LEASE)
    assert token == 1
    assert node_store.sender_lease() == SenderLease("a", 1, T0 + LEASE)
    # Renewing keeps the token and moves the expiry.
    later = T0 + timedelta(seconds=20)
    assert node_store.take_sender_lease("a", now=later, until=later + LEASE) == token
    assert node_store.sender_lease() == SenderLease("a", 1, later + LEASE)


def test_fail_another_sender_is_refused_while_the_lease_holds(node_store: NodeStore) -> None:
    assert node_store.take_sender_lease("a", now=T0, until=T0 + LEASE) == 1
    just_before = EXPIRED - timedelta(microseconds=1)
    assert node_store.take_sender_lease("b", now=just_before, until=just_before + LEASE) is None
    assert node_store.sender_lease() == SenderLease("a", 1, T0 + LEASE)  # nothing changed


def test_ok_expired_lease_is_taken_over_with_a_new_token(node_store: NodeStore) -> None:
    assert node_store.take_sender_lease("a", now=T0, until=T0 + LEASE) == 1
    assert node_store.take_sender_lease("b", now=EXPIRED, until=EXPIRED + LEASE) == 2
    assert node_store.sender_lease() == SenderLease("b", 2, EXPIRED + LEASE)
    # The old holder, back from being stuck, is refused and cannot renew.
    assert node_store.take_sender_lease("a", now=EXPIRED, until=EXPIRED + LEASE) is None
    assert node_store.sender_lease() == SenderLease("b", 2, EXPIRED + LEASE)


def test_ok_holder_that_let_its_lease_expire_takes_a_new_token(node_store: NodeStore) -> None:
    assert node_store.take_sender_lease("a", now=T0, until=T0 + LEASE) == 1
    assert node_store.take_sender_lease("a", now=EXPIRED, until=EXPIRED + LEASE) == 2


def test_ok_released_lease_is_taken_at_once(node_store: NodeStore) -> None:
    assert node_store.take_sender_lease("a", now=T0, until=T0 + LEASE) == 1
    assert not node_store.release_sender_lease(7, now=T0)  # not the holder's token
    assert node_store.take_sender_lease("b", now=T0, until=T0 + LEASE) is None
    assert node_store.release_sender_lease(1, now=T0)
    assert not node_store.release_sender_lease(1, now=T0)  # released once
    assert node_store.take_sender_lease("b", now=T0, until=T0 + LEASE) == 2


def test_fail_stale_holder_closes_no_order_and_changes_nothing(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    node_store.queue_revocations([hold("0a"), hold("0b")], now=T0)
    first, second = node_store.due_revocations(now=T0)
    stale = node_store.take_sender_lease("a", now=T0, until=T0 + LEASE)
    assert stale == 1
    current = node_store.take_sender_lease("b", now=EXPIRED, until=EXPIRED + LEASE)
    assert current == 2
    queue_before = node_store.revocations()
    audit_before = list(node_store.entries())

    assert not node_store.revocation_done(first.seq, lease=stale, now=LATER, audit=sent("x"))
    assert not node_store.revocation_done(
        first.seq, lease=stale, now=LATER, refused="no", audit=sent("x")
    )
    assert not node_store.revocation_failed(
        second.seq, lease=stale, error="down", retry_at=LATER, audit=sent("x")
    )
    assert not node_store.revocation_done(first.seq, lease=99, now=LATER, audit=sent("x"))
    assert node_store.revocations() == queue_before
    assert list(node_store.entries()) == audit_before

    # The current holder closes them.
    assert node_store.revocation_done(first.seq, lease=current, now=LATER, audit=sent("revoked"))
    assert node_store.revocation_failed(
        second.seq, lease=current, error="down", retry_at=LATER, audit=sent("revocation-deferred")
    )
    done, deferred = node_store.revocations()
    assert done.status is QueueStatus.DONE
    assert (deferred.status, deferred.attempts, deferred.due_at) == (
        QueueStatus.PENDING,
        1,
        LATER,
    )
    assert [e.decision for e in node_store.entries()][-2:] == ["revoked", "revocation-deferred"]


def test_fail_no_order_is_closed_before_any_sender_took_the_lease(node_store: NodeStore) -> None:
    listed(node_store, "d1")
    node_store.queue_revocations([hold()], now=T0)
    (due,) = node_store.due_revocations(now=T0)
    assert not node_store.revocation_done(due.seq, lease=1, now=LATER)
    assert node_store.revocations(open_only=True) == [due]


def test_fail_empty_holder_is_refused(node_store: NodeStore) -> None:
    with pytest.raises(ValueError, match="holder"):
        node_store.take_sender_lease("", now=T0, until=T0 + LEASE)
    assert node_store.sender_lease() is None


@pytest.mark.timeout(180)
def test_ok_four_processes_race_for_the_lease_and_one_holds_it(
    node_store: NodeStore, backend: Backend
) -> None:
    names = ["p0", "p1", "p2", "p3"]
    outcomes = race(backend.kind, backend.locator, race_take_sender_lease, names)
    winners = [holder for holder, token in outcomes.items() if token is not None]
    assert len(winners) == 1 and outcomes[winners[0]] == 1
    lease = node_store.sender_lease()
    assert lease is not None and (lease.holder, lease.token) == (winners[0], 1)


def test_ok_a_holder_known_dead_is_taken_over_before_expiry(node_store: NodeStore) -> None:
    assert node_store.take_sender_lease("a", now=T0, until=T0 + LEASE) == 1
    # Compare-and-swap on the holder: only the holder named dead is replaced.
    assert node_store.take_sender_lease("b", now=T0, until=T0 + LEASE, take_over="c") is None
    assert node_store.sender_lease() == SenderLease("a", 1, T0 + LEASE)
    assert node_store.take_sender_lease("b", now=T0, until=T0 + LEASE, take_over="a") == 2
    assert node_store.sender_lease() == SenderLease("b", 2, T0 + LEASE)
    # The dead holder's token closes nothing any more; naming it again takes nothing.
    assert node_store.take_sender_lease("c", now=T0, until=T0 + LEASE, take_over="a") is None
    assert node_store.sender_lease() == SenderLease("b", 2, T0 + LEASE)
