"""Run the node (loaded by ztpki.node.material): stores, CA-client, HTTP server, listeners.

The TLS layer asks every client for a certificate (CERT_OPTIONAL: ``cacerts`` needs none) and
verifies it against all factory trust bundles and customer CA chains; a chain that fails
there (expired, unknown CA) ends the handshake, before any HTTP. What passes is verified again
by the authentication module, which also tells temporary from operational identities.

Optionally proxy listeners serve the same application to TLS-terminating proxies
(``proxy_listen``): TLS with the proxy's client certificate, or a Unix socket only the proxy's
user can open (ztpki.node.proxy_listener); there the client certificate comes from the proxy's
header (ztpki.node.proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from ztpki.casystem.failover import FailoverCAClient, parse_addresses
from ztpki.errors import ConfigurationError, ListenFailed
from ztpki.eventloop import cancel_tasks
from ztpki.node.ca_client import EnrollmentTransport, SecondCAClient
from ztpki.node.cmp_http import CmpSigner
from ztpki.node.config import Limits
from ztpki.node.enrollment import EnrollmentService
from ztpki.node.factory_crls import (
    FactoryRevocation,
    no_crl_warning,
)
from ztpki.node.fleet_metrics import FleetMetrics
from ztpki.node.http import EstApplication, InFlight
from ztpki.node.listeners import WorkerPlace
from ztpki.node.material import NodeMaterial
from ztpki.node.material import load_material as load_material  # its old home, for callers
from ztpki.node.metrics import NodeMetrics, database_figures
from ztpki.node.proxy import ForwardedCertificate
from ztpki.node.proxy_config import ProxyConfig
from ztpki.node.proxy_listener import (
    ProxyAddress,
    ProxyListener,
    check_proxy_listener,
    listen,
    protocol_factory,
)
from ztpki.node.register import AsyncRegister
from ztpki.node.revocation import RevocationSender
from ztpki.node.revocation_wake import WakeListener, WakeSender
from ztpki.store.interfaces import NodeStore
from ztpki.store.sqlite import open_node_store

if TYPE_CHECKING:
    from ztpki.node.console.server import ConsoleServer

log = logging.getLogger(__name__)

FINAL_GRACE = 5.0


@dataclass
class RunningNode:
    host: str
    port: int
    runner: web.AppRunner
    server: asyncio.Server
    ca_client: SecondCAClient
    register: AsyncRegister
    store: NodeStore
    metrics: NodeMetrics
    proxies: list[ProxyListener] = field(default_factory=list)
    revocations: RevocationSender | None = None
    factory_crls: FactoryRevocation | None = None
    crl_refresher: asyncio.Task[None] | None = None
    service: EnrollmentService | None = None
    fleet: FleetMetrics | None = None
    # Where each proxy listener takes its [proxy] settings from (swapped by a reload).
    forwarded: list[ForwardedCertificate] = field(default_factory=list)
    in_flight: InFlight | None = None
    drain_timeout: float = 60.0
    wake_listener: WakeListener | None = None
    # The web console, when this process serves it (ztpki.node.console.server).
    console: ConsoleServer | None = None

    def set_proxy(self, proxy: ProxyConfig) -> None:
        for forwarded in self.forwarded:
            forwarded.config = proxy

    def stop_accepting(self) -> None:
        """Close the listening sockets: new connections are refused (once every worker has
        closed its copy), open ones are served on."""
        self.server.close()
        for proxy in self.proxies:
            proxy.server.close()

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish (at most the runner's shutdown
        timeout: `node serve --drain-timeout`), then close everything."""
        self.stop_accepting()
        if self.in_flight is not None:
            # Before the runner closes connections: it would stop reading a body mid-way.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.drain_timeout):
                    await self.in_flight.idle()
        await cancel_tasks(self.crl_refresher)
        if self.revocations is not None:
            await self.revocations.close()
        await self.server.wait_closed()
        await self.runner.cleanup()
        for proxy in self.proxies:
            await proxy.close()
        if self.fleet is not None:
            await self.fleet.close()
        if self.wake_listener is not None:
            await self.wake_listener.close()
        await self.ca_client.close()
        self.register.close()
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


async def start_node(
    material: NodeMaterial,
    *,
    host: str,
    port: int,
    transport: EnrollmentTransport | None = None,
    store: NodeStore | None = None,
    proxy_listen: Sequence[ProxyAddress] = (),
    worker: WorkerPlace | None = None,
    drain_timeout: float = 60.0,
) -> RunningNode:
    """Start serving; returns once the sockets listen (port 0: any free port).

    ``proxy_listen`` adds listeners for TLS-terminating proxies; each is refused unless the
    configuration can authenticate the proxy there (ztpki.node.proxy_listener). ``worker``:
    serve on sockets a supervisor bound (ztpki.node.workers) instead of binding host, port
    and proxy_listen. ``drain_timeout``: how long close() lets requests in flight finish.
    """
    config = material.config
    limits = config.limits
    for address in proxy_listen:
        check_proxy_listener(config, address)
    if transport is None:
        if material.credential is None:
            raise ConfigurationError(
                "the node needs its CA-client credential to reach the CA system"
            )
        transport = FailoverCAClient.connect(
            parse_addresses(config.ca_systems),
            material.credential,
            pool_size=limits.ca_pool_size,
            timeout=limits.ca_timeout,
        )
    store = store or open_node_store(config.database)
    register = AsyncRegister(store)
    metrics = NodeMetrics(database=database_figures(store))
    fleet = None if worker is None else FleetMetrics(worker.metrics_dir, worker.slot, metrics)
    ca_client = SecondCAClient(
        transport,
        timeout=limits.ca_timeout,
        retry_after=limits.retry_after,
        failover=len(config.ca_systems) > 1,
    )
    revocations = RevocationSender(register, ca_client, config.revocation)
    # With workers only worker 0 sends revocation orders; the others wake it (revocation_wake).
    sends_revocations = worker is None or worker.slot == 0
    wake_listener = None
    revocation_queued = revocations.wake
    if worker is not None and sends_revocations:
        wake_listener = WakeListener(worker.metrics_dir, revocations.wake)
    elif worker is not None:
        revocation_queued = WakeSender(worker.metrics_dir).wake
    service = EnrollmentService(
        register=register,
        ca_client=ca_client,
        labels=material.labels,
        default_label=config.default_label,
        limits=limits,
        metrics=metrics,
        revocation=config.revocation,
        revocation_queued=revocation_queued,
    )
    if material.factory_crls is not None and material.factory_crls.configured:
        # The first fetch before serving, so no device meets a node without its factory CRLs.
        await asyncio.to_thread(material.factory_crls.refresh)
    application = EstApplication(
        service,
        material.authentication,
        limits=limits,
        metrics=metrics,
        expose_metrics=config.metrics,
        factory_crls=material.factory_crls,
        fleet=fleet,
        cmp=CmpSigner(material.server_key, material.server_chain),
    )
    runner = await _runner(application.build(), limits, _final_grace(drain_timeout))
    # web.TCPSite cannot bound the TLS handshake, so the listening socket is made here, with
    # the runner's protocol factory; runner.cleanup() still closes every connection.
    context = material.ssl_context(on_refusal=application.strangers.tls_handshake)
    try:
        if worker is not None:
            if fleet is not None:
                await fleet.start()
            server = await asyncio.get_running_loop().create_server(
                _factory(runner),
                sock=worker.listeners.main,
                ssl=context,
                ssl_handshake_timeout=limits.handshake_timeout,
            )
        else:
            server = await asyncio.get_running_loop().create_server(
                _factory(runner),
                host,
                port,
                ssl=context,
                ssl_handshake_timeout=limits.handshake_timeout,
                reuse_address=True,
            )
    except BaseException as exc:
        await runner.cleanup()
        await ca_client.close()
        register.close()
        if isinstance(exc, OSError):
            raise ListenFailed(host, port, exc) from None
        raise
    proxies: list[ProxyListener] = []
    forwarded: list[ForwardedCertificate] = []
    prebound = worker.listeners.proxies if worker is not None else []
    addresses: list[tuple[ProxyAddress, socket.socket | None]] = [*prebound]
    if worker is None:
        addresses = [(a, None) for a in proxy_listen]
    try:
        for address, sock in addresses:
            proxy, source = await _start_proxy_listener(
                application, address, material, sock, drain_timeout=drain_timeout
            )
            proxies.append(proxy)
            forwarded.append(source)
    except BaseException:
        server.close()
        await runner.cleanup()
        for proxy in proxies:
            await proxy.close()
        await ca_client.close()
        register.close()
        raise
    bound = server.sockets[0].getsockname()
    log.info(
        "customer node %s serving EST labels %s; customer CA system %s",
        config.directory,
        ", ".join(material.labels),
        ", ".join(config.ca_systems),
    )
    if material.factory_crls is not None:
        for name in material.factory_crls.unconfigured():
            log.warning("%s", no_crl_warning(name))
    # Revocations queued while the node was down, or by `node block` meanwhile, go out now.
    if sends_revocations:
        revocations.start()
    if wake_listener is not None:
        await wake_listener.start()
    refresher = None
    if material.factory_crls is not None:
        refresher = asyncio.create_task(material.factory_crls.run(), name="factory CRL refresh")
    return RunningNode(
        str(bound[0]),
        int(bound[1]),
        runner,
        server,
        ca_client,
        register,
        store,
        metrics,
        proxies,
        revocations,
        material.factory_crls,
        refresher,
        service,
        fleet,
        forwarded,
        application.in_flight,
        drain_timeout,
        wake_listener,
    )


def _final_grace(drain_timeout: float) -> float:
    """What the runner's own shutdown still waits once close() waited for the requests in
    flight: answers still being written."""
    return min(drain_timeout, FINAL_GRACE)


async def _runner(
    app: web.Application, limits: Limits, shutdown_timeout: float = 60.0
) -> web.AppRunner:
    # keepalive_timeout runs from the end of the TLS handshake and from each answer: a client
    # that sends no complete request head by then (slow headers included) is disconnected.
    runner = web.AppRunner(
        app,
        keepalive_timeout=limits.keepalive_timeout,
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
        lingering_time=limits.lingering_time,
        handler_cancellation=False,  # an issuance runs to its end even if the client leaves
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    return runner


def _factory(runner: web.AppRunner) -> web.Server:
    assert runner.server is not None
    return runner.server


async def _start_proxy_listener(
    direct: EstApplication,
    address: ProxyAddress,
    material: NodeMaterial,
    sock: socket.socket | None = None,
    *,
    drain_timeout: float,
) -> tuple[ProxyListener, ForwardedCertificate]:
    """The same service, the certificate taken from an authenticated proxy's header."""
    proxy_config = material.config.proxy
    unix = address.socket_path is not None
    forwarded = ForwardedCertificate(proxy_config, address_fence=not unix)
    application = EstApplication(
        direct.service,
        direct.authentication,
        limits=direct.limits,
        metrics=direct.metrics,
        expose_metrics=direct.expose_metrics,
        client_certificate=forwarded,
        strangers=direct.strangers,
        factory_crls=direct.factory_crls,
        fleet=direct.fleet,
        in_flight=direct.in_flight,
        cmp=direct.cmp,
    )
    runner = await _runner(application.build(), direct.limits, _final_grace(drain_timeout))
    try:
        server, bound, inode = await listen(
            address,
            _factory(runner)
            if unix
            else protocol_factory(_factory(runner), lambda: forwarded.config),
            config=material.config,
            key=material.server_key,
            chain=material.server_chain,
            device_issuers=material.authentication.tls_trust_store(),
            handshake_timeout=direct.limits.handshake_timeout,
            sock=sock,
        )
    except BaseException:
        await runner.cleanup()
        raise
    if unix:
        log.info(
            "proxy listener on %s (mode 0660, group %s): header %s believed",
            bound,
            proxy_config.socket_group or "of the node's user",
            proxy_config.header,
        )
    else:
        log.info(
            "proxy listener on %s (TLS, proxy client certificate required%s): header %s "
            "believed from %s",
            bound,
            ", pinned" if proxy_config.fingerprints else "",
            proxy_config.header,
            ", ".join(str(n) for n in proxy_config.trusted),
        )
    return ProxyListener(bound, runner, server, inode), forwarded
