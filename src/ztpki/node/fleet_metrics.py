"""One /metrics view over every worker of `node serve --workers N`.

Each worker counts its own requests (ztpki.node.metrics) and answers, on a Unix socket of its
own in a directory only the node's user can enter (made 0700 by the supervisor), with a JSON
snapshot of its figures. The worker a scrape reaches reads every other worker's socket and
adds the figures up, so whichever worker the kernel hands the scrape to answers with the
fleet's sums. A worker that does not answer in time (stopped, dying) is left out and logged;
``ztpki_node_workers`` says how many were added up.

The figures of a worker that died went with it: the fleet's counters then drop by what it had
counted, which Prometheus reads as a counter reset, as it would a restart of the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from ztpki.node.metrics import NodeMetrics

log = logging.getLogger(__name__)

# A snapshot is a few KiB; anything far larger is not one.
MAX_SNAPSHOT = 1 << 20
# A worker busy with TLS handshakes still answers within this; a stopped one is skipped.
PEER_TIMEOUT = 5.0  # within Prometheus's default scrape timeout (10 s)
SOCKET_SUFFIX = ".metrics.sock"


def socket_path(directory: Path, slot: int) -> Path:
    return directory / f"worker-{slot}{SOCKET_SUFFIX}"


class FleetMetrics:
    """This worker's side of the exchange: serve its own snapshot, collect the others'."""

    def __init__(self, directory: Path, slot: int, metrics: NodeMetrics) -> None:
        self.directory = directory
        self.slot = slot
        self.metrics = metrics
        self._server: asyncio.AbstractServer | None = None

    @property
    def path(self) -> Path:
        return socket_path(self.directory, self.slot)

    async def start(self) -> None:
        # A worker replacing one that died takes its slot's socket over.
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(json.dumps(self.metrics.snapshot()).encode())
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def collect(self) -> tuple[NodeMetrics, int]:
        """This worker's figures plus every other answering worker's, and how many workers
        that is."""
        total = NodeMetrics()
        total.add(self.metrics.snapshot())
        peers = sorted(p for p in self.directory.glob(f"worker-*{SOCKET_SUFFIX}") if p != self.path)
        answers = await asyncio.gather(*(self._read_peer(p) for p in peers))
        added = 1
        for peer, answer in zip(peers, answers, strict=True):
            if answer is None:
                log.info("metrics of %s left out: its worker did not answer", peer.name)
                continue
            try:
                total.add(json.loads(answer))
            except ValueError as exc:  # json's errors are ValueErrors too
                log.warning("metrics of %s left out: %s", peer.name, exc)
                continue
            added += 1
        return total, added

    async def _read_peer(self, path: Path) -> bytes | None:
        try:
            async with asyncio.timeout(PEER_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    data = await reader.read(MAX_SNAPSHOT + 1)
                    while data and len(data) <= MAX_SNAPSHOT:
                        more = await reader.read(MAX_SNAPSHOT + 1 - len(data))
                        if not more:
                            break
                        data += more
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            # A slot whose worker died and is not back yet: its socket file has no listener.
            return None
        if len(data) > MAX_SNAPSHOT:
            log.warning("metrics of %s left out: over %d bytes", path.name, MAX_SNAPSHOT)
            return None
        return data
