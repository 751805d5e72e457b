"""Fleet benchmark: customize N devices at once against a real node, and compare with a floor.

    PYTHONPATH=src .venv/bin/python benchmarks/fleet.py --devices 1000
    .venv/bin/python benchmarks/fleet.py --database postgresql --workers 2

It builds everything itself with the real CLI (factory and customer CA systems, node,
2 x N devices manufactured by the factory and listed by a signed manifest), then for each
key mode customizes N devices concurrently with the real activating client: one aiohttp
session and a new TLS connection per device identity (the temporary one for cacerts +
enrollment, the new one for the confirmation). It prints enrollments per second,
p50/p95/p99 latency, and the CPU the server processes (node + customer CA system,
including their child processes, read from /proc) spent per customization.

``--database postgresql`` also starts a PostgreSQL cluster of its own (fsync on, as an
operator runs it; reached over its Unix socket, or over TCP with ``--pg-tcp``) and a
second customer CA system and node keeping their records there (the node with
``--workers N``), and customizes as many devices again against them: the SQLite
single-worker figure and the PostgreSQL figure come from the same run, and their ratio is
printed. The PostgreSQL server's processes count as server CPU. Per customization it also
prints the node's database round trips and commits (its /metrics) and PostgreSQL's own count
of committed transactions (pg_stat_database) for the node and the CA system.

The floor is measured in the same run:

* the CPU ``openssl s_server -Verify 1 -rev`` spends per mutual-TLS handshake with the
  node's server certificate and the devices' temporary certificates (at least 1,000
  handshakes from Python ``ssl``, a new connection each, one echoed line; ``-www`` costs
  about 0.15 ms more per connection for its status page), and
* the signature operations of one enrollment, timed in-process with ``cryptography``:
  CSR signature verification + certificate signing (+ key generation for serverkeygen).

A customization makes two handshakes (temporary identity, then the new identity), so the
floor counts two; the ratio against a single handshake is printed as well.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from customization import customize, percentile, tree_cpu  # noqa: E402
from fleet_database import (  # noqa: E402
    Configuration,
    Scraper,
    add_postgres_configuration,
    difference,
    enable_statements,
    node_knows_workers,
    per,
    postgres_processes,
    postgres_statistics,
    postgres_version,
    start_postgres,
    top_statements,
)
from fleet_report import ModeResult, report  # noqa: E402
from tests.e2e.device_fixtures import ENV, World, build_world  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402

from ztpki.device import DeviceMemory, KeyMode  # noqa: E402
from ztpki.device.cmp_activation import EnrollmentProtocol  # noqa: E402
from ztpki.device.communication import NodeAddress, node_context  # noqa: E402

STATISTICS_DELAY = 11.0


# --- customizing the fleet ---------------------------------------------------------------


def run_mode(
    world: World,
    configuration: Configuration,
    scraper: Scraper,
    device_ids: Sequence[str],
    mode: KeyMode,
    concurrency: int,
    protocol: EnrollmentProtocol = EnrollmentProtocol.EST,
) -> ModeResult:
    memories = [DeviceMemory.open(world.device(d)) for d in device_ids]
    servers = configuration.server_pids(world)
    node = world.services[configuration.node].address
    database_before = scraper.database(node)
    postgres_before = postgres_statistics(configuration)
    processes = postgres_processes(configuration.cluster) if configuration.cluster else {}
    before = tree_cpu(servers.values())
    client_before = time.process_time()
    started = time.perf_counter()
    latencies, failures = asyncio.run(
        customize(
            memories, NodeAddress.parse(f"https://{node}"), mode, concurrency, protocol=protocol
        )
    )
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    after = tree_cpu(servers.values())
    if configuration.cluster is not None:
        if configuration.cluster.statements:  # profiling: where PostgreSQL's CPU went
            later = postgres_processes(configuration.cluster)
            for kind, used in sorted(later.items(), key=lambda item: -item[1]):
                spent = (used - processes.get(kind, 0.0)) / max(1, len(device_ids)) * 1000
                print(f"  postgres CPU {spent:6.3f} ms per customization: {kind}")
        # An idle backend publishes its transaction counts within 10 s (PostgreSQL 15).
        time.sleep(STATISTICS_DELAY)
    postgres = difference(postgres_statistics(configuration), postgres_before)
    database = {k: v - database_before.get(k, 0) for k, v in scraper.database(node).items()}
    for failure in failures[:5]:
        print(f"  failed: {failure}", file=sys.stderr)
    done = max(1, len(latencies))
    used = {name: after[pid] - before[pid] for name, pid in servers.items()}
    ms = 1000.0
    return ModeResult(
        mode=mode.value,
        configuration=configuration.label + (", CMP" if protocol is EnrollmentProtocol.CMP else ""),
        devices=len(device_ids),
        failed=len(failures),
        seconds=seconds,
        per_second=len(latencies) / seconds,
        p50_ms=percentile(latencies, 0.50) * ms,
        p95_ms=percentile(latencies, 0.95) * ms,
        p99_ms=percentile(latencies, 0.99) * ms,
        server_cpu_ms=sum(used.values()) / done * ms,
        node_cpu_ms=used["node"] / done * ms,
        ca_cpu_ms=used["ca"] / done * ms,
        client_cpu_ms=client_cpu / done * ms,
        postgres_cpu_ms=used.get("postgres", 0.0) / done * ms,
        # The scrape after the run counts its own read (the device counts): a few round trips.
        node_round_trips=per(database, ["round_trips"], done),
        node_commits=per(database, ["commits_write"], done),
        node_read_commits=per(database, ["commits_read"], done),
        postgres={
            role: {key: value / done for key, value in figures.items()}
            for role, figures in postgres.items()
        },
    )


# --- the floor -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_accept(process: subprocess.Popen[str]) -> None:
    """Return once s_server prints ACCEPT; then keep draining its output in a thread."""
    assert process.stdout is not None
    stdout = process.stdout
    for line in stdout:
        if "ACCEPT" in line:
            threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
            return
    raise RuntimeError("openssl s_server did not start")


async def _handshakes(
    contexts: Sequence[ssl.SSLContext], port: int, concurrency: int, *, rev: bool
) -> int:
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(context: ssl.SSLContext) -> None:
        nonlocal done
        async with gate:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
            )
            if rev:  # -rev: one line echoed back reversed
                writer.write(b"ztpki\n")
                await writer.drain()
                ok = (await reader.readline()).strip() == b"ikptz"
            else:  # -www: a status page, then the server closes
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                await writer.drain()
                ok = (await reader.read()).startswith(b"HTTP/1.0 200")
            writer.close()
            done += ok

    await asyncio.gather(*(one(c) for c in contexts))
    return done


def handshake_floor(
    world: World, device_ids: Sequence[str], *, handshakes: int, mode: str = "-rev"
) -> float:
    """CPU seconds openssl s_server spends per mutual-TLS handshake (temporary identities).

    ``handshakes`` connections, cycling through the devices' identities; a few hundred at
    least, since /proc counts CPU in clock ticks (10 ms).
    """
    contexts = []
    for device_id in device_ids:
        memory = DeviceMemory.open(world.device(device_id))
        identity = memory.identity()
        assert identity.certificate is not None
        chain = [identity.certificate, *identity.ca_certificates[:-1]]
        contexts.append(
            node_context(key=identity.private_key, chain=chain, anchors=memory.trust_anchors())
        )
    cert = world.path("node-cert", "cert.pem")
    port = _free_port()
    server = subprocess.Popen(
        [
            "openssl", "s_server", "-accept", f"127.0.0.1:{port}", mode, "-Verify", "1",
            "-cert", str(cert), "-cert_chain", str(cert),
            "-key", str(world.path("node-cert", "key.pem")), "-pass", "env:ZTPKI_NODE_PASSPHRASE",
            "-CAfile", str(world.path("factory-trust.pem")), "-verify_quiet",
            # Like the node: no TLS 1.3 session tickets (devices never resume).
            "-num_tickets", "0",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, **ENV},
    )  # fmt: skip
    try:
        _wait_for_accept(server)
        before = tree_cpu([server.pid])[server.pid]
        contexts = [contexts[i % len(contexts)] for i in range(handshakes)]
        done = asyncio.run(_handshakes(contexts, port, concurrency=8, rev=mode == "-rev"))
        used = tree_cpu([server.pid])[server.pid] - before
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    if done != len(contexts):
        raise RuntimeError(f"only {done} of {len(contexts)} handshakes with s_server succeeded")
    return used / done


def _timed(operation: Callable[[], object], rounds: int) -> float:
    started = time.process_time()
    for _ in range(rounds):
        operation()
    return (time.process_time() - started) / rounds


def signature_floor(rounds: int = 300) -> dict[str, float]:
    """CPU seconds of one enrollment's own cryptography, P-256 as the node's CAs use."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    device_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DEV-000001")])
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(name).sign(device_key, hashes.SHA256())
    )
    now = datetime.now(UTC)

    def sign() -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(device_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=365))
            .sign(ca_key, hashes.SHA256())
        )

    return {
        "csr_verify": _timed(lambda: csr.is_signature_valid, rounds),
        "cert_sign": _timed(sign, rounds),
        "keygen": _timed(lambda: ec.generate_private_key(ec.SECP256R1()), rounds),
    }


# CMP customization (ir + certConf) may cost at most this much of EST's server CPU (issue 17).
CMP_CPU_BOUND = 1.2


def protocol_ratios(results: Sequence[ModeResult]) -> None:
    """Server CPU of CMP over EST, per key mode and database, when both ran."""
    est = {(r.mode, r.configuration): r for r in results}
    lines = []
    for r in results:
        if not r.configuration.endswith(", CMP"):
            continue
        base = est.get((r.mode, r.configuration.removesuffix(", CMP")))
        if base is None or not base.server_cpu_ms:
            continue
        ratio = r.server_cpu_ms / base.server_cpu_ms
        verdict = "within" if ratio <= CMP_CPU_BOUND else "OVER"
        lines.append(
            f"  {r.mode:<13} {base.configuration:<22} CMP {r.server_cpu_ms:.2f} ms / EST "
            f"{base.server_cpu_ms:.2f} ms = {ratio:.2f} ({verdict} the {CMP_CPU_BOUND} bound; "
            f"node {r.node_cpu_ms:.2f} / {base.node_cpu_ms:.2f}, "
            f"CA {r.ca_cpu_ms:.2f} / {base.ca_cpu_ms:.2f})"
        )
    if lines:
        print()
        print("CMP against EST, server CPU per customization (same run)")
        print("\n".join(lines))


# --- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="devices per key mode")
    parser.add_argument("--concurrency", type=int, default=64, help="customizations in flight")
    parser.add_argument("--modes", default="simpleenroll,serverkeygen")
    parser.add_argument(
        "--protocol",
        default="est",
        help="est, cmp or est,cmp: the activating client's protocol (CMP: an ir + certConf, "
        "central key generation for serverkeygen); with both, the CMP/EST server CPU ratio",
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="postgresql: also measure a node and CA system on PostgreSQL, against SQLite",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="node workers of the PostgreSQL configuration"
    )
    parser.add_argument(
        "--pg-statements",
        action="store_true",
        help="load pg_stat_statements and print what PostgreSQL ran most (costs it some CPU)",
    )
    parser.add_argument(
        "--pg-tcp",
        action="store_true",
        help="reach PostgreSQL over TCP on 127.0.0.1 instead of its Unix socket",
    )
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if not shutil.which("openssl"):
        parser.error("openssl is needed for the floor measurement")
    modes = [KeyMode(m.strip()) for m in args.modes.split(",") if m.strip()]
    protocols = [EnrollmentProtocol(p.strip()) for p in args.protocol.split(",") if p.strip()]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ztpki-fleet-"))
    workdir.mkdir(parents=True, exist_ok=True)
    setups = 2 if args.database == "postgresql" else 1
    # One more device, never customized: its identity reads the nodes' /metrics.
    count = args.devices * len(modes) * len(protocols) * setups + 1
    print(f"building the world in {workdir}: {count} devices ...", flush=True)
    started = time.perf_counter()
    world = build_world(workdir, devices=count)
    cluster: PostgresCluster | None = None
    results: list[ModeResult] = []
    try:
        print(f"  ready in {time.perf_counter() - started:.1f} s; node at {world.node_url}")
        configurations = [Configuration("sqlite, 1 worker", "sqlite", "N", "C", 1)]
        if args.database == "postgresql":
            workers = args.workers
            if workers > 1 and not node_knows_workers():
                print(f"NOTE: this tree's `node serve` has no --workers: the PostgreSQL figure "
                      f"is for ONE worker, not {workers}")  # fmt: skip
                workers = 1
            cluster = start_postgres(statements=args.pg_statements, socket=not args.pg_tcp)
            print(f"PostgreSQL: {postgres_version(cluster)}, its own cluster in {cluster.base}, "
                  "fsync and full_page_writes on, synchronous_commit on (durable, as an "
                  "operator runs it), reached over "
                  f"{'TCP' if args.pg_tcp else 'its Unix socket'}; its processes count as "
                  "server CPU")  # fmt: skip
            configurations.append(add_postgres_configuration(world, cluster, workers=workers))
            enable_statements(configurations[-1])
        ids = world.device_ids
        scraper = Scraper(world, ids[-1])
        print("measuring the floor (openssl s_server, cryptography) ...", flush=True)
        handshake = handshake_floor(world, ids[: args.devices], handshakes=max(args.devices, 1000))
        signatures = signature_floor()
        batches = iter(range(len(modes) * len(configurations) * len(protocols)))
        for mode in modes:
            for configuration in configurations:
                # EST and CMP batches one after the other, under the same load.
                for protocol in protocols:
                    index = next(batches)
                    batch = ids[index * args.devices : (index + 1) * args.devices]
                    print(f"customizing {len(batch)} devices with {mode.value} over "
                          f"{protocol.value.upper()} ({configuration.label}) ...",
                          flush=True)  # fmt: skip
                    results.append(
                        run_mode(
                            world, configuration, scraper, batch, mode, args.concurrency, protocol
                        )
                    )
        report(results, handshake, signatures, args)
        protocol_ratios(results)
        for configuration in configurations:
            for query, calls, total in top_statements(configuration):
                print(f"  {calls:>8} calls {total:>9.1f} ms  {query[:150]}")
    finally:
        world.stop()
        if cluster is not None:
            cluster.destroy()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if results and all(r.failed == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
