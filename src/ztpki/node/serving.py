"""One process of `node serve`, from start to drained: the node itself (``--workers 1``), or
one worker of a supervisor (ztpki.node.workers).

SIGTERM and SIGINT drain: the listening sockets close at once (new connections are refused
once no process of the node holds them), requests in flight get up to the drain timeout to
finish, then the process exits. SIGHUP reloads what node.toml can change while running
(ztpki.node.reload) and fetches every factory CRL; open connections stay open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ztpki.node.listeners import WorkerPlace
from ztpki.node.material import NodeMaterial
from ztpki.node.proxy_listener import ProxyAddress
from ztpki.node.reload import read_reload, reloaded_labels
from ztpki.node.runtime import RunningNode, start_node

if TYPE_CHECKING:
    from ztpki.node.console.server import ConsoleServer

log = logging.getLogger(__name__)


def reload_material(material: NodeMaterial, *, who: str) -> NodeMaterial:
    """The material with node.toml's reloadable changes (unchanged if it does not load)."""
    reload = read_reload(material.config, who=who)
    if reload is None:
        return material
    return replace(
        material,
        config=reload.config,
        labels=reloaded_labels(material.labels, reload.config),
    )


def reload_running(running: RunningNode, material: NodeMaterial, *, who: str) -> NodeMaterial:
    """Apply a SIGHUP to a running node; returns the material as now configured."""
    reloaded = reload_material(material, who=who)
    if running.service is not None:
        running.service.labels = dict(reloaded.labels)
    running.set_proxy(reloaded.config.proxy)
    if running.factory_crls is not None:
        # Fetch every factory CRL now (after a manufacturer revoked a device).
        running.factory_crls.refresh_now()
    return reloaded


async def serve_node(
    material: NodeMaterial,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    proxy_listen: Sequence[ProxyAddress] = (),
    worker: WorkerPlace | None = None,
    drain_timeout: float,
    ready: Callable[[RunningNode], None],
    console_listen: tuple[str, int] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain; ``ready`` is called once serving.

    ``console_listen``: also serve the web console there; with workers, worker 0 serves it
    on the socket its supervisor bound (``worker.listeners.console``).
    """
    running = await start_node(
        material,
        host=host,
        port=port,
        proxy_listen=proxy_listen,
        worker=worker,
        drain_timeout=drain_timeout,
    )
    try:
        running.console = await _start_console(material, running, worker, console_listen)
    except BaseException:
        await running.close()
        raise
    who = "node" if worker is None else f"worker {worker.slot}, pid {os.getpid()}"
    current = material
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hangup() -> None:
        nonlocal current
        current = reload_running(running, current, who=who)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup)
    ready(running)
    await stop.wait()
    running.stop_accepting()
    if running.console is not None:
        await running.console.close()
    log.info(
        "%s stopped accepting connections; requests in flight have up to %.0f s to finish",
        who,
        drain_timeout,
    )
    await running.close()


async def _start_console(
    material: NodeMaterial,
    running: RunningNode,
    worker: WorkerPlace | None,
    console_listen: tuple[str, int] | None,
) -> ConsoleServer | None:
    from ztpki.node.console.server import start_console

    wake = running.revocations.wake if running.revocations is not None else (lambda: None)
    if worker is not None:
        if worker.listeners.console is None or worker.slot != 0:
            return None
        return await start_console(material, sock=worker.listeners.console, revocation_queued=wake)
    if console_listen is None:
        return None
    host, port = console_listen
    return await start_console(material, host=host, port=port, revocation_queued=wake)
