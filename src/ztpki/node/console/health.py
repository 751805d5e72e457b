"""The CA systems' health as the console shows it: can the node open a connection to each
address, and how long does that take."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from ztpki.casystem.failover import parse_addresses

PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Probe:
    address: str
    reachable: bool
    latency_ms: float | None
    error: str | None


async def _probe(host: str, port: int) -> Probe:
    address = f"{host}:{port}"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return Probe(address, False, None, f"no answer within {PROBE_TIMEOUT:g} s")
    except OSError as exc:
        return Probe(address, False, None, exc.strerror or type(exc).__name__)
    latency = (time.perf_counter() - started) * 1000
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Probe(address, True, latency, None)


async def probe_ca_systems(addresses: tuple[str, ...]) -> list[Probe]:
    return list(await asyncio.gather(*(_probe(h, p) for h, p in parse_addresses(addresses))))
