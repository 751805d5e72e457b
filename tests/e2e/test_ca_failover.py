"""Several `ztpki ca serve` instances on one CA directory (one store: a SQLite file, or a
PostgreSQL database), and a node that fails over between them: real processes over real TLS,
instances killed with SIGKILL.

What must hold: every device customizes; exactly one live certificate per device in the CA
store, the one the register names; no serial twice; a request sent again (to any instance)
is answered with the certificate recorded for it, never a second one, even when the
instance that recorded it died before answering; a revocation made through one instance
shows at the others' OCSP and CRL at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from node_fixtures import (
    CLIENT_PASSPHRASE,
    ENV,
    Device,
    NodeWorld,
    Response,
    build_world,
    cli,
    ztpki,
)
from tests.support.ocsp import exchange, http_address, post_ocsp, request_der
from tests.support.services import Service, start

from ztpki.casystem.client import CAClient
from ztpki.casystem.failover import BACKOFF_FIRST
from ztpki.credentials import Credential
from ztpki.errors import MalformedInput, NotAuthorized
from ztpki.pki.keys import KeySpec, decode_pkcs8, generate_private_key, keys_match
from ztpki.pki.pem import load_certificate_der, load_certificates_pem, serial_hex
from ztpki.protocol.enrollment import EnrollmentParameters, EnrollmentRequest
from ztpki.protocol.est import CSR_TYPE, decode_certs_only, decode_serverkeygen
from ztpki.protocol.revocation import RevocationRequest
from ztpki.store.records import RevocationReason

FLEET = 16
CONCURRENCY = 8


@dataclass
class Instances:
    world: NodeWorld
    a: Service  # the world's customer CA system
    b: Service  # a second instance on the same directory, with the HTTP publisher
    b_http: tuple[str, int]

    def credential(self) -> Credential:
        return Credential.load(self.world.root / "cred-node", passphrase=CLIENT_PASSPHRASE.encode())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def instances(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instances]:
    """The world, its customer CA system's store on either engine, and instance B."""
    world = build_world(tmp_path_factory.mktemp("ca-failover"), backend=request.param)
    try:
        b = start_instance(world, "--http-listen", "127.0.0.1:0")
        yield Instances(world, world.customer, b, http_address(b))
    finally:
        world.stop()


def start_instance(world: NodeWorld, *extra: str, env: dict[str, str] | None = None) -> Service:
    """One more `ztpki ca serve` on the customer CA directory (its store shared)."""
    service = start(
        [
            "ca", "serve", "--dir", str(world.customer_dir), "--listen", "127.0.0.1:0",
            "--key-workers", "1", *extra,
        ],
        log_path=world.root / f"instance-{os.urandom(3).hex()}.log",
        env={**ENV, **(env or {})},
    )  # fmt: skip
    world.services.append(service)
    return service


def point_node(world: NodeWorld, *addresses: str) -> None:
    """`node set-ca-system` with these addresses in order, and the node restarted."""
    world.node.stop()
    cli("node", "set-ca-system", "--dir", str(world.node_dir),
        *(arg for address in addresses for arg in ("--ca", address)))  # fmt: skip
    world.node = start(
        ["node", "serve", "--dir", str(world.node_dir), "--listen", "127.0.0.1:0"],
        log_path=world.root / f"node-{os.urandom(3).hex()}.log",
        env=ENV,
    )
    world.services.append(world.node)


def all_issued(world: NodeWorld) -> list[dict[str, Any]]:
    """Every record of the customer CA store (`ztpki ca issued --json`, its own process)."""
    result = ztpki("ca", "issued", "--dir", str(world.customer_dir), "--json")
    records: list[dict[str, Any]] = json.loads(result.stdout)
    return records


def dead_addresses(count: int) -> list[str]:
    """Loopback ports nothing listens on (bound, then closed), all different."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{probe.getsockname()[1]}" for probe in probes]
    finally:
        for probe in probes:
            probe.close()


# ------------------------------------------------------------------------ the CA systems


@pytest.mark.parametrize(
    "key", [KeySpec.EC_P256, KeySpec.RSA_2048], ids=["ok-ec", "ok-rsa-looked-up-first"]
)
def test_ok_retried_request_id_returns_the_same_certificate(
    instances: Instances, key: KeySpec
) -> None:
    """The same request to A, then to B: one certificate, one key, one record. (An RSA
    request is looked up before its key is generated; the others meet their record.)"""
    device = f"retry-{os.getpid()}-{secrets.token_hex(3)}"
    passphrase = secrets.token_urlsafe(24).encode()
    request = EnrollmentRequest(
        request_id=f"node-{secrets.token_hex(12)}",
        device_id=device,
        ca="operational",
        parameters=EnrollmentParameters(key_algorithm=key, encrypt_private_key=passphrase),
    )

    async def send(address: str, what: EnrollmentRequest) -> Any:
        host, _, port = address.rpartition(":")
        client = CAClient((host, int(port)), instances.credential(), pool_size=1)
        try:
            return await client.enroll(what)
        finally:
            await client.close()

    first = asyncio.run(send(instances.a.address, request))
    again = asyncio.run(send(instances.b.address, request))
    assert again.certificate_der == first.certificate_der
    assert again.private_key_der == first.private_key_der and again.private_key_encrypted
    key = decode_pkcs8(again.private_key_der, passphrase=passphrase)
    assert keys_match(key, load_certificate_der(again.certificate_der).public_key())
    [record] = [r for r in all_issued(instances.world) if r["device_id"] == device]
    assert record["status"] == "active"
    assert record["serial"] == serial_hex(load_certificate_der(first.certificate_der))
    assert f"answered again serial={record['serial']}" in instances.b.log()
    # Negative controls: the id reused for another request is refused; another id for the
    # same device is the second request it is (refused: the device holds a live one).
    with pytest.raises(MalformedInput, match="used for another request"):
        asyncio.run(send(instances.b.address, replace(request, device_id=f"{device}-x")))
    with pytest.raises(NotAuthorized, match="already holds"):
        asyncio.run(send(instances.a.address, replace(request, request_id="node-other")))
    assert [
        r["serial"] for r in all_issued(instances.world) if r["device_id"].startswith(device)
    ] == [record["serial"]]


def test_ok_revocation_through_one_instance_shows_at_the_other(instances: Instances) -> None:
    """Revoked through A; B's OCSP (which had answered "good" for it) and B's CRL say so at
    once: OCSP reads the store's revocation version on every request, and the CRL file of
    the shared CA directory is the one A just published."""
    world = instances.world
    (device,) = world.make_devices(1)
    answer = world.post_csr(device, "simpleenroll", device.csr())
    assert answer.status == 200, answer.text
    (leaf,) = decode_certs_only(answer.body)
    issuer = load_certificates_pem(
        (world.customer_dir / "cas" / "operational" / "ca.pem").read_bytes()
    )[0]
    query = request_der(leaf, issuer)
    before = post_ocsp(instances.b_http, query).ocsp()
    assert before.certificate_status is ocsp.OCSPCertStatus.GOOD  # and now cached at B

    async def revoke() -> None:
        host, _, port = instances.a.address.rpartition(":")
        client = CAClient((host, int(port)), instances.credential(), pool_size=1)
        try:
            await client.revoke(
                RevocationRequest(
                    request_id=f"rv-{secrets.token_hex(6)}",
                    ca="operational",
                    serial=serial_hex(leaf),
                    device_id=None,
                    reason=RevocationReason.KEY_COMPROMISE,
                )
            )
        finally:
            await client.close()

    asyncio.run(revoke())
    after = post_ocsp(instances.b_http, query).ocsp()
    assert after.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert after.revocation_reason is x509.ReasonFlags.key_compromise
    crl = x509.load_der_x509_crl(exchange(instances.b_http, "GET", "/crl/operational.crl").body)
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None


# ------------------------------------------------------------------------ the node


async def customize(
    world: NodeWorld, devices: list[Device], *, on_answer: Any = None
) -> dict[str, x509.Certificate]:
    """Each device enrolls (simpleenroll or serverkeygen, alternately), retrying what is
    retryable (503), then confirms with its new certificate; returns the certificates."""
    gate = asyncio.Semaphore(CONCURRENCY)
    got: dict[str, x509.Certificate] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(device: Device, operation: str, body: bytes) -> Response:
            async with session.post(
                world.url(operation),
                data=body,
                headers={"Content-Type": CSR_TYPE},
                ssl=world.device_context(device),
            ) as r:
                return Response(r.status, dict(r.headers), await r.read())

        async def one(index: int, device: Device) -> None:
            async with gate:
                new_key = generate_private_key(KeySpec.EC_P256)
                operation = "simpleenroll" if index % 2 == 0 else "serverkeygen"
                for _ in range(5):
                    answer = await post(device, operation, device.csr(new_key))
                    if answer.status != 503:
                        break
                assert answer.status == 200, (device.device_id, answer.status, answer.text)
                if operation == "simpleenroll":
                    (cert,) = decode_certs_only(answer.body)
                else:
                    parts = decode_serverkeygen(answer.headers["Content-Type"], answer.body)
                    cert = parts.certificates[0]
                    new_key = decode_pkcs8(parts.private_key_der, passphrase=None)
                assert keys_match(new_key, cert.public_key())
                got[device.device_id] = cert
                if on_answer is not None:
                    on_answer(len(got))
                async with session.get(
                    world.url("csrattrs"), ssl=world.context(cert, new_key)
                ) as confirmed:
                    assert confirmed.status == 200, await confirmed.text()

        await asyncio.gather(*(one(i, d) for i, d in enumerate(devices)))
    return got


def check_one_live_each(world: NodeWorld, got: dict[str, x509.Certificate]) -> None:
    records = all_issued(world)
    keys = Counter((r["ca"], r["serial"]) for r in records)
    assert max(keys.values()) == 1, "a serial recorded twice"
    register = world.register()
    for device_id, cert in got.items():
        live = [r for r in records if r["device_id"] == device_id and r["status"] == "active"]
        assert [r["serial"] for r in live] == [serial_hex(cert)], (device_id, live)
        assert register[device_id]["state"] == "customized"
        assert register[device_id]["serial"] == serial_hex(cert)


def test_ok_instance_dying_after_its_record_is_answered_by_the_next(
    instances: Instances,
) -> None:
    """C records every certificate durably, then dies before answering (SIGKILL at the
    fault point). The node fails over to B with the same request id; B answers with the
    certificate C recorded (and, for serverkeygen, C's key, kept encrypted for the node)."""
    world = instances.world
    dying = start_instance(world, env={"ZTPKI_CA_FAULT": "after-issuance-record"})
    point_node(world, dying.address, instances.b.address)
    devices = world.make_devices(2)
    got = asyncio.run(customize(world, devices))
    assert dying.process.wait(timeout=30) == -signal.SIGKILL  # it did die at the fault
    check_one_live_each(world, got)
    # Nothing but the delivered certificates was recorded for these devices (no second one
    # superseding a first): each was recorded by C, which died before answering and B then
    # answered it again, or (a request C died before recording) issued by B.
    records = [r for r in all_issued(world) if r["device_id"] in got]
    assert sorted(r["serial"] for r in records) == sorted(serial_hex(c) for c in got.values())
    again = 0
    for cert in got.values():
        serial = serial_hex(cert)
        answered_again = f"answered again serial={serial} " in instances.b.log()
        issued_by_b = f"issued serial={serial} " in instances.b.log()
        assert answered_again != issued_by_b, serial
        again += answered_again
    assert again >= 1, "no request recorded by the dying instance was answered again"


def test_ok_hung_instance_is_failed_over_then_preferred_again(instances: Instances) -> None:
    """H serves a device, then hangs (SIGSTOP): the node's next request gets no answer (on a
    kept-alive connection) or no handshake (on a new one, from another node worker). After
    that timeout the node asks B with the same request id; B
    issues. H, woken up, is the node's first choice again once its back-off has passed, and
    the request it held issued nothing."""
    world = instances.world
    hung = start_instance(world)
    point_node(world, hung.address, instances.b.address)
    first, second, third = world.make_devices(3)
    got = asyncio.run(customize(world, [first]))
    assert f"issued serial={serial_hex(got[first.device_id])}" in hung.log()
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        got.update(asyncio.run(customize(world, [second])))
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    assert f"issued serial={serial_hex(got[second.device_id])}" in instances.b.log()
    # (No answer on a kept-alive connection, or no handshake on a new one: either way the
    # node gave up on H after its timeout and said so.)
    assert f"CA system {hung.address} unavailable" in world.node.log()
    failed_over_at = time.monotonic()
    # Once its back-off has passed, H is asked first again, and serves. (Waiting out the
    # node's own timer: it is the behaviour under test, not a stand-in for a signal.)
    time.sleep(max(0.0, failed_over_at + BACKOFF_FIRST + 0.5 - time.monotonic()))
    got.update(asyncio.run(customize(world, [third])))
    assert f"issued serial={serial_hex(got[third.device_id])}" in hung.log()
    assert f"device={second.device_id}" not in hung.log()  # the held request issued nothing
    check_one_live_each(world, got)


def test_ok_fleet_survives_kill_9_of_one_instance(instances: Instances) -> None:
    """A fleet customizes through [A2, B]; A2 is killed with SIGKILL mid-fleet."""
    world = instances.world
    a2 = start_instance(world)
    point_node(world, a2.address, instances.b.address)
    devices = world.make_devices(FLEET)
    killed: list[int] = []

    def on_answer(count: int) -> None:
        if count == FLEET // 3 and not killed:
            os.kill(a2.pid, signal.SIGKILL)
            killed.append(count)

    got = asyncio.run(customize(world, devices, on_answer=on_answer))
    assert killed and a2.process.wait(timeout=30) == -signal.SIGKILL
    assert len(got) == FLEET
    check_one_live_each(world, got)
    assert "issued serial=" in a2.log()  # A2 did serve part of the fleet before it died


def test_fail_no_instance_reachable_is_503_and_changes_nothing(instances: Instances) -> None:
    world = instances.world
    point_node(world, *dead_addresses(2))
    (device,) = world.make_devices(1)
    answer = world.post_csr(device, "simpleenroll", device.csr())
    assert answer.status == 503 and answer.headers.get("Retry-After"), answer.text
    assert world.state(device.device_id) == "listed"
    assert not [r for r in all_issued(world) if r["device_id"] == device.device_id]
    # Control: with a live instance added, the same device is served.
    point_node(world, *dead_addresses(1), instances.b.address)
    again = world.post_csr(device, "simpleenroll", device.csr())
    assert again.status == 200, again.text
