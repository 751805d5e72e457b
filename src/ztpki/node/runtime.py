"""Load a node directory and run the node: TLS context, stores, CA-client, HTTP server.

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
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from aiohttp import web
from cryptography import x509

from ztpki.casystem.client import CAClient, parse_address
from ztpki.credentials import (
    Credential,
    HandshakeRefused,
    log_handshake_refusal,
    server_context,
)
from ztpki.errors import ConfigurationError, ListenFailed, MalformedInput
from ztpki.eventloop import cancel_tasks
from ztpki.node.authentication import AuthenticationModule, CustomerCA, FactoryTrust
from ztpki.node.ca_client import EnrollmentTransport, SecondCAClient
from ztpki.node.config import Limits, NodeConfig
from ztpki.node.enrollment import EnrollmentService, LoadedLabel
from ztpki.node.factory_crls import (
    FactoryRevocation,
    no_crl_warning,
    resolve,
    static_locations,
)
from ztpki.node.http import EstApplication
from ztpki.node.manufacturers import LoadedManufacturer, check_distinct_trust
from ztpki.node.metrics import NodeMetrics, database_figures
from ztpki.node.proxy import ForwardedCertificate
from ztpki.node.proxy_listener import (
    ProxyAddress,
    ProxyListener,
    check_proxy_listener,
    listen,
    protocol_factory,
)
from ztpki.node.register import AsyncRegister
from ztpki.node.revocation import RevocationSender
from ztpki.pki.keys import PrivateKey, decode_pkcs8, keys_match
from ztpki.pki.pem import load_certificates_pem
from ztpki.store.interfaces import NodeStore
from ztpki.store.sqlite import open_node_store

log = logging.getLogger(__name__)


def read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        return load_certificates_pem(path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc.strerror}") from None
    except MalformedInput:
        raise ConfigurationError(f"{what} {path} holds no valid PEM certificate") from None


def read_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read CRL {path}: {exc.strerror}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise ConfigurationError(f"{path} is not a PEM or DER CRL") from None


CLIENT_KEY_OPTIONS = "--client-passphrase-file or ZTPKI_CLIENT_PASSPHRASE"


def read_server_key(path: Path, *, passphrase: bytes | None) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the node's server key {path}: {exc.strerror}"
        ) from None
    try:
        return decode_pkcs8(data, passphrase=passphrase)
    except MalformedInput:
        raise ConfigurationError(
            f"cannot open the node's server key {path}: wrong or missing passphrase "
            "(--passphrase-file or ZTPKI_NODE_PASSPHRASE)"
        ) from None


@dataclass(frozen=True)
class NodeMaterial:
    """The node's configuration with every file loaded and every key decrypted."""

    config: NodeConfig
    authentication: AuthenticationModule
    labels: dict[str, LoadedLabel]
    server_key: PrivateKey = field(repr=False)
    server_chain: tuple[x509.Certificate, ...]
    credential: Credential | None = field(repr=False)
    factory_crls: FactoryRevocation | None = field(default=None, repr=False)

    def ssl_context(self, *, on_refusal: HandshakeRefused | None = None) -> ssl.SSLContext:
        """``on_refusal``: told of each handshake the TLS layer refuses (default: logged)."""
        context = server_context(
            self.server_key,
            self.server_chain,
            client_anchors=self.authentication.tls_trust_store(),
            require_client_cert=False,
            on_refusal=on_refusal or log_handshake_refusal,
        )
        if self.authentication.partial_chain:
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        # No TLS 1.3 session tickets: devices open a fresh connection per identity and never
        # resume, so the tickets cost about 0.3 ms of server CPU per handshake for nothing
        # (and a resumed session would skip the client chain check of a full handshake).
        context.num_tickets = 0
        return context


def load_manufacturers(config: NodeConfig) -> list[LoadedManufacturer]:
    loaded = [
        LoadedManufacturer(
            maker,
            tuple(
                read_certificates(
                    config.path(maker.trust), f"trust bundle of manufacturer {maker.name}"
                )
            ),
        )
        for maker in config.manufacturers
    ]
    check_distinct_trust(loaded)  # also a node.toml edited by hand
    return loaded


def factory_trust(makers: list[LoadedManufacturer]) -> FactoryTrust:
    return FactoryTrust.from_manufacturers([(m.name, m.bundle) for m in makers])


def load_labels(config: NodeConfig) -> dict[str, LoadedLabel]:
    return {
        ca.label: LoadedLabel(
            ca, tuple(read_certificates(config.path(ca.chain), f"CA chain of EST label {ca.label}"))
        )
        for ca in config.labels
    }


def load_material(
    config: NodeConfig,
    *,
    node_passphrase: bytes | None,
    client_passphrase: bytes | None,
    load_credential: bool = True,
) -> NodeMaterial:
    if not config.labels:
        raise ConfigurationError(
            "node.toml has no [ca.<label>] table: the node has no CA to issue from"
        )
    labels = load_labels(config)
    makers = load_manufacturers(config)
    authentication = AuthenticationModule(
        factory_trust(makers),
        [CustomerCA(name, loaded.chain) for name, loaded in labels.items()],
    )
    factory_crls = factory_revocation(config, makers)
    key = read_server_key(config.path(config.server_key), passphrase=node_passphrase)
    chain = tuple(read_certificates(config.path(config.server_cert), "server certificate"))
    if not keys_match(key, chain[0].public_key()):
        raise ConfigurationError("the node's server key does not match its server certificate")
    credential = None
    if load_credential:
        credential = Credential.load(
            config.path(config.ca_client),
            passphrase=client_passphrase,
            passphrase_source=CLIENT_KEY_OPTIONS,
        )
    return NodeMaterial(config, authentication, labels, key, chain, credential, factory_crls)


def factory_revocation(config: NodeConfig, makers: list[LoadedManufacturer]) -> FactoryRevocation:
    """The factory CRLs the node checks temporary certificates against (not fetched yet)."""
    bundles = [(m.name, m.bundle) for m in makers]
    files = [(str(config.path(p)), read_crl(config.path(p))) for p in config.crls]
    static = static_locations(files, bundles)
    return FactoryRevocation(
        bundles,
        locations={
            m.name: [*(resolve(config.directory, c) for c in m.config.crl), *static[m.name]]
            for m in makers
        },
        refresh={m.name: timedelta(minutes=m.config.crl_refresh_minutes) for m in makers},
        fail_open={m.name: m.config.fail_open for m in makers},
    )


def crl_warnings(config: NodeConfig, only: str | None = None) -> list[str]:
    """One warning per manufacturer (or only that one) whose recalls the node would hear of
    only through its certificates' distribution points."""
    unconfigured = factory_revocation(config, load_manufacturers(config)).unconfigured()
    return [no_crl_warning(name) for name in unconfigured if only in (None, name)]


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

    async def close(self) -> None:
        await cancel_tasks(self.crl_refresher)
        if self.revocations is not None:
            await self.revocations.close()
        self.server.close()
        for proxy in self.proxies:
            proxy.server.close()
        await self.server.wait_closed()
        await self.runner.cleanup()
        for proxy in self.proxies:
            await proxy.close()
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
) -> RunningNode:
    """Start serving; returns once the sockets listen (port 0: any free port).

    ``proxy_listen`` adds listeners for TLS-terminating proxies; each is refused unless the
    configuration can authenticate the proxy there (ztpki.node.proxy_listener).
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
        transport = CAClient(
            parse_address(config.ca_system),
            material.credential,
            pool_size=limits.ca_pool_size,
            timeout=limits.ca_timeout,
        )
    store = store or open_node_store(config.database)
    register = AsyncRegister(store)
    metrics = NodeMetrics(database=database_figures(store))
    ca_client = SecondCAClient(transport, timeout=limits.ca_timeout, retry_after=limits.retry_after)
    revocations = RevocationSender(register, ca_client, config.revocation)
    service = EnrollmentService(
        register=register,
        ca_client=ca_client,
        labels=material.labels,
        default_label=config.default_label,
        limits=limits,
        metrics=metrics,
        revocation=config.revocation,
        revocation_queued=revocations.wake,
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
    )
    runner = await _runner(application.build(), limits)
    # web.TCPSite cannot bound the TLS handshake, so the listening socket is made here, with
    # the runner's protocol factory; runner.cleanup() still closes every connection.
    try:
        server = await asyncio.get_running_loop().create_server(
            _factory(runner),
            host,
            port,
            ssl=material.ssl_context(on_refusal=application.strangers.tls_handshake),
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
    try:
        for address in proxy_listen:
            proxies.append(await _start_proxy_listener(application, address, material))
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
        config.ca_system,
    )
    if material.factory_crls is not None:
        for name in material.factory_crls.unconfigured():
            log.warning("%s", no_crl_warning(name))
    # Revocations queued while the node was down, or by `node block` meanwhile, go out now.
    revocations.start()
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
    )


async def _runner(app: web.Application, limits: Limits) -> web.AppRunner:
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
    )
    await runner.setup()
    return runner


def _factory(runner: web.AppRunner) -> web.Server:
    assert runner.server is not None
    return runner.server


async def _start_proxy_listener(
    direct: EstApplication, address: ProxyAddress, material: NodeMaterial
) -> ProxyListener:
    """The same service, the certificate taken from an authenticated proxy's header."""
    proxy_config = material.config.proxy
    unix = address.socket_path is not None
    application = EstApplication(
        direct.service,
        direct.authentication,
        limits=direct.limits,
        metrics=direct.metrics,
        expose_metrics=direct.expose_metrics,
        client_certificate=ForwardedCertificate(proxy_config, address_fence=not unix),
        strangers=direct.strangers,
        factory_crls=direct.factory_crls,
    )
    runner = await _runner(application.build(), direct.limits)
    try:
        server, bound, inode = await listen(
            address,
            _factory(runner) if unix else protocol_factory(_factory(runner), proxy_config),
            config=material.config,
            key=material.server_key,
            chain=material.server_chain,
            device_issuers=material.authentication.tls_trust_store(),
            handshake_timeout=direct.limits.handshake_timeout,
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
    return ProxyListener(bound, runner, server, inode)
