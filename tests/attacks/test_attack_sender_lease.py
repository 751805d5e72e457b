"""Attacks on the one-sender rule of the revocation queue: a second `ztpki node serve` on the
same register (another machine, or an operator's mistake) must not send the queue's orders
too, or a hold could be sent twice, or after its release (a live certificate put back on
hold). The running node holds the register's sender lease; the second one must be refused it,
and each order must reach the CA system once, a hold before its release.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime

from tests.attacks.attack_deployment import Deployment, wait_until
from tests.attacks.attack_report import AttackReport
from tests.attacks.test_attack_revocation_node import WAIT, _serverkeygen, _wait_reason
from tests.support.services import child_pids, start

from ztpki.node.config import NodeConfig
from ztpki.pki.pem import serial_hex
from ztpki.store.sqlite import open_node_store

CATEGORY = "revocation"


def _applied(log: str, serial: str) -> list[str]:
    """What the CA system's log says it applied to ``serial``, in order."""
    pattern = re.compile(rf"\b(revoked|released) serial={serial} ")
    return [m.group(1) for m in map(pattern.search, log.splitlines()) if m]


def _holder_pid(d: Deployment) -> int:
    with open_node_store(NodeConfig.load(d.node_dir).database) as store:
        lease = store.sender_lease()
    assert lease is not None
    found = re.search(r" pid (\d+) ", lease.holder)
    assert found is not None, lease.holder
    return int(found.group(1))


def _held_by_the_running_node(d: Deployment) -> bool:
    with open_node_store(NodeConfig.load(d.node_dir).database) as store:
        lease = store.sender_lease()
    if lease is None or lease.expires_at <= datetime.now(UTC):
        return False
    return _holder_pid(d) in child_pids(d.node.pid) | {d.node.pid}


def test_refused_second_node_on_the_register_sends_nothing(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    live = serial_hex(_serverkeygen(d, device.key, device.certificate, device.device_id))
    ca_mark = d.log_mark("customer")
    # A node restarted by an earlier case lets its lease go; the running one takes it at its
    # first look at the queue. The attack is on a lease that is held.
    assert wait_until(lambda: _held_by_the_running_node(d), timeout=WAIT, interval=0.2)
    rogue = start(
        ["node", "serve", "--dir", str(d.node_dir), "--listen", "127.0.0.1:0"],
        log_path=d.logs / f"node-second-{os.urandom(3).hex()}.log",
        env=d.env,
    )
    try:
        for command in ("block", "unblock", "block", "unblock"):
            done = d.operator("node", command, "--dir", str(d.node_dir), device.device_id)
            assert done.status == 0, done.err
        _wait_reason(d, live, None)
        assert wait_until(
            lambda: len(_applied(d.logged_since(ca_mark), live)) >= 4, timeout=WAIT, interval=0.2
        ), d.logged_since(ca_mark)
        applied = _applied(d.logged_since(ca_mark), live)
        assert "revocation sender lease taken" not in rogue.log()
        holder = _holder_pid(d)
        assert holder in child_pids(d.node.pid) | {d.node.pid}  # still the running node
        assert holder not in child_pids(rogue.pid) | {rogue.pid}
    finally:
        rogue.stop()
    assert applied == ["revoked", "released", "revoked", "released"], applied
    attack_report.record(
        case=f"{CATEGORY}/second-sender-on-the-register",
        category=CATEGORY,
        attack="a second `ztpki node serve` started on the running node's register, so that two "
        "processes read its revocation queue, while the device is blocked, unblocked, blocked "
        "and unblocked again",
        observed="the second node is refused the register's sender lease and sends nothing "
        "(no `revocation sender lease taken` in its log); the customer CA system applied each "
        "of the four orders once, in the order they were made (hold, release, hold, release), "
        f"and the device's certificate is good at the end; {d.serve_next_device()}",
        verdict="refused",
    )
