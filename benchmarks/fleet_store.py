"""The database work of one customization alone: what PostgreSQL costs over SQLite.

    PYTHONPATH=src .venv/bin/python benchmarks/fleet_store.py [--devices 2000] [--group 3]

``benchmarks/fleet.py`` measures whole customizations (TLS, HTTP, the CA system's signing),
where the machine's load moves every figure by tens of per cent between runs. This replays
only the store calls the node and the customer CA system make for one simpleenroll
customization, in the order they make them, with no network and no cryptography:

    node: get (csrattrs), get (simpleenroll), begin_issuance, complete_issuance (2-certificate
    chain, an audit entry), get (the operational identity's first request), confirm (an
    audit entry); CA system: record_issuances

on SQLite (the node's and the CA's files), and on PostgreSQL over its Unix socket and over
TCP. Writes run in groups of ``--group`` devices, as the node's register thread and the CA
system's recorder batch the calls of devices served at the same time. Per customization it
prints the CPU of this process (the stores, the driver) and of PostgreSQL's processes, the
round trips and commits, so the part of fleet.py's ratio that the database alone sets can
be read off: PostgreSQL's CPU here is server CPU that SQLite does not have at all.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from fleet_database import postgres_processes  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402

from ztpki.store.pg_db import PostgresDatabase  # noqa: E402
from ztpki.store.records import (  # noqa: E402
    AuditRecord,
    CertificateStatus,
    DeviceState,
    IssuedCertificate,
    ManifestRecord,
    NewDevice,
)
from ztpki.store.sqlite import open_ca_store, open_node_store  # noqa: E402
from ztpki.store.sqlite_ca import SQLiteIssuanceStore  # noqa: E402
from ztpki.store.sqlite_register import SQLiteNodeStore  # noqa: E402

NOW = datetime.now(UTC).replace(microsecond=0)
CHAIN = [b"\x30\x82" + bytes(500), b"\x30\x82" + bytes(480)]


def serial(device_id: str) -> str:
    return "5e" + device_id.removeprefix("DEV-")


def record(decision: str, device_id: str, serial: str | None = None) -> AuditRecord:
    return AuditRecord(at=NOW, endpoint="est/default/simpleenroll", decision=decision,
                       reason="benchmarks/fleet_store.py", device_id=device_id,
                       serial=serial)  # fmt: skip


def certificate(device_id: str, serial: str) -> IssuedCertificate:
    der = b"\x30\x82" + serial.encode() + bytes(400)
    return IssuedCertificate(
        serial=serial, ca_name="devices", device_id=device_id, subject=f"CN={device_id}",
        not_before=NOW, not_after=NOW + timedelta(days=365), status=CertificateStatus.ACTIVE,
        request_id=f"req-{serial}", fingerprint=hashlib.sha256(der).hexdigest(), issued_at=NOW,
        certificate_der=der, client="node",
    )  # fmt: skip


def customize(node: SQLiteNodeStore, ca: SQLiteIssuanceStore, ids: Sequence[str]) -> None:
    """The store calls of customizing ``ids`` (one group of devices served together)."""

    def grouped(store: SQLiteNodeStore, step: Callable[[str], object]) -> None:
        with store.group():
            for device_id in ids:
                step(device_id)

    for device_id in ids:
        node.get(device_id)
        node.get(device_id)
    grouped(node, lambda d: node.begin_issuance(
        d, allowed_from={DeviceState.LISTED}, token=f"t-{d}", label="default", now=NOW,
        lease_seconds=120))  # fmt: skip
    for result in ca.record_issuances([(certificate(d, serial(d)), False) for d in ids]):
        if isinstance(result, Exception):
            raise result
    grouped(node, lambda d: node.complete_issuance(
        d, token=f"t-{d}", new_state=DeviceState.ISSUED, serial=serial(d), spki="00" * 32,
        certificate_der=CHAIN[0], chain_der=CHAIN, now=NOW,
        audit=record("issued", d, serial(d))))  # fmt: skip
    for device_id in ids:
        node.get(device_id)
    grouped(node, lambda d: node.confirm(d, serial=serial(d), now=NOW,
                                         audit=record("confirmed", d, serial(d))))  # fmt: skip


def measure(label: str, node_at: str, ca_at: str, args: argparse.Namespace,
            cluster: PostgresCluster | None) -> dict[str, float]:  # fmt: skip
    ids = [f"DEV-{n:07d}" for n in range(args.devices)]
    node, ca = open_node_store(node_at, migrate=True), open_ca_store(ca_at, migrate=True)
    try:
        manifest = ManifestRecord(manufacturer="Acme", manifest_id="m-1", issued_at=NOW,
                                  signer="CN=x", device_count=len(ids),
                                  imported_at=NOW)  # fmt: skip
        node.import_devices((NewDevice(d, "ab" * 32, manufacturer="Acme") for d in ids),
                            manifest=manifest)  # fmt: skip
        warm = args.group * 10  # prepared statements, caches, the pools' connections
        for first in range(0, warm, args.group):
            customize(node, ca, ids[first : first + args.group])
        counted = ids[warm:]
        trips = node.database.counters.snapshot()
        ca_trips = ca.database.counters.snapshot()
        server = postgres_processes(cluster) if cluster else {}
        started = time.process_time()
        for first in range(0, len(counted), args.group):
            customize(node, ca, counted[first : first + args.group])
        client = time.process_time() - started
        later = postgres_processes(cluster) if cluster else {}
        spent = node.database.counters.snapshot()
        ca_spent = ca.database.counters.snapshot()
    finally:
        node.close()
        ca.close()
    done = len(counted)
    ms = 1000.0 / done
    pg = sum(later.values()) - sum(server.values())
    figures = {
        "client_ms": client * ms,
        "postgres_ms": pg * ms,
        "node_round_trips": (spent["round_trips"] - trips["round_trips"]) / done,
        "node_commits": (spent["commits_write"] - trips["commits_write"]) / done,
        "ca_round_trips": (ca_spent["round_trips"] - ca_trips["round_trips"]) / done,
    }
    print(f"{label:<22} {figures['client_ms']:>9.3f} {figures['postgres_ms']:>9.3f} "
          f"{figures['client_ms'] + figures['postgres_ms']:>9.3f} "
          f"{figures['node_round_trips']:>8.1f} {figures['node_commits']:>8.2f} "
          f"{figures['ca_round_trips']:>8.1f}", flush=True)  # fmt: skip
    return figures


def floor(cluster: PostgresCluster, rounds: int = 2000) -> None:
    """The least a statement can cost through the stores' database layer: a one-statement
    read of one row (one round trip), and a write transaction of one UPDATE (BEGIN and the
    write lock, the UPDATE, a durable COMMIT: three round trips)."""
    db = PostgresDatabase(cluster.fresh_database("store_floor"))
    try:
        with db.write() as conn:
            conn.execute("CREATE TABLE item (name TEXT PRIMARY KEY, n BIGINT NOT NULL)")
            conn.execute("INSERT INTO item (name, n) VALUES ('a', 0)")

        def read() -> None:
            with db.read(single=True) as conn:
                conn.execute("SELECT n FROM item WHERE name = ?", ("a",)).fetchone()

        def write() -> None:
            with db.write() as conn:
                conn.execute("UPDATE item SET n = n + 1 WHERE name = ?", ("a",))

        for name, operation in (("one-row read", read), ("one-UPDATE write", write)):
            for _ in range(50):
                operation()  # prepared statements, the pool's connection
            server = sum(postgres_processes(cluster).values())
            started = time.process_time()
            for _ in range(rounds):
                operation()
            client = (time.process_time() - started) / rounds * 1e6
            pg = (sum(postgres_processes(cluster).values()) - server) / rounds * 1e6
            print(f"  {name:<17} this process {client:5.0f} us + PostgreSQL {pg:5.0f} us CPU")
    finally:
        db.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--group", type=int, default=3, help="devices per group commit")
    args = parser.parse_args(argv)
    if args.devices <= args.group * 10 or args.group < 1:
        parser.error("--devices must exceed 10 groups (the warm-up)")
    print(
        f"{args.devices} customizations' store calls, groups of {args.group}; ms CPU per "
        "customization"
    )
    print(f"{'database':<22} {'this proc':>9} {'postgres':>9} {'total':>9} "
          f"{'node rt':>8} {'commits':>8} {'CA rt':>8}")  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ztpki-fleet-store-") as scratch:
        results["sqlite"] = measure("sqlite", str(Path(scratch, "node.db")),
                                    str(Path(scratch, "ca.db")), args, None)  # fmt: skip
    for socket in (True, False):
        cluster = PostgresCluster(durable=True, socket=socket)
        try:
            label = f"postgresql, {'socket' if socket else 'TCP'}"
            results[label] = measure(label, cluster.fresh_database("store_node"),
                                     cluster.fresh_database("store_ca"), args, cluster)  # fmt: skip
            floor(cluster)
        finally:
            cluster.destroy()
    base = results["sqlite"]["client_ms"]
    for label, figures in results.items():
        if label != "sqlite":
            extra = figures["client_ms"] + figures["postgres_ms"] - base
            print(f"{label}: {extra:.3f} ms more server CPU per customization than SQLite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
