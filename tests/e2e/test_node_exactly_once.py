"""Exactly one live operational certificate per device: concurrency, lost answers, a CA
system that goes away, and the audit trail that records it all; on both store engines (the
customer CA system and the node on SQLite files, then on PostgreSQL)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from node_fixtures import Device, NodeWorld, Response, build_world, ztpki
from tests.attacks.attack_deployment import wait_until

from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import serial_hex
from ztpki.protocol.est import CSR_TYPE, decode_certs_only, decode_serverkeygen

CONCURRENCY = 50


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeWorld]:
    w = build_world(tmp_path_factory.mktemp("node-once"), backend=request.param)
    try:
        yield w
    finally:
        w.stop()


async def burst(
    world: NodeWorld,
    device: Device,
    operation: str,
    bodies: list[bytes],
    *,
    labels: list[str | None] | None = None,
) -> list[Response]:
    """All requests at once, each on its own TLS connection (under labels[i], if given)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    context = world.device_context(device)
    headers = {"Content-Type": CSR_TYPE}
    urls = [world.url(operation, label) for label in labels or [None] * len(bodies)]

    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str, body: bytes) -> Response:
            async with session.post(url, data=body, headers=headers, ssl=context) as r:
                return Response(r.status, dict(r.headers), await r.read())

        return await asyncio.gather(*(one(u, b) for u, b in zip(urls, bodies, strict=True)))


def only_live_serial(world: NodeWorld, device_id: str) -> str:
    active = world.active(device_id)
    assert len(active) == 1, f"{len(active)} live certificates for {device_id}"
    assert world.register()[device_id]["serial"] == active[0]["serial"]
    return str(active[0]["serial"])


def test_ok_concurrent_simpleenroll_same_key(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    csr = device.csr()
    answers = asyncio.run(burst(world, device, "simpleenroll", [csr] * CONCURRENCY))
    ok = [a for a in answers if a.status == 200]
    assert {a.status for a in answers} <= {200, 503}
    assert ok, "no request was served"
    assert all(a.headers.get("Retry-After") == "1" for a in answers if a.status == 503)
    live = only_live_serial(world, device.device_id)
    # Everyone who got an answer got the one live certificate.
    assert {serial_hex(decode_certs_only(a.body)[0]) for a in ok} == {live}
    assert len(world.issued(device.device_id)) == 1


def test_ok_concurrent_serverkeygen(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answers = asyncio.run(burst(world, device, "serverkeygen", [device.csr()] * CONCURRENCY))
    assert {a.status for a in answers} <= {200, 503}
    ok = [a for a in answers if a.status == 200]
    assert ok
    live = only_live_serial(world, device.device_id)
    # Each 200 was a certificate issued in turn; all but the last were superseded.
    serials = [
        serial_hex(decode_serverkeygen(a.headers["Content-Type"], a.body).certificates[0])
        for a in ok
    ]
    assert live in serials and len(set(serials)) == len(serials)
    # Each superseded one is revoked by the running node soon after (it was never confirmed).
    assert wait_until(
        lambda: (
            sorted(r["status"] for r in world.issued(device.device_id))
            == ["active"] + ["revoked"] * (len(serials) - 1)
        ),
        timeout=60,
        interval=0.2,
    ), world.issued(device.device_id)


def test_ok_concurrent_requests_under_two_labels(world: NodeWorld) -> None:
    """Half the requests under label default, half under meters (another CA), all at once:
    one label wins, the other is refused, and one certificate is live at the customer CA."""
    (device,) = world.make_devices(1)
    csr = device.csr()
    labels: list[str | None] = [None, "meters"] * (CONCURRENCY // 2)
    answers = asyncio.run(burst(world, device, "simpleenroll", [csr] * len(labels), labels=labels))
    statuses = {(label, a.status) for label, a in zip(labels, answers, strict=True)}
    ok = [a for a in answers if a.status == 200]
    assert ok and {status for _, status in statuses} <= {200, 403, 503}, statuses
    winners = {label for label, status in statuses if status == 200}
    assert len(winners) == 1, statuses  # never both labels
    losers = {label for label, status in statuses if status == 403}
    assert not losers & winners, statuses
    live = only_live_serial(world, device.device_id)
    assert {serial_hex(decode_certs_only(a.body)[0]) for a in ok} == {live}
    assert len(world.issued(device.device_id)) == 1
    # The losing label stays closed after the burst too, until the device is customized.
    loser = "meters" if winners == {None} else None
    retry = world.post_csr(device, "simpleenroll", device.csr(), label=loser)
    assert retry.status == 403 and "began its enrollment under EST label" in retry.text
    assert only_live_serial(world, device.device_id) == live
    refused = [e for e in world.audit(device.device_id) if e["decision"] == "refused"]
    assert refused and all("label" in e["reason"] for e in refused), refused


def drop_answer(world: NodeWorld, device: Device, operation: str, body: bytes) -> None:
    """Send a request and hang up without reading the answer, once the node has issued."""
    request = (
        f"POST /.well-known/est/{operation} HTTP/1.1\r\nHost: {world.node.address}\r\n"
        f"Content-Type: {CSR_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    raw = socket.create_connection((world.node.host, world.node.port), timeout=10)
    with world.device_context(device).wrap_socket(raw, server_hostname=world.node.host) as tls:
        tls.sendall(request)
        deadline = time.monotonic() + 20
        while world.state(device.device_id) != "issued":
            assert time.monotonic() < deadline, "the node never issued"
            time.sleep(0.02)


def test_ok_lost_answer_simpleenroll_is_redelivered(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    csr = device.csr()
    drop_answer(world, device, "simpleenroll", csr)
    first = only_live_serial(world, device.device_id)
    retry = world.post_csr(device, "simpleenroll", csr)
    assert retry.status == 200
    assert serial_hex(decode_certs_only(retry.body)[0]) == first
    assert only_live_serial(world, device.device_id) == first
    assert world.audit(device.device_id)[-1]["decision"] == "redelivered"


def test_ok_lost_answer_serverkeygen_is_issued_anew(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    drop_answer(world, device, "serverkeygen", device.csr())
    first = only_live_serial(world, device.device_id)
    retry = world.post_csr(device, "serverkeygen", device.csr())
    assert retry.status == 200
    second = serial_hex(
        decode_serverkeygen(retry.headers["Content-Type"], retry.body).certificates[0]
    )
    assert second != first
    assert only_live_serial(world, device.device_id) == second
    statuses = {r["serial"]: r["status"] for r in world.issued(device.device_id)}
    # The undelivered certificate was revoked (superseded) before the reissue replaced it.
    assert statuses == {first: "revoked", second: "active"}
    status = ztpki(
        "ca", "status", "--dir", str(world.customer_dir), "--name", "operational", "--serial", first
    )
    assert "superseded" in status.stdout


def test_ok_ca_system_down_then_back(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    csr = device.csr(generate_private_key(KeySpec.EC_P256))
    world.customer.stop()
    try:
        before = world.register()
        answer = world.post_csr(device, "simpleenroll", csr)
        assert answer.status == 503, answer.text
        assert int(answer.headers["Retry-After"]) >= 1
        assert world.register() == before
        assert world.audit(device.device_id)[-1]["decision"] == "deferred"
    finally:
        world.restart_customer()
    retry = world.post_csr(device, "simpleenroll", csr)
    assert retry.status == 200, retry.text
    assert world.state(device.device_id) == "issued"
    only_live_serial(world, device.device_id)


def test_ok_one_enrollment_latency(
    world: NodeWorld, record_property: pytest.RecordProperty
) -> None:
    (device,) = world.make_devices(1)
    csr = device.csr()
    context = world.device_context(device)
    started = time.perf_counter()
    answer = world.post_csr(device, "simpleenroll", csr, context=context)
    elapsed = time.perf_counter() - started
    assert answer.status == 200
    record_property("enrollment_seconds", round(elapsed, 4))
    print(f"one simpleenroll (new TLS connection, durable stores): {elapsed * 1000:.1f} ms")
    assert elapsed < 5


def test_ok_audit_chain_verifies_and_detects_an_edit(world: NodeWorld, tmp_path: Path) -> None:
    verified = ztpki("node", "audit", "--dir", str(world.node_dir), "--verify")
    assert "audit trail OK" in verified.stdout
    url_file = world.node_dir / "database.url"
    if url_file.exists():
        # An intruder with database access edits an entry in place, then puts it back.
        import psycopg

        with psycopg.connect(url_file.read_text().strip(), autocommit=True) as pg:
            (reason,) = pg.execute("SELECT reason FROM audit_entry WHERE seq = 3").fetchone()
            pg.execute("UPDATE audit_entry SET reason = 'nothing to see' WHERE seq = 3")
            tampered = ztpki("node", "audit", "--dir", str(world.node_dir), "--verify", check=False)
            pg.execute("UPDATE audit_entry SET reason = %s WHERE seq = 3", (reason,))
        assert tampered.returncode != 0
        assert "entry 3" in tampered.stderr
        verified = ztpki("node", "audit", "--dir", str(world.node_dir), "--verify")
        assert "audit trail OK" in verified.stdout
        return
    # A copy of the node's database (consistent, via the SQLite backup API) gets edited with
    # the sqlite3 command-line tool, as an intruder with file access would.
    copy = tmp_path / "node-copy"
    copy.mkdir()
    shutil.copy(world.node_dir / "node.toml", copy / "node.toml")
    with (
        sqlite3.connect(world.node_dir / "node.sqlite") as source,
        sqlite3.connect(copy / "node.sqlite") as target,
    ):
        source.backup(target)
    assert "audit trail OK" in ztpki("node", "audit", "--dir", str(copy), "--verify").stdout
    subprocess.run(
        [
            "sqlite3",
            str(copy / "node.sqlite"),
            "UPDATE audit_entry SET reason = 'nothing to see' WHERE seq = 3",
        ],
        check=True,
        timeout=30,
    )
    tampered = ztpki("node", "audit", "--dir", str(copy), "--verify", check=False)
    assert tampered.returncode != 0
    assert "entry 3" in tampered.stderr
