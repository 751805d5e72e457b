"""Benchmark: manufacture a production batch against a real `ztpki ca serve` on loopback.

    .venv/bin/python benchmarks/manufacture.py [--count 1000] [--concurrency 16] [--key ec-p256]

Sets up a CA system in a temporary directory (root, factory CA, CA-client line1), starts the
CA service as its own process, makes the batch in this process through the same code as
`ztpki factory manufacture`, and prints devices per second and CPU time per device for the
client (this process, resource.getrusage) and the server (/proc/<pid>/stat).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from ztpki.casystem.client import CAClient
from ztpki.cli import main as ztpki_main
from ztpki.credentials import Credential
from ztpki.factory.batch import Manufacturer, Outcome, ProductionBatch, device_ids
from ztpki.factory.configuration import CAClientConfig
from ztpki.pki.keys import KeySpec

ENV = {"ZTPKI_CA_PASSPHRASE": "bench-ca-passphrase", "ZTPKI_CLIENT_PASSPHRASE": "bench-client-pw"}
TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / TICKS


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ztpki(*args: str) -> None:
    status = ztpki_main(list(args))
    if status != 0:
        raise SystemExit(f"ztpki {' '.join(args)} failed with status {status}")


def start_service(system: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ztpki",
            "ca",
            "serve",
            "--dir",
            str(system),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env={**os.environ, **ENV, "ZTPKI_LOG_LEVEL": "warning"},
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("listening on "):
            return process, line.removeprefix("listening on ").strip()
    raise SystemExit(f"the CA service did not start; see {log}")


async def manufacture(batch: ProductionBatch, credential: Credential, concurrency: int) -> float:
    client = CAClient(batch.ca.address, credential, pool_size=concurrency)
    try:
        report = await Manufacturer(batch, client, concurrency=concurrency).run()
    finally:
        await client.close()
    failed = report.of(Outcome.FAILED)
    if failed:
        raise SystemExit(f"{len(failed)} devices failed, e.g. {failed[0].detail}")
    return report.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--key", choices=[k.value for k in KeySpec], default="ec-p256")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args()
    os.environ.update(ENV)
    os.environ.setdefault("ZTPKI_LOG_LEVEL", "warning")
    root = Path(tempfile.mkdtemp(prefix="ztpki-bench-"))
    system = root / "ca"
    ztpki("--log-level", "warning", "ca", "init", "--dir", str(system), "--name", "root")
    ztpki("ca", "init", "--dir", str(system), "--name", "factory", "--parent", "root", "--default")
    ztpki(
        "ca", "add-client", "--dir", str(system), "--name", "line1", "--out", str(root / "line1"),
        "--ca", "factory", "--device-ids", "BENCH-*",
    )  # fmt: skip
    service, address = start_service(system, root / "serve.log")
    try:
        credential = Credential.load(
            root / "line1", passphrase=ENV["ZTPKI_CLIENT_PASSPHRASE"].encode()
        )
        batch = ProductionBatch(
            out=root / "devices",
            device_ids=device_ids("BENCH-{n:07d}", count=args.count, batch=None),
            ca=CAClientConfig(address, root / "line1", None, (f"key={args.key}",)),
            batch="bench",
        )
        server_before, client_before = server_cpu_seconds(service.pid), client_cpu_seconds()
        elapsed = asyncio.run(manufacture(batch, credential, args.concurrency))
        server_cpu = server_cpu_seconds(service.pid) - server_before
        client_cpu = client_cpu_seconds() - client_before
    finally:
        service.terminate()
        service.wait(timeout=30)
    n = args.count
    setup = f"{args.key}, concurrency {args.concurrency}, {os.cpu_count()} CPUs"
    print(f"devices            {n} ({setup})")
    print(f"wall time          {elapsed:.2f} s")
    print(f"devices per second {n / elapsed:.1f}")
    print(f"client CPU/device  {client_cpu / n * 1000:.2f} ms  (this process)")
    print(f"server CPU/device  {server_cpu / n * 1000:.2f} ms  (ztpki ca serve, pid {service.pid})")
    if args.keep:
        print(f"kept {root}")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
