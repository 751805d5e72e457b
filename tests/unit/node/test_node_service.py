"""The enrollment service over a real SQLite register and the real CA-system issuing logic."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from node_pki import NOW, Node, csr_for, make_node

from ztpki.errors import Unavailable
from ztpki.node.authorization import InProgress, Operation, RefusalReason, Refused
from ztpki.node.ca_client import UpstreamError
from ztpki.node.config import IssuingParameters, Limits
from ztpki.pki.keys import KeySpec, decode_pkcs8, generate_private_key, keys_match
from ztpki.pki.pem import serial_hex
from ztpki.store.records import DeviceState


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = make_node(tmp_path)
    yield n
    n.close()


def enroll(node: Node, device_id: str, operation: Operation = Operation.SIMPLEENROLL, **kw: object):  # type: ignore[no-untyped-def]
    _, cert = kw.pop("temp", None) or node.pki.temporary(device_id)  # type: ignore[misc]
    csr = kw.pop("csr", None) or csr_for(device_id)
    identity = node.pki.identity(cert)
    return asyncio.run(node.service.enroll(operation, node.label, identity, csr))  # type: ignore[arg-type]


def test_ok_first_enrollment_is_issued_and_audited(node: Node) -> None:
    node.list("d1")
    enrolled = enroll(node, "d1")
    assert enrolled.outcome == "issued"
    device = node.store.get("d1")
    assert device is not None and device.state.value == "issued"
    assert device.issued_serial == serial_hex(enrolled.certificate)
    assert node.ca.active("d1") == [device.issued_serial]
    assert node.decisions("d1") == ["issued"]
    assert node.ca.requests[-1].reissue is False
    assert node.ca.requests[-1].csr_der is not None


def test_ok_serverkeygen_key_is_plain_and_matches(node: Node) -> None:
    node.list("d1")
    enrolled = enroll(node, "d1", Operation.SERVERKEYGEN)
    assert enrolled.private_key_der is not None
    assert keys_match(
        decode_pkcs8(enrolled.private_key_der, passphrase=None), enrolled.certificate.public_key()
    )
    assert node.ca.requests[-1].csr_der is None  # nothing from the CSR goes to the CA


def test_ok_encrypt_key_crosses_the_ca_hop_encrypted(tmp_path: Path) -> None:
    node = make_node(
        tmp_path, parameters=IssuingParameters(encrypt_key=True, key_algorithm=KeySpec.EC_P384)
    )
    try:
        node.list("d1")
        enrolled = enroll(node, "d1", Operation.SERVERKEYGEN)
        assert node.ca.requests[-1].parameters.encrypt_private_key is not None
        assert enrolled.private_key_der is not None
        key = decode_pkcs8(enrolled.private_key_der, passphrase=None)  # plain for the device
        assert keys_match(key, enrolled.certificate.public_key())
    finally:
        node.close()


def test_ok_concurrent_requests_issue_once(node: Node) -> None:
    node.list("d1")
    temp = node.pki.temporary("d1")
    identity = node.pki.identity(temp[1])
    csr = csr_for("d1")

    async def burst() -> list[object]:
        return await asyncio.gather(
            *(
                node.service.enroll(Operation.SIMPLEENROLL, node.label, identity, csr)
                for _ in range(30)
            ),
            return_exceptions=True,
        )

    results = asyncio.run(burst())
    outcomes = [
        r.outcome if not isinstance(r, BaseException) else type(r).__name__ for r in results
    ]  # type: ignore[attr-defined]
    assert set(outcomes) <= {"issued", "redelivered", "InProgress"}
    assert outcomes.count("issued") == 1
    assert node.ca.calls == 1
    assert len(node.ca.active("d1")) == 1


def test_ok_retry_with_same_key_is_redelivered_without_the_ca(node: Node) -> None:
    node.list("d1")
    temp = node.pki.temporary("d1")
    csr = csr_for("d1")
    first = enroll(node, "d1", temp=temp, csr=csr)
    again = enroll(node, "d1", temp=temp, csr=csr)
    assert again.outcome == "redelivered" and again.certificate == first.certificate
    assert node.ca.calls == 1
    # Negative control: a new key while unconfirmed is issued anew, superseding the first.
    third = enroll(node, "d1", temp=temp)
    assert third.outcome == "issued" and node.ca.requests[-1].reissue is True
    assert node.ca.active("d1") == [serial_hex(third.certificate)]


def test_fail_ca_unavailable_changes_nothing(node: Node) -> None:
    node.list("d1")
    node.ca.fail_with = Unavailable("cannot reach CA system", retry_after=99)
    with pytest.raises(Unavailable) as unavailable:
        enroll(node, "d1")
    assert unavailable.value.retry_after == Limits().retry_after  # the node's advice, not the CA's
    assert node.ca.calls == 2  # a quick failure is retried once on a fresh connection
    assert node.state("d1") == "listed"
    assert node.decisions("d1") == ["deferred"]
    # The CA system comes back: the retry succeeds.
    node.ca.fail_with = None
    assert enroll(node, "d1").outcome == "issued"


def test_ok_lost_ca_answer_is_superseded_on_retry(node: Node) -> None:
    node.list("d1")
    node.ca.lose_answer = True
    with pytest.raises(Unavailable):
        enroll(node, "d1")
    assert node.state("d1") == "listed" and len(node.ca.active("d1")) == 1
    node.ca.lose_answer = False
    enrolled = enroll(node, "d1")
    assert node.ca.active("d1") == [serial_hex(enrolled.certificate)]
    last = list(node.store.entries(device_id="d1"))[-1]
    assert last.decision == "issued" and "answer was lost" in last.reason


def test_fail_blocked_during_issuance_is_discarded(node: Node) -> None:
    node.list("d1")
    node.ca.before_answer = lambda request: node.store.block("d1", now=NOW)
    with pytest.raises(Refused) as refused:
        enroll(node, "d1")
    assert refused.value.reason is RefusalReason.BLOCKED
    assert node.state("d1") == "blocked"
    assert node.decisions("d1")[-1] == "discarded"


def test_fail_upstream_answer_for_another_device(node: Node) -> None:
    node.list("d1")
    original = node.ca.enroll

    async def wrong(request):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        return await original(replace(request, device_id="someone-else"))

    node.ca.enroll = wrong  # type: ignore[method-assign]
    with pytest.raises(UpstreamError):
        enroll(node, "d1")
    assert node.state("d1") == "listed"


def test_ok_cancelled_issuance_gives_the_state_back(node: Node) -> None:
    node.list("d1")
    node.ca.stall = asyncio.Event()
    temp = node.pki.temporary("d1")
    identity = node.pki.identity(temp[1])

    async def run() -> None:
        task = asyncio.create_task(
            node.service.enroll(Operation.SIMPLEENROLL, node.label, identity, csr_for("d1"))
        )
        while node.ca.calls == 0:
            await asyncio.sleep(0)
        assert node.state("d1") == "issuing"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert node.state("d1") == "listed"


def test_ok_confirmation_then_temporary_refused(node: Node) -> None:
    node.list("d1")
    temp = node.pki.temporary("d1")
    new_key = generate_private_key(KeySpec.EC_P256)
    enrolled = enroll(node, "d1", temp=temp, csr=csr_for("d1", new_key))
    operational = node.pki.identity(enrolled.certificate)
    asyncio.run(node.service.cacerts(node.label, operational))
    assert node.state("d1") == "customized"
    assert node.decisions("d1") == ["issued", "confirmed"]
    with pytest.raises(Refused) as refused:
        enroll(node, "d1", temp=temp)
    assert refused.value.reason is RefusalReason.CUSTOMIZED
    assert node.decisions("d1")[-1] == "refused"


def test_ok_renewal_supersedes_and_stays_customized(node: Node) -> None:
    node.list("d1")
    key = generate_private_key(KeySpec.EC_P256)
    enrolled = enroll(node, "d1", csr=csr_for("d1", key))
    operational = node.pki.identity(enrolled.certificate)
    renewed = asyncio.run(
        node.service.enroll(Operation.SIMPLEREENROLL, node.label, operational, csr_for("d1"))
    )
    assert node.state("d1") == "customized"  # confirmed first, then renewed
    assert node.ca.active("d1") == [serial_hex(renewed.certificate)]
    assert node.ca.requests[-1].reissue is True


def test_fail_in_progress_is_deferred(node: Node) -> None:
    node.list("d1")
    assert node.store.begin_issuance(
        "d1",
        allowed_from={"listed"},
        token="other",
        label="default",
        # The service reads the real clock; NOW is the import time, long past in a full run.
        now=datetime.now(UTC),
        lease_seconds=600,  # type: ignore[arg-type]
    )
    with pytest.raises(InProgress):
        enroll(node, "d1")
    assert node.decisions("d1") == ["deferred"]


def test_ok_expired_lease_of_a_crashed_node_is_taken_over(node: Node) -> None:
    from datetime import timedelta

    node.list("d1")
    crashed = node.store.begin_issuance(
        "d1",
        allowed_from={"listed"},
        token="crashed",
        label="default",
        now=NOW - timedelta(hours=1),
        lease_seconds=1,  # type: ignore[arg-type]
    )
    assert crashed is not None
    enrolled = enroll(node, "d1")
    assert enrolled.outcome == "issued" and node.ca.requests[-1].reissue is True
    assert node.state("d1") == "issued"
    assert "lease expired" in list(node.store.entries(device_id="d1"))[-1].reason


def test_fail_slow_ca_system_gives_up_in_time(tmp_path: Path) -> None:
    node = make_node(tmp_path, limits=Limits(ca_timeout=0.2))
    try:
        node.list("d1")
        node.ca.stall = asyncio.Event()  # never set: the CA system hangs
        with pytest.raises(Unavailable, match="did not answer within"):
            enroll(node, "d1")
        assert node.state("d1") == "listed"
        node.ca.stall = None
        assert enroll(node, "d1").outcome == "issued"
    finally:
        node.close()


def _enroll_under(node: Node, label: str, device_id: str = "d1"):  # type: ignore[no-untyped-def]
    _, cert = node.pki.temporary(device_id)
    identity = node.pki.identity(cert)
    return asyncio.run(
        node.service.enroll(
            Operation.SIMPLEENROLL, node.service.labels[label], identity, csr_for(device_id)
        )
    )


@pytest.fixture
def two_labels(tmp_path: Path) -> Iterator[Node]:
    n = make_node(tmp_path, more_labels=("meters",))
    yield n
    n.close()


def test_fail_other_label_after_a_lost_ca_answer(two_labels: Node) -> None:
    node = two_labels
    node.list("d1")
    node.ca.lose_answer = True  # the CA system issues and records; the node never hears it
    with pytest.raises(Unavailable):
        _enroll_under(node, "default")
    node.ca.lose_answer = False
    assert node.state("d1") == "listed"
    undelivered = node.ca.active("d1")
    assert len(undelivered) == 1  # live at CA "operational", unknown to the register
    calls = node.ca.calls
    with pytest.raises(Refused) as refused:
        _enroll_under(node, "meters")
    assert refused.value.reason is RefusalReason.LABEL_MISMATCH
    assert "label default" in refused.value.message
    assert node.ca.calls == calls and node.ca.active("d1") == undelivered  # nothing issued
    assert node.state("d1") == "listed" and node.decisions("d1")[-1] == "refused"
    # Under its label the retry supersedes the undelivered certificate: one live certificate.
    enrolled = _enroll_under(node, "default")
    assert node.ca.active("d1") == [serial_hex(enrolled.certificate)]


def test_fail_other_label_at_a_takeover(two_labels: Node) -> None:
    from datetime import timedelta

    node = two_labels
    node.list("d1")
    crashed = node.store.begin_issuance(
        "d1",
        allowed_from={DeviceState.LISTED},
        token="crashed",
        label="default",
        now=NOW - timedelta(hours=1),
        lease_seconds=1,
    )
    assert crashed is not None
    with pytest.raises(Refused) as refused:
        _enroll_under(node, "meters")
    assert refused.value.reason is RefusalReason.LABEL_MISMATCH
    assert node.ca.calls == 0 and node.state("d1") == "issuing"
    enrolled = _enroll_under(node, "default")
    assert enrolled.outcome == "issued" and "lease expired" in list(node.store.entries())[-1].reason
    assert node.ca.active("d1") == [serial_hex(enrolled.certificate)]


def test_ok_concurrent_requests_under_two_labels_issue_once(two_labels: Node) -> None:
    node = two_labels
    node.list("d1")
    _, cert = node.pki.temporary("d1")
    identity = node.pki.identity(cert)

    async def burst() -> list[object]:
        return await asyncio.gather(
            *(
                node.service.enroll(
                    Operation.SIMPLEENROLL,
                    node.service.labels[("default", "meters")[i % 2]],
                    identity,
                    csr_for("d1"),
                )
                for i in range(20)
            ),
            return_exceptions=True,
        )

    outcomes = asyncio.run(burst())
    issued = [o for o in outcomes if not isinstance(o, BaseException)]
    assert issued, outcomes
    assert all(isinstance(o, InProgress | Refused) for o in outcomes if o not in issued)
    device = node.store.get("d1")
    assert device is not None and device.issuance_label in ("default", "meters")
    assert node.ca.active("d1") == [device.issued_serial]
