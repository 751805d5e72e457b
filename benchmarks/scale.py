"""Cost as the fleet grows: a million-device manifest, a million-row register and CA store.

    PYTHONPATH=src .venv/bin/python benchmarks/scale.py [--devices 1000000] [--database sqlite]

It builds a world with the real CLI (factory and customer CA systems, node N serving,
2 x --customizations devices manufactured for real), then measures, on the database given:

1. ``ztpki node import`` of a signed manifest of --devices devices (made with the factory's
   manifest signer, the same format code ``factory manufacture`` writes with): wall time and
   the command's peak memory (its maximum resident set, from wait4). Targets: 60 s, 500 MB
   at a million.
2. Server CPU per customization (node + customer CA system, ``customization.measure``, as
   ``fleet.py`` measures it) through two nodes on the same customer CA system: node S with
   1,000 devices registered and node N with the --devices imported above (and as many audit
   entries), the customer CA store holding --devices issuance records (set up with batched
   writes through the store API). Batches of --customizations / --rounds devices alternate
   between S and N, so the machine's drift weighs on both alike. Target: N within 10 % of S.
3. ``ztpki node devices --state listed --json`` over the big register and ``ztpki node audit
   --verify`` over the big audit trail: wall time, peak memory, and the rate audit prints.

``--database postgresql`` runs the same on PostgreSQL: in three fresh databases made at
``--database-url`` (a server and a role that may create databases), or without it in a
throwaway cluster of the local PostgreSQL binaries, as the tests start one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from benchmarks.customization import ModeResult, Sample, measure, result  # noqa: E402
from tests.e2e.device_fixtures import ENV, World, build_world  # noqa: E402
from tests.support.services import ztpki_argv  # noqa: E402

from ztpki.casystem.directory import CASystemDirectory  # noqa: E402
from ztpki.casystem.operations import open_store  # noqa: E402
from ztpki.credentials import Credential  # noqa: E402
from ztpki.device import KeyMode  # noqa: E402
from ztpki.node.operations import open_register  # noqa: E402
from ztpki.protocol.jws import compact_json, sign_jws  # noqa: E402
from ztpki.protocol.manifest import (  # noqa: E402
    MANIFEST_TYPE,
    Manifest,
    ManifestEntry,
    manifest_document,
    new_manifest_id,
)
from ztpki.store.database_url import redact_url, without_password  # noqa: E402
from ztpki.store.records import (  # noqa: E402
    AuditRecord,
    CertificateStatus,
    IssuedCertificate,
    ManifestRecord,
    NewDevice,
)

SMALL_FLEET = 1000
CHUNK = 10_000
MB = 1024 * 1024


@dataclass
class Command:
    """One `ztpki` command run to completion: wall time and peak resident memory."""

    name: str
    seconds: float
    peak_mb: float
    output: str


# Linux keeps a process's peak RSS across exec, so a child forked from this (large) process
# would report this one's peak: each command is forked from a small launcher instead, which
# reports the command's own peak (wait4) in a file.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as report:
    report.write(f"{usage.ru_maxrss} {code}")
sys.exit(code)
"""


def run_measured(name: str, *args: str, stdout: Path | None = None) -> Command:
    """Run ``ztpki args`` in its own process: wall time and its own peak RSS."""
    with tempfile.TemporaryDirectory() as scratch:
        out_path = stdout or Path(scratch, "stdout")
        err_path, report = Path(scratch, "stderr"), Path(scratch, "report")
        with out_path.open("wb") as out, err_path.open("wb") as err:
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", _LAUNCHER, str(report), *ztpki_argv(*args)],
                stdout=out, stderr=err, env={**os.environ, **ENV}, check=False,
            )  # fmt: skip
            seconds = time.perf_counter() - started
        peak_kb, code = (int(v) for v in report.read_text().split())
        output = ("" if stdout else out_path.read_text()) + err_path.read_text()
    if code != 0:
        raise RuntimeError(f"ztpki {' '.join(args)} failed ({code}): {output[-2000:]}")
    return Command(name, seconds, peak_kb * 1024 / MB, output)


# --- set-up: the manifest, and big stores through the store API ---------------------------


def device_id(index: int) -> str:
    return f"SCALE-{index:07d}"


def entries(start: int, count: int, made: datetime) -> Iterator[ManifestEntry]:
    for index in range(start, start + count):
        yield ManifestEntry(
            device_id=device_id(index),
            temp_fingerprint=f"{index:064x}",
            model="M1",
            batch="S1",
            manufactured_at=made,
        )


def write_manifest(world: World, path: Path, *, start: int, count: int) -> None:
    """A manifest of ``count`` devices signed by the world's manifest signer, written with
    the protocol's own document and JWS code a chunk of entries at a time."""
    signer = Credential.load(
        world.path("signer"), passphrase=ENV["ZTPKI_SIGNER_PASSPHRASE"].encode()
    )
    now = datetime.now(UTC).replace(microsecond=0)
    header = dict(manifest_id=new_manifest_id(), manufacturer="Acme", batch="S1", order="PO-9")
    pieces = []
    for first in range(start, start + count, CHUNK):
        chunk = tuple(entries(first, min(CHUNK, start + count - first), now))
        document = manifest_document(Manifest(**header, issued_at=now, entries=chunk))
        pieces.append(compact_json(document["devices"])[1:-1])
    skeleton = compact_json(manifest_document(Manifest(**header, issued_at=now, entries=())))
    payload = skeleton.replace(b'"devices":[]', b'"devices":[' + b",".join(pieces) + b"]", 1)
    path.write_bytes(sign_jws(payload, key=signer.key, chain=signer.chain, typ=MANIFEST_TYPE))


def fill_ca_store(world: World, *, start: int, count: int) -> float:
    """``count`` issuance records in the customer CA store (batched record_issuances)."""
    started = time.perf_counter()
    der = world.path("service-cert", "cert.pem").read_bytes()  # any bytes: never parsed
    now = datetime.now(UTC)
    with open_store(CASystemDirectory(world.path("C"))) as store:
        for first in range(start, start + count, CHUNK):
            batch = [
                (
                    IssuedCertificate(
                        serial=f"5ca1e{index:015x}",
                        ca_name="devices",
                        device_id=device_id(index),
                        subject=f"CN={device_id(index)}",
                        not_before=now,
                        not_after=now + timedelta(days=365),
                        status=CertificateStatus.ACTIVE,
                        request_id=f"scale-{index}",
                        fingerprint=f"{index:064x}",
                        issued_at=now,
                        certificate_der=der,
                        client="node",
                    ),
                    False,
                )
                for index in range(first, min(first + CHUNK, start + count))
            ]
            for result in store.record_issuances(batch):
                if isinstance(result, Exception):
                    raise result
    return time.perf_counter() - started


def fill_audit(world: World, *, count: int) -> float:
    started = time.perf_counter()
    now = datetime.now(UTC)
    with open_register(world.path("N")) as store:
        for first in range(0, count, CHUNK):
            store.append_many(
                [
                    AuditRecord(
                        at=now,
                        endpoint="est/default/simpleenroll",
                        decision="issued",
                        reason="set up by benchmarks/scale.py",
                        device_id=device_id(index),
                        serial=f"5ca1e{index:015x}",
                    )
                    for index in range(first, min(first + CHUNK, count))
                ]
            )
    return time.perf_counter() - started


def fill_register(world: World, node: str, *, start: int, count: int) -> None:
    """``count`` devices listed through the store API (a manifest record of the set-up)."""
    now = datetime.now(UTC)
    record = ManifestRecord(
        manufacturer="Acme",
        manifest_id=new_manifest_id(),
        issued_at=now,
        signer="CN=benchmarks/scale.py",
        device_count=count,
        imported_at=now,
    )
    devices = (
        NewDevice(device_id(i), f"{i:064x}", manufacturer="Acme")
        for i in range(start, start + count)
    )
    with open_register(world.path(node)) as store:
        store.import_devices(devices, manifest=record)


# --- the run -------------------------------------------------------------------------------


def databases(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
    """PostgreSQL URLs for the customer CA system (C) and nodes N and S; none on SQLite.

    ``--database-url`` names a server and a role that may create databases (its own
    database in the URL, e.g. postgresql://ztpki@db:5432/postgres): three fresh ones are
    made there for the run. Without it, a throwaway cluster of the local PostgreSQL binaries
    (the one the tests start) holds them.
    """
    if args.database == "sqlite":
        return {}
    url = args.database_url or os.environ.get("ZTPKI_DATABASE_URL")
    if url is None:
        from tests.support.postgres import PostgresUnavailable, shared_cluster

        try:
            cluster = shared_cluster()
        except PostgresUnavailable as exc:
            parser.exit(2, f"scale.py: no --database-url, and no local PostgreSQL: {exc}\n")
        return {name: cluster.fresh_database(f"scale_{name.lower()}") for name in "CNS"}
    import psycopg

    tag = f"ztpki_scale_{os.getpid()}"
    parts = urlsplit(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for name in "CNS":
                conn.execute(f'CREATE DATABASE "{tag}_{name.lower()}"')
    except psycopg.Error as exc:
        parser.exit(2, f"scale.py: cannot create databases at {redact_url(url)}: "
                       f"{without_password(str(exc).strip(), url)}\n")  # fmt: skip
    return {name: urlunsplit(parts._replace(path=f"/{tag}_{name.lower()}")) for name in "CNS"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--database-url", help="postgresql://user@host:port/db")
    parser.add_argument("--devices", type=int, default=1_000_000, help="the big fleet")
    parser.add_argument(
        "--customizations", type=int, default=300, help="devices customized per fleet size"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="customizations in flight")
    parser.add_argument("--rounds", type=int, default=6, help="alternating batches per node")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument(
        "--import-only", action="store_true", help="measure the manifest import alone (step 1)"
    )
    args = parser.parse_args(argv)
    if args.devices < 1 or args.customizations < 1 or args.rounds < 1:
        parser.error("--devices, --customizations and --rounds must be positive")
    urls = databases(args, parser)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ztpki-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    real = 2 if args.import_only else 2 * args.customizations
    print(f"building the world in {workdir}: {real} devices ...", flush=True)
    world = build_world(workdir, devices=real, databases=urls)
    try:
        figures = run_scale(world, args, urls)
    finally:
        world.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report(figures, args)
    return 0 if figures["ok"] else 1


def run_scale(world: World, args: argparse.Namespace, urls: dict[str, str]) -> dict[str, object]:
    big, k, rounds = args.devices, args.customizations, args.rounds
    ids = world.device_ids
    print(f"node S: {SMALL_FLEET} registered ...", flush=True)
    world.init_node("S", "node-cert", database=urls.get("S"))  # lists the world's manifest
    fill_register(world, "S", start=big, count=max(0, SMALL_FLEET - len(ids)))

    print(f"node N: `ztpki node import` of a signed manifest of {big} devices ...", flush=True)
    manifest = world.path(f"manifest-{big}.json")
    write_manifest(world, manifest, start=0, count=big)
    size_mb = manifest.stat().st_size / MB
    imported = run_measured("node import", "node", "import", "--dir", str(world.path("N")),
                            str(manifest))  # fmt: skip
    manifest.unlink()
    listed = re.search(r"listed (\d+) device", imported.output)
    print(f"  {imported.output.strip()} ({imported.seconds:.1f} s, peak {imported.peak_mb:.0f} MB)",
          flush=True)  # fmt: skip

    if args.import_only:
        ok = listed is not None and int(listed.group(1)) == big
        return {"ok": ok, "manifest_mb": size_mb, "import": asdict(imported),
                "listed": int(listed.group(1)) if listed else None}  # fmt: skip

    print(f"customer CA store: {big} issuance records; node N: {big} audit entries ...", flush=True)
    ca_fill = fill_ca_store(world, start=0, count=big)
    audit_fill = fill_audit(world, count=big)
    print(f"  set up in {ca_fill:.0f} s + {audit_fill:.0f} s", flush=True)

    # Batches alternate between the two nodes, so the machine's drift weighs on both alike.
    print(f"customizing {k} devices through each node, in {rounds} alternating rounds ...")
    samples: dict[str, list[Sample]] = {"S": [], "N": []}
    per_round = -(-k // rounds)
    for first in range(0, k, per_round):
        for index, node in enumerate(("S", "N")):
            batch = ids[index * k + first : index * k + min(first + per_round, k)]
            samples[node].append(measure(world, batch, KeyMode.SIMPLEENROLL,
                                         args.concurrency, node=node))  # fmt: skip
    small = result(KeyMode.SIMPLEENROLL, samples["S"])
    large = result(KeyMode.SIMPLEENROLL, samples["N"])

    print("streaming the register and verifying the audit trail ...", flush=True)
    listing = world.path("listed.json")
    devices = run_measured("node devices --state listed --json", "node", "devices", "--dir",
                           str(world.path("N")), "--state", "listed", "--json",
                           stdout=listing)  # fmt: skip
    with listing.open("rb") as file:
        rows = sum(line.startswith(b"{") for line in file)  # one device per line
    listing.unlink()
    audit = run_measured("node audit --verify", "node", "audit", "--dir", str(world.path("N")),
                         "--verify")  # fmt: skip
    rate = re.search(r"([\d,]+) entries/s", audit.output)
    ratio = large.server_cpu_ms / small.server_cpu_ms if small.server_cpu_ms else float("nan")
    ok = (
        small.failed == 0
        and large.failed == 0
        and listed is not None
        and int(listed.group(1)) == big
        and rows >= big
    )
    return {
        "ok": ok,
        "manifest_mb": size_mb,
        "import": asdict(imported),
        "listed": int(listed.group(1)) if listed else None,
        "small": asdict(small),
        "large": asdict(large),
        "cpu_ratio": ratio,
        "devices_listing": asdict(devices),
        "devices_rows": rows,
        "audit_verify": asdict(audit),
        "audit_rate": rate.group(1) if rate else None,
    }


def report(figures: dict[str, object], args: argparse.Namespace) -> None:
    big = args.devices
    imported = Command(**figures["import"])  # type: ignore[arg-type]
    print()
    print(f"database: {args.database}; big fleet: {big:,} devices")
    print(f"{'measure':<52} {'value':>14} {'target':>12}")
    rows = [
        (f"node import, {big:,} devices ({figures['manifest_mb']:.0f} MB file): time",
         f"{imported.seconds:.1f} s", "<= 60 s"),
        ("node import: peak memory", f"{imported.peak_mb:.0f} MB", "<= 500 MB"),
    ]  # fmt: skip
    if not args.import_only:
        rows += later_rows(figures, args)
    for name, value, target in rows:
        print(f"{name:<52} {value:>14} {target:>12}")
    if args.json:
        args.json.write_text(json.dumps({"database": args.database, **figures}, indent=2) + "\n")


def later_rows(figures: dict[str, object], args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """The report's rows after the import: customizations, listing, audit verification."""
    big = args.devices
    devices, audit = (
        Command(**figures[k])  # type: ignore[arg-type]
        for k in ("devices_listing", "audit_verify")
    )
    small = ModeResult(**figures["small"])  # type: ignore[arg-type]
    large = ModeResult(**figures["large"])  # type: ignore[arg-type]
    print(f"failed customizations: {small.failed} + {large.failed}")
    return [
        (f"server CPU per customization, node S: {SMALL_FLEET:,} registered",
         f"{small.server_cpu_ms:.2f} ms", ""),
        (f"server CPU per customization, node N: {big + 2 * args.customizations:,} registered",
         f"{large.server_cpu_ms:.2f} ms", ""),
        ("  ratio big / small", f"{figures['cpu_ratio']:.3f}", "<= 1.10"),
        (f"node devices --state listed --json, {figures['devices_rows']:,} rows: time",
         f"{devices.seconds:.1f} s", ""),
        ("node devices: peak memory", f"{devices.peak_mb:.0f} MB", "bounded"),
        (f"node audit --verify, {big:,}+ entries: time", f"{audit.seconds:.1f} s", ""),
        ("node audit --verify: rate", f"{figures['audit_rate']} /s", ""),
        ("node audit --verify: peak memory", f"{audit.peak_mb:.0f} MB", "bounded"),
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
