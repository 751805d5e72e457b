"""Customizing devices against a running world, and the server CPU it costs: what
``fleet.py`` and ``scale.py`` both measure (imported by them, run by neither on its own).

Server CPU is utime + stime of the node and the customer CA system with their living
descendants, read from /proc before and after; the devices' side runs in this process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.device_fixtures import World

from ztpki.device import ActivationError, DeviceMemory, KeyMode
from ztpki.device.cmp_activation import EnrollmentProtocol, activating_client
from ztpki.device.communication import NodeAddress

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- CPU of process trees, from /proc ------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of one process: its own user + system time and that of its
    children it reaped (PostgreSQL's autovacuum workers come and go)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def tree_cpu(roots: Iterable[int]) -> dict[int, float]:
    """CPU seconds of each root process plus its living descendants."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                stats[int(entry.name)] = found
    totals = {}
    for root in roots:
        members, frontier = {root}, [root]
        while frontier:
            parent = frontier.pop()
            children = [p for p, (ppid, _) in stats.items() if ppid == parent]
            members.update(children)
            frontier += children
        totals[root] = sum(stats[p][1] for p in members if p in stats)
    return totals


# --- customizing the fleet ---------------------------------------------------------------


@dataclass
class ModeResult:
    mode: str
    devices: int
    failed: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_ms: float  # per customization, node + customer CA system
    node_cpu_ms: float
    ca_cpu_ms: float
    client_cpu_ms: float  # the devices' side, all in this process


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def customize(
    memories: Sequence[DeviceMemory],
    node: NodeAddress,
    mode: KeyMode,
    concurrency: int,
    *,
    protocol: EnrollmentProtocol = EnrollmentProtocol.EST,
) -> tuple[list[float], list[str]]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failures: list[str] = []

    async def one(memory: DeviceMemory) -> None:
        async with gate:
            started = time.perf_counter()
            try:
                client = activating_client(protocol, memory, node, key_mode=mode, timeout=120)
                await client.activate()
            except ActivationError as exc:
                failures.append(f"{memory.device_id}: {exc.message}")
                return
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(m) for m in memories))
    return latencies, failures


@dataclass
class Sample:
    """One batch customized through one node: what ModeResult is computed from."""

    devices: int
    latencies: list[float]
    failures: list[str]
    seconds: float
    node_cpu: float
    ca_cpu: float
    client_cpu: float


def measure(
    world: World, device_ids: Sequence[str], mode: KeyMode, concurrency: int, *, node: str = "N"
) -> Sample:
    """Customize ``device_ids`` through node ``node``; the CPU its tree and the customer CA
    system's spent meanwhile."""
    memories = [DeviceMemory.open(world.device(d)) for d in device_ids]
    servers = {"node": world.services[node].process.pid, "ca": world.services["C"].process.pid}
    address = NodeAddress.parse(f"https://{world.services[node].address}")
    before = tree_cpu(servers.values())
    client_before = time.process_time()
    started = time.perf_counter()
    latencies, failures = asyncio.run(customize(memories, address, mode, concurrency))
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    after = tree_cpu(servers.values())
    for failure in failures[:5]:
        print(f"  failed: {failure}", file=sys.stderr)
    return Sample(
        devices=len(device_ids),
        latencies=latencies,
        failures=failures,
        seconds=seconds,
        node_cpu=after[servers["node"]] - before[servers["node"]],
        ca_cpu=after[servers["ca"]] - before[servers["ca"]],
        client_cpu=client_cpu,
    )


def result(mode: KeyMode, samples: Sequence[Sample]) -> ModeResult:
    """The figures of one or more samples of one configuration, taken together."""
    latencies = [value for sample in samples for value in sample.latencies]
    seconds = sum(sample.seconds for sample in samples)
    done = max(1, len(latencies))
    node_cpu = sum(sample.node_cpu for sample in samples)
    ca_cpu = sum(sample.ca_cpu for sample in samples)
    return ModeResult(
        mode=mode.value,
        devices=sum(sample.devices for sample in samples),
        failed=sum(len(sample.failures) for sample in samples),
        seconds=seconds,
        per_second=len(latencies) / seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p95_ms=percentile(latencies, 0.95) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        server_cpu_ms=(node_cpu + ca_cpu) / done * 1000,
        node_cpu_ms=node_cpu / done * 1000,
        ca_cpu_ms=ca_cpu / done * 1000,
        client_cpu_ms=sum(sample.client_cpu for sample in samples) / done * 1000,
    )


def run_mode(
    world: World, device_ids: Sequence[str], mode: KeyMode, concurrency: int
) -> ModeResult:
    """Customize ``device_ids`` through node N in one batch."""
    return result(mode, [measure(world, device_ids, mode, concurrency)])
