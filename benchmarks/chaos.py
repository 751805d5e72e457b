"""Chaos at fleet scale: N devices customize through nginx -> 2 node workers -> 2 CA-system
instances on PostgreSQL while a node worker, a CA-system instance and PostgreSQL are killed.

    .venv/bin/python benchmarks/chaos.py --devices 10000 [--concurrency 64] [--keep]

The harness is tests/e2e/chaos_fixtures.py, the one tests/e2e/test_chaos.py runs with 200
devices: the world made with the real CLI (its own PostgreSQL cluster), the faults injected
at 25 %, 50 % and 75 % of the fleet customized, and the invariants read from both databases
with SQL afterwards. It prints a table of the counts and exits 1 if an invariant failed or a
device saw a failure it could not retry.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# chaos_fixtures and the fixtures it builds on import each other as the tests do.
sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "tests" / "e2e")]

from chaos_fixtures import RETRYABLE_KINDS, build, check, customize_fleet, report  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64, help="customizations in flight")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ztpki-chaos-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"building the world in {workdir}: {args.devices} devices ...", flush=True)
    started = time.perf_counter()
    chaos = build(workdir, args.devices)
    try:
        # In-process `ztpki` commands set up logging; a device's every step is not news here.
        logging.getLogger("ztpki").setLevel(logging.WARNING)
        print(f"  ready in {time.perf_counter() - started:.1f} s; nginx at {chaos.est}", flush=True)
        run = asyncio.run(customize_fleet(chaos, concurrency=args.concurrency))
        checks = check(chaos)
        print(report(run, checks), flush=True)
    finally:
        chaos.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    wrong = checks.failures() + run.fatal[:10]
    wrong += [f"not retryable: {kind}" for kind in set(run.failures) - RETRYABLE_KINDS]
    for line in wrong:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if wrong or run.customized != run.devices else 0


if __name__ == "__main__":
    sys.exit(main())
