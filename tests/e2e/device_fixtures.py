"""Building blocks of the device end-to-end tests.

``tls_service`` is a tiny HTTPS service standing for "some service of the customer's": it
accepts only clients whose certificate chains to the anchors it is given (the customer CA)
and answers ``hello <CN>``. ``Deployment`` builds the whole world with the real CLI: a
factory CA system (device CA + server CA for the node), a customer CA system, manufactured
devices and a running customer node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from tests.support.services import Service, run_ztpki, start

from ztpki.credentials import server_context
from ztpki.pki.keys import PrivateKey
from ztpki.pki.pem import load_certificate_der

CA_PASSPHRASE = "ca-passphrase-for-tests"
CLIENT_PASSPHRASE = "client-passphrase-for-tests"
NODE_PASSPHRASE = "node-passphrase-for-tests"
ENV = {
    "ZTPKI_CA_PASSPHRASE": CA_PASSPHRASE,
    "ZTPKI_CLIENT_PASSPHRASE": CLIENT_PASSPHRASE,
    "ZTPKI_NODE_PASSPHRASE": NODE_PASSPHRASE,
    "ZTPKI_SIGNER_PASSPHRASE": "signer-passphrase-for-tests",
    "ZTPKI_LOG_LEVEL": "warning",
}


# --- a service of the customer's that trusts only the customer CA ------------------------


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        with contextlib.suppress(asyncio.IncompleteReadError, ssl.SSLError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            ssl_object = writer.get_extra_info("ssl_object")
            der: bytes = ssl_object.getpeercert(binary_form=True)
            cert = load_certificate_der(der)
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            name = names[0].value if names else "?"
            shown = name.decode() if isinstance(name, bytes) else name
            body = f"hello {shown}\n".encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@contextlib.contextmanager
def tls_service(
    key: PrivateKey,
    chain: Sequence[x509.Certificate],
    client_anchors: Sequence[x509.Certificate],
) -> Iterator[str]:
    """Run the service on 127.0.0.1 in a thread; yields its https:// URL."""
    context = server_context(key, chain, client_anchors=client_anchors, require_client_cert=True)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        server = await asyncio.start_server(_answer, "127.0.0.1", 0, ssl=context)
        holder["server"] = server
        holder["port"] = server.sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=30)
    ready.wait(timeout=30)
    try:
        yield f"https://127.0.0.1:{holder['port']}/hello"
    finally:

        async def close() -> None:
            holder["server"].close()
            await holder["server"].wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


# --- the world, built with the real CLI ------------------------------------------------


def ztpki(*args: str, env: Mapping[str, str] | None = None, check: bool = True) -> Any:
    """One `ztpki` command in its own process, as an operator runs it."""
    return run_ztpki(*args, env={**ENV, **(env or {})}, check=check, timeout=300)


def ztpki_json(*args: str) -> Any:
    return json.loads(ztpki(*args, "--json").stdout)


def _parallel(*commands: Sequence[Sequence[str]]) -> None:
    """Run several sequences of commands side by side (each sequence in order)."""

    def run_all(sequence: Sequence[Sequence[str]]) -> None:
        for args in sequence:
            ztpki(*args)

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        for future in [pool.submit(run_all, seq) for seq in commands]:
            future.result()


@dataclass
class World:
    """Factory CA system F, customer CA system C, devices, and node N serving.

    F holds ``devices`` (temporary identities), ``servers`` (the node's TLS certificate:
    devices verify the node with their factory anchors) and ``signers`` (manifests).
    C holds ``devices`` (operational identities) and ``services`` (server certificates of
    the customer's own services; also a node certificate devices do not expect).
    """

    root: Path
    services: dict[str, Service] = field(default_factory=dict)
    device_ids: list[str] = field(default_factory=list)
    manifest: Path | None = None
    init_output: dict[str, str] = field(default_factory=dict)  # node name -> what init said

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def device(self, device_id: str) -> Path:
        return self.path("devices", device_id)

    @property
    def node_url(self) -> str:
        return f"https://{self.services['N'].address}"

    def start(self, name: str, *args: str) -> Service:
        log = self.path("logs", f"{name}-{os.urandom(3).hex()}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        service = start(list(args), log_path=log, env=ENV)
        self.services[name] = service
        return service

    def stop(self, name: str | None = None) -> None:
        for key in [name] if name else list(self.services)[::-1]:
            service = self.services.pop(key, None)
            if service is not None:
                service.stop()

    def issued(self, device_id: str) -> list[dict[str, Any]]:
        """`ztpki ca issued --json` of the customer CA system, for one device."""
        records: list[dict[str, Any]] = ztpki_json(
            "ca", "issued", "--dir", str(self.path("C")), "--device", device_id
        )
        return records

    def active(self, device_id: str) -> list[str]:
        return [r["serial"] for r in self.issued(device_id) if r["status"] == "active"]

    def register(self, node: str = "N") -> dict[str, dict[str, Any]]:
        devices = ztpki_json("node", "devices", "--dir", str(self.path(node)))
        return {d["device_id"]: d for d in devices}

    def audit(self, device_id: str, node: str = "N") -> list[dict[str, Any]]:
        """`ztpki node audit --json` of a node, for one device."""
        entries: list[dict[str, Any]] = ztpki_json(
            "node", "audit", "--dir", str(self.path(node)), "--device", device_id
        )
        return entries

    def show(self, device_id: str) -> dict[str, Any]:
        summary: dict[str, Any] = ztpki_json(
            "device", "show", "--device", str(self.device(device_id))
        )
        return summary

    def init_node(
        self,
        name: str,
        server_cert: str,
        *,
        customer: str = "C",
        database: str | None = None,
        serve: Sequence[str] = (),
    ) -> Service:
        """Another node directory on a customer CA system, with its own register (in the
        PostgreSQL ``database`` when given); ``serve``: more `node serve` options."""
        cert = self.path(server_cert)
        init = ztpki(
            "node", "init", "--dir", str(self.path(name)),
            "--ca", self.services[customer].address,
            "--client-cred", str(self.path(f"{customer}-node")),
            "--manufacturer", "Acme", "--device-ids", "*",
            "--trust", str(self.path("factory-trust.pem")),
            "--server-cert", str(cert / "cert.pem"),
            "--server-key", str(cert / "key.pem"),
            "--customer-chain", str(self.path(_chain_file(customer))),
            *(["--database", database] if database else []),
        )  # fmt: skip
        self.init_output[name] = init.stdout + init.stderr
        assert self.manifest is not None
        ztpki("node", "import", "--dir", str(self.path(name)), str(self.manifest))
        return self.start(name, "node", "serve", "--dir", str(self.path(name)),
                          "--listen", "127.0.0.1:0", *serve)  # fmt: skip

    def add_customer(
        self,
        customer: str,
        node: str,
        *,
        ca_database: str | None = None,
        node_database: str | None = None,
        serve: Sequence[str] = (),
    ) -> Service:
        """A second customer CA system and its node for the same devices (each keeping its
        records in the PostgreSQL database given, if any); returns the node."""
        for args in _customer_commands(self.root, customer, ca_database):
            ztpki(*args)
        self.start(customer, "ca", "serve", "--dir", str(self.path(customer)),
                   "--listen", "127.0.0.1:0")  # fmt: skip
        return self.init_node(
            node, "node-cert", customer=customer, database=node_database, serve=serve
        )


def _chain_file(customer: str) -> str:
    return "customer-chain.pem" if customer == "C" else f"{customer}-chain.pem"


def _customer_commands(root: Path, customer: str, database: str | None) -> list[list[str]]:
    """`ca init` and friends for a customer CA system: its devices CA, a services CA, the
    node's client credential and the chain the node hands to devices."""
    c = str(root / customer)
    return [
        ["ca", "init", "--dir", c, "--name", "root", "--org", "Customer",
         *(["--database", database] if database else [])],
        ["ca", "init", "--dir", c, "--name", "devices", "--parent", "root", "--default",
         "--org", "Customer"],
        ["ca", "init", "--dir", c, "--name", "services", "--parent", "root",
         "--profile", "server", "--org", "Customer"],
        ["ca", "add-client", "--dir", c, "--name", "node", "--out", str(root / f"{customer}-node"),
         "--ca", "devices"],
        ["ca", "add-client", "--dir", c, "--name", "it", "--out", str(root / f"{customer}-it"),
         "--ca", "services", "--ip", "127.0.0.1"],
        ["ca", "export", "--dir", c, "--name", "devices",
         "--out", str(root / _chain_file(customer))],
    ]  # fmt: skip


def build_world(
    root: Path, *, devices: int, batch: str = "B1", databases: Mapping[str, str] | None = None
) -> World:
    """Everything a customization needs, made with the real CLI, node N serving.

    ``databases``: PostgreSQL URLs for the customer CA system ("C") and node N ("N"); each
    keeps its records in a SQLite file of its directory otherwise.
    """
    on = databases or {}
    world = World(root)
    f = str(root / "F")
    _parallel(
        [
            ["ca", "init", "--dir", f, "--name", "root", "--org", "Acme", "--country", "SE"],
            ["ca", "init", "--dir", f, "--name", "devices", "--parent", "root", "--default",
             "--org", "Acme", "--country", "SE"],
            ["ca", "init", "--dir", f, "--name", "servers", "--parent", "root",
             "--profile", "server", "--org", "Acme"],
            ["ca", "init", "--dir", f, "--name", "signers", "--parent", "root",
             "--profile", "manifest-signer", "--org", "Acme"],
            ["ca", "add-client", "--dir", f, "--name", "line1", "--out", str(root / "F-line1"),
             "--ca", "devices", "--ca", "signers"],
            ["ca", "add-client", "--dir", f, "--name", "customer", "--out", str(root / "F-cust"),
             "--ca", "servers", "--ip", "127.0.0.1"],
            ["factory", "export-trust", "--dir", f, "--name", "devices",
             "--out", str(root / "factory-trust.pem")],
        ],
        _customer_commands(root, "C", on.get("C")),
    )  # fmt: skip
    try:
        _start_and_manufacture(world, devices=devices, batch=batch, node_database=on.get("N"))
    except BaseException:
        world.stop()
        raise
    return world


def _start_and_manufacture(
    world: World, *, devices: int, batch: str, node_database: str | None
) -> None:
    root = world.root

    def serve(name: str) -> Service:
        return world.start(
            name, "ca", "serve", "--dir", str(root / name), "--listen", "127.0.0.1:0"
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        f_service, c_service = pool.map(serve, ["F", "C"])
    fa, ca = f_service.address, c_service.address
    _parallel(
        [
            ["factory", "signer", "--ca", fa, "--client-cred", str(root / "F-line1"),
             "--ca-name", "signers", "--name", "acme-line1", "--out", str(root / "signer")],
            ["factory", "manufacture", "--ca", fa, "--client-cred", str(root / "F-line1"),
             "--count", str(devices), "--batch", batch, "--out", str(root / "devices"),
             "--manifest-signer", str(root / "signer"), "--order", "PO-1",
             "--concurrency", "32"],
        ],
        [
            ["node", "request-server-cert", "--ca", fa, "--client-cred", str(root / "F-cust"),
             "--ca-name", "servers", "--ip", "127.0.0.1", "--out", str(root / "node-cert")],
            ["node", "request-server-cert", "--ca", ca, "--client-cred", str(root / "C-it"),
             "--ca-name", "services", "--name", "customer-service", "--ip", "127.0.0.1",
             "--out", str(root / "service-cert")],
        ],
    )  # fmt: skip
    world.manifest = root / "devices" / f"manifest-{batch}.json"
    world.device_ids = sorted(p.parent.name for p in (root / "devices").glob("*/device.json"))
    world.init_node("N", "node-cert", database=node_database)


# --- pytest fixtures (import them into a test module) -------------------------------------

_SHARED: dict[str, World] = {}
_USED: set[str] = set()
WORLD_DEVICES = 64


@pytest.fixture(scope="session")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    """One world for every device e2e module of the session (built once: ~10 s).

    Each module that imports this fixture gets its own fixture definition; the world itself
    is shared, and stopped by the session once, whichever module built it.
    """
    if "world" not in _SHARED:
        built = build_world(tmp_path_factory.mktemp("world"), devices=WORLD_DEVICES)
        _SHARED["world"] = built
        request.session.addfinalizer(built.stop)
    return _SHARED["world"]


def take_device(world: World) -> str:
    """A device no other test has used yet."""
    free = [d for d in world.device_ids if d not in _USED]
    assert free, f"the world has only {len(world.device_ids)} devices; raise WORLD_DEVICES"
    _USED.add(free[0])
    return free[0]
