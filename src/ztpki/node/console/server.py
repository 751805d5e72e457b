"""The console's HTTPS listener, on the node's event loop: the node's server certificate,
client certificates (optional) verified against ``[console] operator_ca``."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from ztpki.credentials import client_context, server_context
from ztpki.errors import ListenFailed
from ztpki.node.console.app import ConsoleContext, build, templates
from ztpki.node.console.health import CustomerCA, HealthMonitor
from ztpki.node.console.sessions import LoginThrottle, Sessions
from ztpki.node.material import NodeMaterial, read_certificates
from ztpki.store.sqlite import open_node_store
from ztpki.store.sqlite_register import SQLiteNodeStore

log = logging.getLogger(__name__)


@dataclass
class ConsoleServer:
    host: str
    port: int
    runner: web.AppRunner
    server: asyncio.Server
    store: SQLiteNodeStore
    context: ConsoleContext

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}/"

    def stop_accepting(self) -> None:
        self.server.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        await self.runner.cleanup()
        await self.context.close()
        self.store.close()


def console_context(material: NodeMaterial) -> ssl.SSLContext:
    config = material.config
    anchors = None
    if config.console.operator_ca is not None:
        anchors = read_certificates(config.path(config.console.operator_ca), "operator CA")
    context = server_context(
        material.server_key,
        material.server_chain,
        client_anchors=anchors,
        require_client_cert=False,
    )
    context.num_tickets = 0  # a resumed session would skip the client certificate check
    return context


def health_monitor(
    material: NodeMaterial, certificate_of_label: Callable[[str], bytes | None]
) -> HealthMonitor:
    """The CA health page's probes: the node's CA-client identity, as issuance presents it."""
    config, credential = material.config, material.credential
    tls = None
    if credential is not None:
        tls = client_context(
            key=credential.key, chain=credential.chain, server_anchors=credential.trust_anchors
        )
    return HealthMonitor(
        addresses=config.ca_systems,
        tls=tls,
        http=config.console.ca_http,
        cas=[
            CustomerCA(loaded.config.ca_name, loaded.chain[0], label)
            for label, loaded in material.labels.items()
            if loaded.config.ca_name
        ],
        certificate_of_label=certificate_of_label,
    )


async def start_console(
    material: NodeMaterial,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
    revocation_queued: Callable[[], None] = lambda: None,
) -> ConsoleServer:
    """Serve the console on host:port (or on ``sock``, bound by a supervisor)."""
    config = material.config
    store = open_node_store(config.database)
    context = ConsoleContext(
        config=config,
        store=store,
        sessions=Sessions(
            store,
            lifetime=config.console.session_minutes * 60,
            idle=config.console.idle_minutes * 60,
        ),
        throttle=LoginThrottle(config.console.login_attempts, config.console.login_window_seconds),
        templates=templates(),
        revocation_queued=revocation_queued,
        factory_crls=material.factory_crls,
        health=health_monitor(material, store.certificate_of_label),
    )
    runner = web.AppRunner(build(context), access_log=None)
    await runner.setup()
    assert runner.server is not None
    try:
        tls = console_context(material)
        loop = asyncio.get_running_loop()
        if sock is not None:
            server = await loop.create_server(runner.server, sock=sock, ssl=tls)
        else:
            server = await loop.create_server(
                runner.server, host, port, ssl=tls, reuse_address=True
            )
    except BaseException as exc:
        await runner.cleanup()
        store.close()
        if isinstance(exc, OSError):
            raise ListenFailed(host, port, exc) from None
        raise
    bound = server.sockets[0].getsockname()
    console = ConsoleServer(str(bound[0]), int(bound[1]), runner, server, store, context)
    log.info("web console on %s", console.url)
    if not await asyncio.to_thread(store.operators):
        log.warning(
            "the web console has no operator yet: add one with `ztpki node add-operator --dir "
            "%s NAME --role operator`",
            config.directory,
        )
    return console
