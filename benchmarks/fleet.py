"""Fleet benchmark: customize N devices at once against a real node, and compare with a floor.

    PYTHONPATH=src .venv/bin/python benchmarks/fleet.py --devices 1000

It builds everything itself with the real CLI (factory and customer CA systems, node,
2 x N devices manufactured by the factory and listed by a signed manifest), then for each
key mode customizes N devices concurrently with the real activating client: one aiohttp
session and a new TLS connection per device identity (the temporary one for cacerts +
enrollment, the new one for the confirmation). It prints enrollments per second,
p50/p95/p99 latency, and the CPU the server processes (node + customer CA system,
including their child processes, read from /proc) spent per customization.

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
import json
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
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from benchmarks.customization import ModeResult, run_mode, tree_cpu  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from tests.e2e.device_fixtures import ENV, World, build_world  # noqa: E402

from ztpki.device import DeviceMemory, KeyMode  # noqa: E402
from ztpki.device.communication import node_context  # noqa: E402

HANDSHAKES_PER_CUSTOMIZATION = 2


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


# --- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="devices per key mode")
    parser.add_argument("--concurrency", type=int, default=64, help="customizations in flight")
    parser.add_argument("--modes", default="simpleenroll,serverkeygen")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if not shutil.which("openssl"):
        parser.error("openssl is needed for the floor measurement")
    modes = [KeyMode(m.strip()) for m in args.modes.split(",") if m.strip()]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ztpki-fleet-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"building the world in {workdir}: {args.devices * len(modes)} devices ...", flush=True)
    started = time.perf_counter()
    world = build_world(workdir, devices=args.devices * len(modes))
    try:
        print(f"  ready in {time.perf_counter() - started:.1f} s; node at {world.node_url}")
        ids = world.device_ids
        print("measuring the floor (openssl s_server, cryptography) ...", flush=True)
        handshake = handshake_floor(world, ids[: args.devices], handshakes=max(args.devices, 1000))
        signatures = signature_floor()
        results = []
        for index, mode in enumerate(modes):
            batch = ids[index * args.devices : (index + 1) * args.devices]
            print(f"customizing {len(batch)} devices with {mode.value} ...", flush=True)
            results.append(run_mode(world, batch, mode, args.concurrency))
        report(results, handshake, signatures, args)
    finally:
        world.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r.failed == 0 for r in results) else 1


def report(
    results: Sequence[ModeResult],
    handshake: float,
    signatures: dict[str, float],
    args: argparse.Namespace,
) -> None:
    ms = 1000.0
    print()
    print(f"floor: s_server mutual-TLS handshake {handshake * ms:.3f} ms CPU; "
          f"CSR verify {signatures['csr_verify'] * ms:.3f} ms; "
          f"certificate sign {signatures['cert_sign'] * ms:.3f} ms; "
          f"P-256 key generation {signatures['keygen'] * ms:.3f} ms")  # fmt: skip
    header = (
        f"{'mode':<13} {'devices':>7} {'failed':>6} {'enroll/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'server CPU ms':>13} {'node':>7} {'CA':>7} {'floor ms':>8} "
        f"{'ratio':>6} {'ratio/1hs':>9}"
    )
    print(header)
    rows = []
    for r in results:
        sign_ops = signatures["csr_verify"] + signatures["cert_sign"]
        if r.mode == KeyMode.SERVERKEYGEN.value:
            sign_ops += signatures["keygen"]
        floor = HANDSHAKES_PER_CUSTOMIZATION * handshake + sign_ops
        single = handshake + sign_ops
        ratio = r.server_cpu_ms / (floor * ms)
        ratio_single = r.server_cpu_ms / (single * ms)
        print(
            f"{r.mode:<13} {r.devices:>7} {r.failed:>6} {r.per_second:>9.1f} {r.p50_ms:>8.1f} "
            f"{r.p95_ms:>8.1f} {r.p99_ms:>8.1f} {r.server_cpu_ms:>13.2f} {r.node_cpu_ms:>7.2f} "
            f"{r.ca_cpu_ms:>7.2f} {floor * ms:>8.2f} {ratio:>6.2f} {ratio_single:>9.2f}"
        )
        rows.append({**asdict(r), "floor_ms": floor * ms, "ratio": ratio,
                     "ratio_single_handshake": ratio_single})  # fmt: skip
    for r in results:
        print(f"{r.mode}: device-side CPU {r.client_cpu_ms:.2f} ms per customization "
              f"(this process: TLS client, device memory, verification)")  # fmt: skip
    print(
        f"(floor = {HANDSHAKES_PER_CUSTOMIZATION} handshakes + the enrollment's signature "
        "operations; ratio/1hs counts one handshake; target for simpleenroll: ratio <= 1.5)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "concurrency": args.concurrency,
                    "handshake_ms": handshake * ms,
                    "signatures_ms": {k: v * ms for k, v in signatures.items()},
                    "results": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    sys.exit(main())
