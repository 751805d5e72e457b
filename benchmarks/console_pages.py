"""What the web console's queries cost on a million-device register (SQLite, or PostgreSQL).

    PYTHONPATH=src .venv/bin/python benchmarks/console_pages.py [--devices 1000000]
        [--audit 200000] [--database-url postgresql://...]

Fills a fresh register through the store (devices in 100 batches of three manufacturers, a
tenth customized, a hundredth blocked; audit entries over the last hour), then times each
query a console page makes: the device list's first and a deep keyset page, with every
filter, the overview's counts (by state, by manufacturer and batch), the per-minute chart
and the failures, and an audit page. Each figure is the median of --repeat runs, in ms.
Target: every device-list page under 50 ms at a million rows (it reads one index range).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from ztpki.store.records import AuditRecord, DeviceState  # noqa: E402
from ztpki.store.sqlite import open_node_store  # noqa: E402
from ztpki.store.sqlite_console import DeviceFilter  # noqa: E402
from ztpki.store.sqlite_register import SQLiteNodeStore  # noqa: E402

STATES = ("listed",) * 89 + ("customized",) * 10 + ("blocked",)


def _rows(count: int, now: str) -> Iterator[tuple[Any, ...]]:
    for number in range(count):
        state = STATES[number % len(STATES)]
        serial = f"{number:040x}" if state == "customized" else None
        yield (
            f"dev-{number:07d}",
            state,
            f"{number:064x}",
            f"maker-{number % 3}",
            "meter-9",
            f"B{number % 100:03d}",
            serial,
            serial,
            b"\x30\x00" if serial else None,
            "listed" if state == "blocked" else None,
            now,
            "default" if serial else None,
        )


def fill(store: SQLiteNodeStore, devices: int, audit: int, now: datetime) -> None:
    stamp = now.replace(tzinfo=None).isoformat("T", "microseconds") + "Z"
    insert = (
        "INSERT INTO device (device_id, state, temp_fingerprint, manufacturer, model, batch, "
        "issued_serial, issued_spki, issued_certificate_der, blocked_from, updated_at, "
        "issuance_label) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    rows = _rows(devices, stamp)
    while True:
        chunk = [row for _, row in zip(range(50_000), rows, strict=False)]
        if not chunk:
            break
        with store.database.write() as conn:
            conn.executemany(insert, chunk)
    records = (
        AuditRecord(
            at=now - timedelta(seconds=3600 * n / audit),
            endpoint="/.well-known/est/simpleenroll",
            decision="confirmed" if n % 5 else "refused",
            reason="ok" if n % 5 else f"reason {n % 7}",
            device_id=f"dev-{n:07d}",
        )
        for n in range(audit, 0, -1)
    )
    while True:
        chunk_records = [r for _, r in zip(range(10_000), records, strict=False)]
        if not chunk_records:
            break
        store.append_many(chunk_records)


def median_ms(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--audit", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", help="a fresh PostgreSQL database (default: SQLite)")
    args = parser.parse_args(argv)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="ztpki-console-bench-") as scratch:
        store = open_node_store(args.database_url or Path(scratch) / "node.sqlite")
        started = time.perf_counter()
        fill(store, args.devices, args.audit, now)
        print(f"filled {args.devices} devices, {args.audit} audit entries "
              f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
        deep = f"dev-{args.devices * 9 // 10:07d}"
        since = now - timedelta(hours=1)
        queries: dict[str, Callable[[], object]] = {
            "devices: first page": lambda: store.device_page(DeviceFilter(), limit=51),
            "devices: page at 90%": lambda: store.device_page(DeviceFilter(), after=deep),
            "devices: search prefix": lambda: store.device_page(DeviceFilter(search="dev-05")),
            "devices: state=customized": lambda: store.device_page(
                DeviceFilter(state=DeviceState.CUSTOMIZED), after=deep
            ),
            "devices: blocked=yes": lambda: store.device_page(DeviceFilter(blocked=True)),
            "devices: batch=B042 at 90%": lambda: store.device_page(
                DeviceFilter(batch="B042"), after=deep
            ),
            "devices: label=default": lambda: store.device_page(DeviceFilter(label="default")),
            "devices: batch+state (rare)": lambda: store.device_page(
                DeviceFilter(batch="B099", state=DeviceState.BLOCKED)
            ),
            "overview: counts by state": store.counts,
            "overview: by manufacturer and batch": store.fleet_by_batch,
            "overview: per minute, last hour": lambda: store.decisions_per_minute(
                "confirmed", since=since
            ),
            "overview: failures by reason": lambda: store.failure_reasons(
                ("refused", "deferred"), since=since
            ),
            "audit: newest page": lambda: store.audit_page(limit=100),
            "device: one row": lambda: store.get(deep),
        }
        width = max(map(len, queries))
        for name, call in queries.items():
            print(f"{name:<{width}}  {median_ms(call, args.repeat):8.1f} ms")
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
