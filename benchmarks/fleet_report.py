"""benchmarks/fleet.py's results: one row per key mode and configuration, the floor, the
database work per customization, and PostgreSQL's server CPU over SQLite's."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import customization

from ztpki.device import KeyMode

HANDSHAKES_PER_CUSTOMIZATION = 2
# PostgreSQL (N workers) against SQLite (one worker), server CPU per customization (issue 16).
POSTGRES_TARGET = 1.15


@dataclass
class ModeResult(customization.ModeResult):
    """A customization run's figures (customization.ModeResult), and where it ran and what the
    database did for it."""

    configuration: str
    postgres_cpu_ms: float  # included in server_cpu_ms
    node_round_trips: float  # per customization, the node's /metrics
    node_commits: float
    node_read_commits: float
    postgres: dict[str, dict[str, float]]  # role -> PostgreSQL's figures per customization


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
        f"{'mode':<13} {'database':<22} {'devices':>7} {'failed':>6} {'enroll/s':>9} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'server CPU ms':>13} {'node':>7} "
        f"{'CA':>7} {'pg':>6} {'floor ms':>8} {'ratio':>6} {'ratio/1hs':>9}"
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
            f"{r.mode:<13} {r.configuration:<22} {r.devices:>7} {r.failed:>6} "
            f"{r.per_second:>9.1f} {r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {r.p99_ms:>8.1f} "
            f"{r.server_cpu_ms:>13.2f} {r.node_cpu_ms:>7.2f} {r.ca_cpu_ms:>7.2f} "
            f"{r.postgres_cpu_ms:>6.2f} {floor * ms:>8.2f} {ratio:>6.2f} {ratio_single:>9.2f}"
        )
        rows.append({**asdict(r), "floor_ms": floor * ms, "ratio": ratio,
                     "ratio_single_handshake": ratio_single})  # fmt: skip
    print()
    print("database work per customization (node: its /metrics; PostgreSQL: pg_stat_database)")
    for r in results:
        line = (
            f"  {r.mode:<13} {r.configuration:<22} node: {r.node_round_trips:.1f} round trips, "
            f"{r.node_commits:.2f} write + {r.node_read_commits:.2f} read commits"
        )
        for role, figures in sorted(r.postgres.items()):
            line += f"; {role} xact_commit {figures['xact_commit']:.2f}"
            if "sessions" in figures:
                line += f", {figures['sessions']:.3f} new connections"
            if "statements" in figures:
                line += f", {figures['statements']:.1f} statements"
        print(line)
    comparison = compare(results)
    for mode, ratio in comparison.items():
        verdict = "met" if ratio <= POSTGRES_TARGET else "MISSED"
        print(f"{mode}: PostgreSQL / SQLite single-worker server CPU per customization "
              f"= {ratio:.2f} (target <= {POSTGRES_TARGET}: {verdict})")  # fmt: skip
    for r in results:
        print(f"{r.mode} ({r.configuration}): device-side CPU {r.client_cpu_ms:.2f} ms per "
              f"customization (this process: TLS client, device memory, verification)")  # fmt: skip
    print(
        f"(floor = {HANDSHAKES_PER_CUSTOMIZATION} handshakes + the enrollment's signature "
        "operations; ratio/1hs counts one handshake; tracked bound for simpleenroll: "
        "ratio <= 3.1)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "concurrency": args.concurrency,
                    "handshake_ms": handshake * ms,
                    "signatures_ms": {k: v * ms for k, v in signatures.items()},
                    "results": rows,
                    "postgresql_over_sqlite": comparison,
                },
                indent=2,
            )
            + "\n"
        )


def compare(results: Sequence[ModeResult]) -> dict[str, float]:
    """Per mode: server CPU of the PostgreSQL configuration over the SQLite one."""
    ratios = {}
    for r in results:
        if not r.configuration.startswith("postgresql"):
            continue
        base = [b for b in results if b.mode == r.mode and b.configuration.startswith("sqlite")]
        if base and base[0].server_cpu_ms > 0:
            ratios[r.mode] = r.server_cpu_ms / base[0].server_cpu_ms
    return ratios
