"""`ztpki node serve --workers N`: a supervisor and N worker processes on one address.

The real deployment on loopback (factory CA system, customer CA system, node), with the node
started as a supervisor of two workers, over real TLS, with curl as the client where a
standard client does. Which worker takes a connection is the kernel's choice; to make one
worker serve, the tests stop (SIGSTOP) the others: a stopped process cannot accept, so the
running one takes every connection, and carries on once the others continue (SIGCONT).
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import socket
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from node_fixtures import (
    ENV,
    TEST_LIMITS,
    Device,
    NodeWorld,
    build_world,
    merge_settings,
)
from tests.attacks.attack_deployment import wait_until
from tests.support.rawtls import RawTLS
from tests.support.services import Service, child_pids, start
from tests.support.shell import sh

from ztpki.protocol.est import CSR_TYPE, decode_certs_only

WORKERS = 2
WAIT = 60.0
# Keep-alive and body timeouts far beyond what a test waits for a reload or a drain.
LIMITS = {**TEST_LIMITS, "keepalive_timeout": 120.0, "body_timeout": 120.0}
# csrattrs of label meters names the key its policy asks for: P-384, then P-256.
P384_OID = bytes.fromhex("06052b81040022")
P256_OID = bytes.fromhex("06082a8648ce3d030107")


def start_workers(world: NodeWorld) -> Service:
    """The node as a supervisor of WORKERS workers, with a Unix-socket proxy listener."""
    world.node = start(
        [
            "node",
            "serve",
            "--dir",
            str(world.node_dir),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            str(WORKERS),
            "--drain-timeout",
            "60",
            "--proxy-listen",
            f"unix:{proxy_socket(world)}",
        ],
        log_path=world.root / f"node-workers-{os.urandom(3).hex()}.log",
        env=ENV,
    )
    world.services.append(world.node)
    return world.node


def proxy_socket(world: NodeWorld) -> Path:
    return world.root / "proxy.sock"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    # A poll far beyond any wait here: a revocation sent at once was woken, not polled.
    built = build_world(
        tmp_path_factory.mktemp("workers"),
        limits=LIMITS,
        settings={"revocation": {"poll_seconds": 600.0}},
    )
    try:
        built.node.stop()
        start_workers(built)
        yield built
    finally:
        built.stop()


def worker_pids(supervisor: Service) -> set[int]:
    return child_pids(supervisor.pid)


def serving_workers(world: NodeWorld) -> set[int]:
    """Workers the supervisor logged as serving, and still its children."""
    logged = {int(p) for p in re.findall(r"worker \d+ \(pid (\d+)\) serving", world.node.log())}
    return logged & worker_pids(world.node)


def replaced(world: NodeWorld, gone: int) -> bool:
    """The worker gone has died and another serves in its place (one look at /proc, so that
    both hold at the same instant)."""
    serving = serving_workers(world)
    return gone not in serving and len(serving) == WORKERS


@contextmanager
def only(world: NodeWorld, pid: int) -> Iterator[None]:
    """Every other worker stopped: connections made meanwhile are this worker's."""
    others = worker_pids(world.node) - {pid}
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)


def curl_status(world: NodeWorld, path: str = "cacerts") -> str:
    """HTTP status of GET /.well-known/est/PATH with curl (no client certificate)."""
    result = sh(
        f"curl -sS --max-time 30 --cacert {world.factory_anchor} -o /dev/null "
        f"-w '%{{http_code}}' {world.est}/{path}",
        world.root,
        check=False,
    )
    return result.stdout if result.returncode == 0 else f"curl exit {result.returncode}"


def metric(text: str, series: str) -> int:
    match = re.search(rf"^{re.escape(series)} ([0-9.]+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def scrape(world: NodeWorld) -> str:
    result = sh(
        f"curl -sS --max-time 30 --cacert {world.factory_anchor} https://{world.node.address}"
        "/metrics",
        world.root,
    )
    return result.stdout


def csrattrs(connection: http.client.HTTPSConnection) -> bytes:
    connection.request("GET", "/.well-known/est/meters/csrattrs")
    answer = connection.getresponse()
    body = answer.read()
    assert answer.status == 200, body
    return base64.b64decode(body)


def meters_key_oid(world: NodeWorld) -> bytes:
    """The curve label meters asks for, as node.toml says now."""
    table = tomllib.loads((world.node_dir / "node.toml").read_text())
    return P256_OID if table["ca"]["meters"]["key_algorithm"] == "ec-p256" else P384_OID


def device_connection(world: NodeWorld, device: Device) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(
        world.node.host, world.node.port, context=world.device_context(device), timeout=30
    )


CACERTS = 'ztpki_node_requests_total{endpoint="cacerts",outcome="served"}'


def start_node(world: NodeWorld, *options: str) -> Service:
    """Another `node serve` on the same node directory, on a port of its own."""
    node = start(
        ["node", "serve", "--dir", str(world.node_dir), "--listen", "127.0.0.1:0", *options],
        log_path=world.root / f"node-{os.urandom(3).hex()}.log",
        env=ENV,
    )
    world.services.append(node)
    return node


# ------------------------------------------------------------------------------ tests
def test_ok_default_is_one_worker_per_core_and_workers_1_is_one_process(
    world: NodeWorld,
) -> None:
    cores = len(os.sched_getaffinity(0))
    default = start_node(world)
    try:
        assert len(child_pids(default.pid)) == (cores if cores > 1 else 0)
    finally:
        default.stop()
    single = start_node(world, "--workers", "1")
    assert not child_pids(single.pid)
    result = sh(
        f"curl -sS --max-time 30 --cacert {world.factory_anchor} -o /dev/null "
        f"-w '%{{http_code}}' https://{single.address}/.well-known/est/cacerts",
        world.root,
    )
    assert result.stdout == "200"
    os.kill(single.pid, signal.SIGHUP)
    assert wait_until(lambda: "SIGHUP (node): " in single.log(), timeout=WAIT), single.log()
    single.process.send_signal(signal.SIGTERM)
    assert single.process.wait(timeout=WAIT) == 0
    assert "node stopped accepting connections" in single.log()


def test_ok_every_worker_serves_on_the_one_address(world: NodeWorld) -> None:
    pids = worker_pids(world.node)
    assert len(pids) == WORKERS and world.node.pid not in pids
    assert serving_workers(world) == pids
    for pid in pids:
        with only(world, pid):
            assert curl_status(world) == "200"


def test_ok_unix_socket_proxy_listener_is_served_by_every_worker(world: NodeWorld) -> None:
    path = proxy_socket(world)
    assert oct(path.stat().st_mode & 0o777) == "0o660"
    for pid in worker_pids(world.node):
        with only(world, pid):
            result = sh(
                f"curl -sS --max-time 30 --unix-socket {path} -o /dev/null -w '%{{http_code}}' "
                "http://localhost/.well-known/est/cacerts",
                world.root,
            )
            assert result.stdout == "200"


def test_ok_one_scrape_adds_up_every_worker(world: NodeWorld) -> None:
    before = scrape(world)
    assert metric(before, "ztpki_node_workers") == WORKERS
    per_worker = 3
    for pid in worker_pids(world.node):
        with only(world, pid):
            for _ in range(per_worker):
                assert curl_status(world) == "200"
    after = scrape(world)
    # Whichever worker answered the scrape, it counts the requests the other one served.
    assert metric(after, CACERTS) == metric(before, CACERTS) + WORKERS * per_worker
    assert metric(after, "ztpki_node_workers") == WORKERS
    # The register's gauge is the register's, not added up once per worker.
    assert metric(after, 'ztpki_node_devices{state="listed"}') == len(
        [d for d in world.register().values() if d["state"] == "listed"]
    )


def test_ok_sighup_reloads_every_worker_and_keeps_open_connections(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    kept = device_connection(world, device)
    try:
        first = csrattrs(kept)
        assert P384_OID in first
        assert kept.sock is not None
        local = kept.sock.getsockname()
        merge_settings(world.node_dir, {"ca": {"meters": {"key_algorithm": "ec-p256"}}})
        merge_settings(world.node_dir, {"limits": {"max_headers": 40}})  # needs a restart
        os.kill(world.node.pid, signal.SIGHUP)
        assert wait_until(
            lambda: world.node.log().count("reloaded [ca.meters]") >= WORKERS + 1, timeout=WAIT
        ), world.node.log()
        # The open keep-alive connection survives and sees the new policy.
        second = csrattrs(kept)
        assert kept.sock is not None and kept.sock.getsockname() == local
        assert P256_OID in second and P384_OID not in second
    finally:
        kept.close()
    log = world.node.log()
    assert "[limits] changed in node.toml but cannot be reloaded" in log
    for pid in worker_pids(world.node):
        with only(world, pid):
            fresh = device_connection(world, device)
            try:
                assert P256_OID in csrattrs(fresh)
            finally:
                fresh.close()


def test_ok_killed_worker_is_replaced_while_the_others_serve(world: NodeWorld) -> None:
    pids = worker_pids(world.node)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    # At once, before any replacement: the other worker takes the connection.
    assert curl_status(world) == "200"
    assert wait_until(lambda: replaced(world, victim), timeout=WAIT), world.node.log()
    assert re.search(rf"\(pid {victim}\) killed by SIGKILL; starting another in", world.node.log())
    (replacement,) = worker_pids(world.node) - pids
    (device,) = world.make_devices(1)
    with only(world, replacement):
        assert curl_status(world) == "200"
        # Forked from the supervisor, with node.toml as the supervisor last (re)loaded it.
        fresh = device_connection(world, device)
        try:
            assert meters_key_oid(world) in csrattrs(fresh)
        finally:
            fresh.close()
    # Dying again at once: the next start waits twice as long (no tight restart loop).
    os.kill(replacement, signal.SIGKILL)
    assert wait_until(lambda: replaced(world, replacement), timeout=WAIT), world.node.log()
    assert re.search(
        rf"\(pid {replacement}\) killed by SIGKILL; starting another in 1.0 s "
        r"\(2 deaths in a row\)",
        world.node.log(),
    ), world.node.log()
    assert world.node.process.poll() is None


def test_ok_revocation_queued_by_any_worker_is_sent_at_once(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    first = world.post_csr(device, "serverkeygen", device.csr())
    assert first.status == 200, first.text
    sender = int(re.findall(r"worker 0 \(pid (\d+)\) serving", world.node.log())[-1])
    (other, *_) = worker_pids(world.node) - {sender}
    with only(world, other):
        # The answer was lost: serverkeygen again issues anew and supersedes the first.
        again = world.post_csr(device, "serverkeygen", device.csr())
        assert again.status == 200, again.text
    assert wait_until(
        lambda: (
            sorted(r["status"] for r in world.issued(device.device_id)) == ["active", "revoked"]
        ),
        timeout=WAIT,
    ), world.issued(device.device_id)
    assert "revoked" in [e["decision"] for e in world.audit(device.device_id)]


def test_ok_sigterm_drains_a_request_in_flight_and_refuses_new_connections(
    world: NodeWorld,
) -> None:
    (device,) = world.make_devices(1)
    csr = device.csr()
    host, port = world.node.host, world.node.port
    slow = RawTLS((host, port), world.device_context(device), timeout=60)
    try:
        slow.send(
            (
                f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: {CSR_TYPE}\r\nContent-Transfer-Encoding: base64\r\n"
                f"Content-Length: {len(csr)}\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
        )
        # 100 Continue: a worker is in the handler, waiting for the body.
        assert slow.tls.recv(64).startswith(b"HTTP/1.1 100 Continue")
        slow.send(csr[:20])
        os.kill(world.node.pid, signal.SIGTERM)
        assert wait_until(
            lambda: world.node.log().count("stopped accepting connections") == WORKERS,
            timeout=WAIT,
        ), world.node.log()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=10).close()
        assert curl_status(world) == "curl exit 7"  # curl: failed to connect
        slow.send(csr[20:])
        answer = b""
        while chunk := slow.tls.recv(65536):
            answer += chunk
    finally:
        slow.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    (certificate,) = decode_certs_only(body)
    assert device.device_id in certificate.subject.rfc4514_string()
    assert world.node.process.wait(timeout=WAIT) == 0
    assert world.state(device.device_id) == "issued"
    assert not proxy_socket(world).exists()
    start_workers(world)  # for any test after this one
