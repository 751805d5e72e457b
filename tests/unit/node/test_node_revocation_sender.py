"""The node's automatic revocation against the CA system's own logic, in process: what each
supersession queues, and how the sender drains the queue (order, backoff, refusals)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from node_pki import NOW, Node, csr_for, make_node
from tests.unit.node.test_lease_holder import token_of_a_process_that_exited

from ztpki.errors import Unavailable
from ztpki.node.authorization import Operation, RefusalReason, Refused
from ztpki.node.lease_holder import new_token
from ztpki.node.revocation import RevocationSender, backoff
from ztpki.node.revocation_policy import RevocationPolicy
from ztpki.pki.pem import serial_hex
from ztpki.store.records import RevocationReason
from ztpki.store.revocation_records import QueueStatus, RevocationAction, RevocationOrder

CA = "operational"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = make_node(tmp_path)
    yield n
    n.close()


def enroll(node: Node, device_id: str, operation: Operation = Operation.SERVERKEYGEN):  # type: ignore[no-untyped-def]
    _, cert = node.pki.temporary(device_id)
    identity = node.pki.identity(cert)
    return asyncio.run(node.service.enroll(operation, node.label, identity, csr_for(device_id)))


POLICY = RevocationPolicy(poll_seconds=0.1, retry_max_seconds=8, sender_lease_seconds=30)


def sender(node: Node, *, clock: object = None, holder: str = "the sender") -> RevocationSender:
    # One holder by default: the senders a test makes one after another are one process's.
    if clock is None:
        return RevocationSender(
            node.service.register, node.service.ca_client, POLICY, holder=holder
        )
    return RevocationSender(
        node.service.register,
        node.service.ca_client,
        POLICY,
        clock=clock,  # type: ignore[arg-type]
        holder=holder,
    )


def reason_at_ca(node: Node, serial: str) -> str | None:
    record = node.ca.store.revocation(CA, serial)
    return None if record is None else record.reason.value


def test_ok_retried_serverkeygen_queues_the_unconfirmed_certificate(node: Node) -> None:
    node.list("d1")
    first = serial_hex(enroll(node, "d1").certificate)
    second = serial_hex(enroll(node, "d1").certificate)
    (order,) = node.store.revocations(device_id="d1")
    assert (order.serial, order.reason, order.status) == (first, "superseded", QueueStatus.PENDING)
    assert reason_at_ca(node, first) is None  # queued, not sent yet
    assert asyncio.run(sender(node).drain()) == 1
    assert reason_at_ca(node, first) == "superseded"
    assert reason_at_ca(node, second) is None
    assert node.decisions("d1")[-2:] == ["issued", "revoked"]
    assert node.store.revocations(device_id="d1", open_only=True) == []


def test_ok_lost_answer_is_revoked_before_it_is_superseded(node: Node) -> None:
    node.list("d1")
    node.ca.lose_answer = True
    with pytest.raises(Unavailable):
        enroll(node, "d1")
    (lost,) = node.ca.active("d1")
    node.ca.lose_answer = False
    enrolled = enroll(node, "d1")
    assert reason_at_ca(node, lost) == "superseded"
    assert node.ca.active("d1") == [serial_hex(enrolled.certificate)]
    revoked = [e for e in node.store.entries(device_id="d1") if e.decision == "revoked"]
    assert [e.serial for e in revoked] == [lost]


def test_ok_takeover_revokes_what_the_crashed_issuance_left(node: Node) -> None:
    node.list("d1")
    crashed = node.store.begin_issuance(
        "d1",
        allowed_from={"listed"},  # type: ignore[arg-type]
        token="crashed",
        label="default",
        now=NOW - timedelta(hours=1),
        lease_seconds=1,
    )
    assert crashed is not None
    # The crashed node had reached the CA system: a certificate nobody received.
    node.ca.lose_answer = True
    with pytest.raises(Unavailable):
        asyncio.run(
            node.service.ca_client.issue(
                device_id="d1",
                ca=node.label.config,
                ca_certificate=node.label.certificate,
                csr_der=None,
                reissue=False,
            )
        )
    node.ca.lose_answer = False
    (orphan,) = node.ca.active("d1")
    enrolled = enroll(node, "d1")
    assert reason_at_ca(node, orphan) == "superseded"
    assert node.ca.active("d1") == [serial_hex(enrolled.certificate)]


def test_ok_certificate_discarded_by_a_block_is_queued(node: Node) -> None:
    node.list("d1")
    node.ca.before_answer = lambda request: node.store.block("d1", now=NOW)
    with pytest.raises(Refused) as refused:
        enroll(node, "d1")
    assert refused.value.reason is RefusalReason.BLOCKED
    (discarded,) = node.ca.active("d1")
    (order,) = node.store.revocations(device_id="d1")
    assert order.serial == discarded and order.reason == "superseded"
    asyncio.run(sender(node).drain())
    assert reason_at_ca(node, discarded) == "superseded"


def _orders(node: Node, serial: str) -> list[RevocationOrder]:
    hold = RevocationOrder("d1", "default", CA, serial, RevocationReason.CERTIFICATE_HOLD.value)
    release = RevocationOrder(
        "d1",
        "default",
        CA,
        serial,
        RevocationReason.CERTIFICATE_HOLD.value,
        action=RevocationAction.RELEASE,
    )
    return [hold, release]


def test_ok_release_never_overtakes_its_hold(node: Node) -> None:
    node.list("d1")
    serial = serial_hex(enroll(node, "d1").certificate)
    node.store.queue_revocations(_orders(node, serial), now=NOW)
    node.ca.fail_with = Unavailable("CA system down")
    assert asyncio.run(sender(node).drain()) == 0
    hold, release = node.store.revocations(device_id="d1")
    assert hold.attempts == 1 and hold.status is QueueStatus.PENDING
    assert release.attempts == 0  # never sent while its hold is open
    assert not any(r.release_hold for r in node.ca.revocations)  # the hold alone was tried
    assert "revocation-deferred" in node.decisions("d1")
    # The CA system is back: both go, the hold first.
    node.ca.fail_with = None
    later = hold.due_at
    assert later is not None
    assert asyncio.run(sender(node, clock=lambda: later).drain()) == 2
    assert [r.release_hold for r in node.ca.revocations[-2:]] == [False, True]
    assert reason_at_ca(node, serial) is None
    assert node.decisions("d1")[-2:] == ["revoked", "released"]


def test_fail_deferred_order_waits_for_its_backoff(node: Node) -> None:
    node.list("d1")
    serial = serial_hex(enroll(node, "d1").certificate)
    node.store.queue_revocations(_orders(node, serial)[:1], now=NOW)
    node.ca.fail_with = Unavailable("CA system down")
    asyncio.run(sender(node, clock=lambda: NOW).drain())
    node.ca.fail_with = None
    assert node.store.due_revocations(now=NOW) == []  # not before its backoff
    assert len(node.store.due_revocations(now=NOW + timedelta(seconds=1))) == 1


def test_fail_refused_revocation_is_kept_and_audited(node: Node) -> None:
    node.list("d1")
    order = RevocationOrder("d1", "default", CA, "7e57", RevocationReason.SUPERSEDED.value)
    node.store.queue_revocations([order], now=NOW)
    assert asyncio.run(sender(node).drain()) == 1
    (queued,) = node.store.revocations(device_id="d1")
    assert queued.status is QueueStatus.REFUSED and queued.last_error
    assert node.decisions("d1")[-1] == "revocation-refused"


def test_ok_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n, cap=8) for n in range(1, 6)] == [1, 2, 4, 8, 8]


def test_fail_retired_during_issuance_is_refused_and_its_certificate_revoked(node: Node) -> None:
    node.list("d1")
    node.ca.before_answer = lambda request: node.store.retire("d1", now=NOW)
    with pytest.raises(Refused) as refused:
        enroll(node, "d1")
    assert refused.value.reason is RefusalReason.RETIRED
    (discarded,) = node.ca.active("d1")
    asyncio.run(sender(node).drain())
    assert reason_at_ca(node, discarded) == "superseded"
    assert node.state("d1") == "retired"
    node.ca.before_answer = None
    calls = node.ca.calls
    with pytest.raises(Refused, match="retired"):
        enroll(node, "d1")
    assert node.ca.calls == calls  # nothing asked of the CA system


def test_fail_order_with_an_unknown_reason() -> None:
    with pytest.raises(ValueError):
        RevocationOrder("d1", "default", CA, "0a", "stolen")


def blocked_with_hold(node: Node) -> str:
    node.list("d1")
    serial = serial_hex(enroll(node, "d1").certificate)
    assert node.store.block(
        "d1",
        now=NOW,
        revocations=[
            RevocationOrder("d1", "default", CA, serial, RevocationReason.CERTIFICATE_HOLD.value)
        ],
        issued_serial=serial,
    )
    return serial


def test_fail_sender_without_the_lease_sends_nothing(node: Node) -> None:
    serial = blocked_with_hold(node)
    assert node.store.take_sender_lease("other machine", now=NOW, until=NOW + timedelta(hours=1))
    before = node.store.revocations()
    other = sender(node, clock=lambda: NOW + timedelta(minutes=59))
    assert asyncio.run(other.drain()) == 0
    assert other.lease is None
    assert node.ca.revocations == [] and reason_at_ca(node, serial) is None
    assert node.store.revocations() == before
    # Once the holder's lease has expired, this sender takes it over and sends the hold.
    after = sender(node, clock=lambda: NOW + timedelta(hours=1))
    assert asyncio.run(after.drain()) == 1
    assert after.lease == 2
    assert reason_at_ca(node, serial) == "certificateHold"


class TakenOverWhileSending:
    """The CA client of a sender that hangs while its lease expires and another takes it."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._real = node.service.ca_client

    async def revoke(self, request):  # type: ignore[no-untyped-def]
        later = NOW + timedelta(minutes=10)
        assert self._node.store.take_sender_lease("other", now=later, until=later + timedelta(1))
        return await self._real.revoke(request)


def test_fail_sender_that_lost_its_lease_while_sending_records_nothing(node: Node) -> None:
    serial = blocked_with_hold(node)
    before = node.store.revocations()
    decisions = node.decisions("d1")
    stale = RevocationSender(
        node.service.register,
        TakenOverWhileSending(node),  # type: ignore[arg-type]
        POLICY,
        clock=lambda: NOW,
        holder="stale",
    )
    assert asyncio.run(stale.drain()) == 1  # the CA system answered
    assert reason_at_ca(node, serial) == "certificateHold"
    # The register is the new holder's: the order stays open for it, no audit entry.
    assert node.store.revocations() == before
    assert node.decisions("d1") == decisions
    lease = node.store.sender_lease()
    assert lease is not None and (lease.holder, lease.token) == ("other", 2)


def test_ok_closed_sender_lets_its_lease_go(node: Node) -> None:
    async def scenario() -> int | None:
        first = sender(node, holder="first")
        assert await first.hold() == 1
        await first.close()
        return await sender(node, holder="second").hold()

    assert asyncio.run(scenario()) == 2


def test_ok_lease_of_a_killed_sender_on_this_machine_is_taken_over_at_once(node: Node) -> None:
    """A worker 0 killed -9 while holding the lease: its replacement sends at once, not after
    sender_lease_seconds; a living holder on this machine keeps the lease."""
    serial = blocked_with_hold(node)
    dead = f"this-host pid 1 {token_of_a_process_that_exited()}"
    assert node.store.take_sender_lease(dead, now=NOW, until=NOW + timedelta(hours=1)) == 1
    replacement = sender(node, clock=lambda: NOW + timedelta(seconds=1), holder=live_holder())
    assert asyncio.run(replacement.drain()) == 1
    assert replacement.lease == 2
    assert reason_at_ca(node, serial) == "certificateHold"

    # A living holder (this process) is never taken over before its lease expires.
    other = sender(node, clock=lambda: NOW + timedelta(seconds=2), holder=live_holder())
    assert asyncio.run(other.drain()) == 0
    assert other.lease is None
    lease = node.store.sender_lease()
    assert lease is not None and lease.token == 2  # the replacement holds it still


def live_holder() -> str:
    return f"this-host pid {os.getpid()} {new_token()}"
