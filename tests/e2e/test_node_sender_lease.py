"""Two node machines on one PostgreSQL register: one process of all their workers sends the
queue's revocation orders (the holder of the register's sender lease), and the other machine
takes over when the holder dies.

Two `ztpki node serve --workers 2` supervisors, each with its own node directory, share one
PostgreSQL database, as two machines would. Devices are blocked and unblocked through both
directories; the customer CA system's log (one line per revocation request it applied) shows
each hold and each release exactly once, the hold first. Killing the holder's supervisor
(kill -9; its workers die with it) leaves orders queued that the other machine sends once the
lease has expired.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_fixtures import ENV, TEST_LIMITS, Device, NodeWorld, build_world, cli
from test_node_revocation import serverkeygen
from tests.attacks.attack_deployment import wait_until
from tests.support.services import Service, child_pids, start

from ztpki.node.config import NodeConfig
from ztpki.pki.pem import serial_hex
from ztpki.store import NodeStore
from ztpki.store.revocation_records import QueueStatus, SenderLease
from ztpki.store.sqlite import open_node_store

# Looks often; the lease is taken over 5 s after its holder stopped renewing it (it must
# outlast one exchange with the CA system, [limits] ca_timeout).
LEASE_SECONDS = 5.0
SETTINGS = {"revocation": {"poll_seconds": 0.2, "sender_lease_seconds": LEASE_SECONDS}}
LIMITS = {**TEST_LIMITS, "ca_timeout": 4.0}
WAIT = 90.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    built = build_world(
        tmp_path_factory.mktemp("lease"), limits=LIMITS, settings=SETTINGS, backend="postgresql"
    )
    try:
        yield built
    finally:
        built.stop()


def second_machine(world: NodeWorld) -> Path:
    """Another node machine's directory: the same configuration and credentials, the same
    database URL (database.url), its own directory."""
    other = world.root / "node-b"
    shutil.copytree(world.node_dir, other)
    return other


def serve(world: NodeWorld, directory: Path, name: str) -> Service:
    service = start(
        ["node", "serve", "--dir", str(directory), "--listen", "127.0.0.1:0", "--workers", "2"],
        log_path=world.root / f"{name}-{os.urandom(3).hex()}.log",
        env=ENV,
    )
    world.services.append(service)
    return service


def register(directory: Path) -> NodeStore:
    return open_node_store(NodeConfig.load(directory).database)


def ca_log_lines(world: NodeWorld, serial: str) -> list[str]:
    """The customer CA system's log lines of the revocation requests it applied to ``serial``,
    in order: "revoked" (the hold) and "released"."""
    pattern = re.compile(rf"\b(revoked|released) serial={serial} ")
    return [m.group(1) for m in map(pattern.search, world.customer.log().splitlines()) if m]


def enrolled(world: NodeWorld, count: int) -> list[tuple[Device, str]]:
    devices = world.make_devices(count)
    return [(device, serial_hex(serverkeygen(world, device)[0])) for device in devices]


def all_sent(store: NodeStore) -> bool:
    return store.revocations(open_only=True) == []


def holder_pid(lease: SenderLease) -> int:
    found = re.search(r" pid (\d+) ", lease.holder)
    assert found is not None, lease.holder
    return int(found.group(1))


def holder_supervisor(lease: SenderLease, supervisors: list[Service]) -> Service:
    (owner,) = [s for s in supervisors if holder_pid(lease) in child_pids(s.pid)]
    return owner


def test_ok_two_machines_send_each_order_once_and_the_survivor_takes_over(
    world: NodeWorld,
) -> None:
    store = register(world.node_dir)
    assert wait_until(lambda: store.sender_lease() is not None, timeout=WAIT)
    first = store.sender_lease()
    assert first is not None and first.token == 1  # the one node of build_world sends
    world.node.stop()
    stopped = store.sender_lease()
    assert stopped is not None and stopped.token == 1
    assert stopped.expires_at < first.expires_at  # let go on stopping, not left to expire
    machine_b = second_machine(world)
    supervisors = [serve(world, world.node_dir, "node-a"), serve(world, machine_b, "node-b")]
    world.node = supervisors[0]  # devices enroll through machine A
    try:
        devices = enrolled(world, 6)
        directories = [world.node_dir, machine_b]
        # Block, then unblock, each device through both machines in turn: every hold and its
        # release are queued while both machines' senders look at the queue.
        for i, (device, _) in enumerate(devices):
            cli("node", "block", "--dir", str(directories[i % 2]), device.device_id)
        for i, (device, _) in enumerate(devices):
            cli("node", "unblock", "--dir", str(directories[(i + 1) % 2]), device.device_id)
        assert wait_until(lambda: all_sent(store), timeout=WAIT), store.revocations()
        for _, serial in devices:
            assert ca_log_lines(world, serial) == ["revoked", "released"], serial
        done = store.revocations()
        assert len(done) == 12 and {q.status for q in done} == {QueueStatus.DONE}
        lease = store.sender_lease()
        assert lease is not None and lease.token == 2  # one holder throughout

        # The holder's machine dies with orders still queued: its sending worker is stopped
        # first, so the orders stay for the survivor, then its supervisor is killed (-9).
        holder = holder_supervisor(lease, supervisors)
        survivor = supervisors[1 - supervisors.index(holder)]
        os.kill(holder_pid(lease), signal.SIGSTOP)
        survivor_dir = directories[supervisors.index(survivor)]
        remaining = devices[:2]
        for device, _ in remaining:
            cli("node", "block", "--dir", str(survivor_dir), device.device_id)
        holder.kill()  # its workers die with it, the stopped one too
        assert wait_until(lambda: all_sent(store), timeout=WAIT), store.revocations()
        for _, serial in remaining:
            assert ca_log_lines(world, serial) == ["revoked", "released", "revoked"], serial
        taken = store.sender_lease()
        assert taken is not None and taken.token == 3 and taken.holder != lease.holder
        assert holder_supervisor(taken, [survivor]) is survivor
        assert "revocation sender lease taken (token 3)" in survivor.log()
        # Either machine's `node policy` names the one sender.
        for directory in directories:
            policy = " ".join(cli("node", "policy", "--dir", str(directory)).split())
            assert f"revocation sender: {taken.holder} (lease token 3, until " in policy
    finally:
        store.close()
