"""One live certificate per device, whatever the EST label: a device whose first issuance was
aborted (the customer CA system answered too late) or taken over (its node died) must not be
issued a second certificate by another label's CA.

The node has two labels, "default" (CA "devices") and "meters" (CA "meters", added with
`ztpki node add-ca`). The issuance that goes astray runs on a second node process on the same
register and CA system (several nodes may serve one register), so that its CA-client pool is
the test's own and killing it disturbs no other case. Afterwards the device holds exactly one
live certificate at the customer CA system, the one the register and its memory hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from tests.attacks.attack_deployment import (
    EST,
    NODE_LIMITS,
    Deployment,
    DeviceUnderTest,
    now,
    wait_until,
)
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import Observed, https_context, https_request
from tests.support.services import Service, start

from ztpki.device.activation import ActivatingClient, KeyMode
from ztpki.device.communication import NodeAddress
from ztpki.device.memory import Phase
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.protocol.est import CSR_TYPE, build_csr, encode_csr
from ztpki.store.instants import decode_instant

pytestmark = pytest.mark.timeout(240)

CATEGORY = "labels"
OTHER = "meters"


def _second_node(d: Deployment) -> Service:
    log = d.logs / f"node-second-{os.urandom(3).hex()}.log"
    return start(
        ["node", "serve", "--dir", str(d.node_dir), "--listen", "127.0.0.1:0"],
        log_path=log,
        env=d.env,
    )


@pytest.fixture
def second_node(deployment: Deployment) -> Iterator[Service]:
    service = _second_node(deployment)
    try:
        yield service
    finally:
        deployment.resume_process(service)
        service.stop()


def _activate_via(d: Deployment, node: Service, device: DeviceUnderTest) -> str:
    """A whole customization through ``node``: leaves one idle connection in its CA pool."""
    address = NodeAddress.parse(f"https://{node.host}:{node.port}")
    client = ActivatingClient(device.memory(), address, key_mode=KeyMode.SIMPLEENROLL, timeout=30)
    result = asyncio.run(client.activate())
    assert device.memory().phase is Phase.CUSTOMIZED
    return result.serial


def _enroll(
    d: Deployment, device: DeviceUnderTest, *, label: str | None, node: Service | None = None
) -> Observed:
    csr = encode_csr(build_csr(generate_private_key(KeySpec.EC_P256), device_id=device.device_id))
    context = https_context(key=device.key, chain=[device.certificate], anchors=d.node_anchors)
    target = node or d.node
    path = f"{EST}/{label}/simpleenroll" if label else f"{EST}/simpleenroll"
    headers = {"Content-Type": CSR_TYPE, "Content-Transfer-Encoding": "base64"}
    return https_request(
        (target.host, target.port),
        "POST",
        path,
        context=context,
        body=csr,
        headers=headers,
        transcript=d.transcript,
    )


def _in_background(call: Callable[[], Observed]) -> tuple[threading.Thread, list[Observed]]:
    out: list[Observed] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


@contextlib.contextmanager
def _write_locked(database: Path) -> Iterator[None]:
    """Hold the write lock of a service's SQLite database: its next write waits meanwhile."""
    conn = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _lease_expires(d: Deployment, device_id: str) -> datetime | None:
    rows = d._query(
        d.node_dir / "node.sqlite",
        "SELECT lease_expires FROM device WHERE device_id = ?",
        (device_id,),
    )
    return decode_instant(rows[0][0]) if rows and rows[0][0] else None


def _refused_elsewhere_then_customized(d: Deployment, device: DeviceUnderTest) -> str:
    """The retry under the other label is refused and changes nothing; the device's own retry
    under its label then leaves exactly one live certificate."""
    undelivered = d.live_serials("customer", device.device_id)
    assert len(undelivered) == 1, undelivered  # the CA system holds the lost issuance
    before = d.snapshot()
    other = _enroll(d, device, label=OTHER)
    assert other.status == 403, other.summary()
    assert "began its enrollment under EST label default" in other.text, other.text
    checked = d.check_unchanged(
        before, audited=[(device.device_id, "refused", "EST label default")]
    )
    assert d.live_serials("customer", device.device_id) == undelivered
    result = d.activate(device)
    assert d.live_serials("customer", device.device_id) == [result.serial]
    assert d.device_row(device.device_id)[:2] == ("customized", result.serial)  # type: ignore[index]
    return (
        f"the retry under label {OTHER} got {other.summary()}; {checked}; the device's "
        "retry under label default superseded the lost certificate and customized it with "
        "exactly one live certificate, the one register and memory hold"
    )


def test_fail_other_label_after_aborted_issuance(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    # The CA system signs, then waits to record the certificate (the test holds its store's
    # write lock) for longer than the node's ca_timeout: the node aborts the issuance.
    with _write_locked(d.root / "customer" / "store.sqlite"):
        aborted = _enroll(d, device, label=None)
        assert aborted.status == 503, aborted.summary()
        assert "did not answer within" in aborted.text, aborted.text
        assert d.device_row(device.device_id)[0] == "listed"  # type: ignore[index]
    # Released, the CA system records the certificate: live, and never delivered.
    assert wait_until(lambda: d.live_serials("customer", device.device_id), timeout=30)
    observed = _refused_elsewhere_then_customized(d, device)
    attack_report.record(
        case=f"{CATEGORY}/other-label-after-aborted-issuance",
        category=CATEGORY,
        attack=(
            "a device's simpleenroll under label default is aborted while the customer CA "
            "system still works on it (its store is held locked past the node's ca_timeout; "
            "released, the CA system records the certificate as live), then the device "
            f"retries under label {OTHER} (another CA)"
        ),
        observed=(
            f"the first request got {aborted.summary()} and the register gave the state back; "
            f"{observed}; {d.serve_next_device()}"
        ),
        verdict="refused",
    )


def test_fail_other_label_after_lease_takeover(
    deployment: Deployment, attack_report: AttackReport, second_node: Service
) -> None:
    d = deployment
    device = d.take_device()
    register = d.node_dir / "node.sqlite"
    # The issuance runs on the second node: held inside the CA system until the register is
    # locked too, then answered, so that the node cannot record it; then the node dies.
    with _write_locked(d.root / "customer" / "store.sqlite"):
        _in_background(lambda: _enroll(d, device, label=None, node=second_node))
        issuing = wait_until(lambda: d.device_row(device.device_id)[0] == "issuing", timeout=10)  # type: ignore[index]
        assert issuing, d.device_row(device.device_id)
        register_lock = _write_locked(register)
        register_lock.__enter__()
    try:
        assert wait_until(lambda: d.live_serials("customer", device.device_id), timeout=30)
        second_node.kill()
    finally:
        register_lock.__exit__(None, None, None)
    assert d.device_row(device.device_id)[0] == "issuing"  # type: ignore[index]
    early = _enroll(d, device, label=OTHER)  # refused at once: no need to wait for the lease
    assert early.status == 403 and "label default" in early.text, early.summary()
    expires = _lease_expires(d, device.device_id)
    assert expires is not None
    # The dead node's lease runs out; the node would now take the issuance over.
    assert wait_until(lambda: now() > expires, timeout=NODE_LIMITS["lease_seconds"] + 10)
    observed = _refused_elsewhere_then_customized(d, device)
    took_over = [
        a for a in d.audit_since(0) if a.device_id == device.device_id and "lease" in a.reason
    ]
    assert took_over, "the device's retry did not take the expired issuance over"
    attack_report.record(
        case=f"{CATEGORY}/other-label-after-lease-takeover",
        category=CATEGORY,
        attack=(
            "a node process is SIGKILLed after the customer CA system issued a device's "
            "simpleenroll under label default but before the node recorded it; once the dead "
            f"node's lease expired the device retries under label {OTHER}"
        ),
        observed=(
            f"while the lease ran a retry got {early.summary()}; after it expired {observed} "
            f"(audited as a takeover); {d.serve_next_device()}"
        ),
        verdict="refused",
    )
