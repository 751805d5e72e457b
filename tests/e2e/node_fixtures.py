"""Building blocks of the customer-node end-to-end tests.

A whole deployment on loopback, made with the real CLI and run as real processes: a factory
CA system (temporary device certificates, the node's server certificate), a customer CA system
(operational certificates) and `ztpki node serve` in front of it. Devices are played by curl
and openssl, and by a Python EST client with an ssl context from ztpki.credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sqlite3
import ssl
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.support.environment import environment
from tests.support.services import Service, run_ztpki, start

from ztpki.casystem.client import CAClient
from ztpki.cli import main as ztpki_main
from ztpki.credentials import Credential, client_context
from ztpki.pki.keys import KeySpec, PrivateKey, decode_pkcs8, encode_pkcs8_pem, generate_private_key
from ztpki.pki.pem import fingerprint_sha256, load_certificate_der, load_certificates_pem
from ztpki.protocol.enrollment import EnrollmentRequest
from ztpki.protocol.est import CSR_TYPE, build_csr, encode_csr

# The one manufacturer of this world, as its manifests name it.
MANUFACTURER = "Acme Devices"

CA_PASSPHRASE = "ca-passphrase-for-tests"
CLIENT_PASSPHRASE = "client-passphrase-for-tests"
NODE_PASSPHRASE = "node-passphrase-for-tests"
ENV = {
    "ZTPKI_CA_PASSPHRASE": CA_PASSPHRASE,
    "ZTPKI_CLIENT_PASSPHRASE": CLIENT_PASSPHRASE,
    "ZTPKI_NODE_PASSPHRASE": NODE_PASSPHRASE,
}
# Short enough that the slow-client test is quick, long enough for a loaded 2-core machine.
TEST_LIMITS = {
    "keepalive_timeout": 3.0,
    "handshake_timeout": 5.0,
    "body_timeout": 3.0,
    "ca_timeout": 10.0,
}


def cli(*args: str) -> str:
    """One `ztpki` command run in-process (same code as the binary, no interpreter start-up)."""
    out = io.StringIO()
    with environment(ENV), contextlib.redirect_stdout(out):
        status = ztpki_main(list(args))
    assert status == 0, f"ztpki {' '.join(args)} exited {status}:\n{out.getvalue()}"
    return out.getvalue()


def ztpki(*args: str, check: bool = True) -> Any:
    """One `ztpki` command in its own process, exactly as an operator runs it."""
    return run_ztpki(*args, env=ENV, check=check, timeout=120)


@dataclass
class Device:
    """A device fresh from the factory: its temporary key and certificate, as PEM files."""

    device_id: str
    key: PrivateKey = field(repr=False)
    certificate: x509.Certificate
    cert_path: Path
    key_path: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint_sha256(self.certificate)

    def csr(self, key: PrivateKey | None = None, *, device_id: str | None = None) -> bytes:
        """A base64 CSR body naming device_id (default: this device) signed with key."""
        return encode_csr(
            build_csr(
                key or generate_private_key(KeySpec.EC_P256), device_id=device_id or self.device_id
            )
        )


def write_identity(
    directory: Path, key: PrivateKey, certs: Sequence[x509.Certificate]
) -> tuple[Path, Path]:
    """cert.pem and key.pem (plain PKCS#8, 0600) for curl --cert/--key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode_pkcs8_pem(key, passphrase=None))
    return cert_path, key_path


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


@dataclass
class NodeWorld:
    """Factory CA system, customer CA system and customer node, all running."""

    root: Path
    factory_dir: Path
    customer_dir: Path
    node_dir: Path
    factory: Service
    customer: Service
    node: Service
    factory_anchor: Path  # the factory root: what devices verify the node with
    line_credential: Credential
    services: list[Service] = field(default_factory=list)
    _count: int = 0

    # -------------------------------------------------------------- addresses
    @property
    def est(self) -> str:
        return f"https://{self.node.address}/.well-known/est"

    def url(self, operation: str, label: str | None = None) -> str:
        return f"{self.est}/{label}/{operation}" if label else f"{self.est}/{operation}"

    # -------------------------------------------------------------- devices
    def make_devices(
        self, count: int, *, listed: bool = True, fingerprint: bool = True, prefix: str = "dev"
    ) -> list[Device]:
        """Temporary certificates from the factory CA system; listed in the register by hand."""
        ids = []
        for _ in range(count):
            self._count += 1
            ids.append(f"{prefix}-{os.getpid()}-{self._count:04d}")
        devices = asyncio.run(self._enroll_temporary(ids))
        for device in devices:
            if listed:
                args = ["--fingerprint", device.fingerprint] if fingerprint else []
                args = args or ["--manufacturer", MANUFACTURER]
                cli("node", "add", "--dir", str(self.node_dir), device.device_id, *args)
        return devices

    async def _enroll_temporary(self, ids: list[str]) -> list[Device]:
        client = CAClient((self.factory.host, self.factory.port), self.line_credential)
        try:
            answers = await asyncio.gather(
                *(client.enroll(EnrollmentRequest(request_id=f"t-{i}", device_id=i)) for i in ids)
            )
        finally:
            await client.close()
        devices = []
        for device_id, answer in zip(ids, answers, strict=True):
            assert answer.private_key_der is not None
            key = decode_pkcs8(answer.private_key_der, passphrase=None)
            cert = load_certificate_der(answer.certificate_der)
            chain = [load_certificate_der(d) for d in answer.ca_certificates_der]
            cert_path, key_path = write_identity(
                self.root / "devices" / device_id, key, [cert, *chain[:-1]]
            )
            devices.append(Device(device_id, key, cert, cert_path, key_path))
        return devices

    def sign_manifest(
        self, entries: Sequence[tuple[str, str]], *, manifest_id: str | None = None
    ) -> Path:
        """A manifest of (device id, temporary certificate fingerprint), signed by the factory's
        manifest signer (a certificate from its manifest-signer CA)."""
        from datetime import UTC, datetime

        from ztpki.protocol.manifest import Manifest, ManifestEntry, new_manifest_id, sign_manifest

        key, chain = asyncio.run(self._manifest_signer())
        now = datetime.now(UTC)
        manifest = Manifest(
            manifest_id=manifest_id or new_manifest_id(),
            manufacturer=MANUFACTURER,
            batch="B1",
            order="PO-7",
            issued_at=now,
            entries=tuple(ManifestEntry(d, f, "meter-9", "B1", now) for d, f in entries),
        )
        path = self.root / f"manifest-{manifest.manifest_id}.json"
        path.write_bytes(sign_manifest(manifest, key=key, chain=chain))
        return path

    async def _manifest_signer(self) -> tuple[PrivateKey, list[x509.Certificate]]:
        client = CAClient((self.factory.host, self.factory.port), self.line_credential)
        try:
            answer = await client.enroll(
                EnrollmentRequest(
                    request_id=f"signer-{os.urandom(4).hex()}",
                    device_id="manifest-signer",
                    ca="manifests",
                    reissue=True,
                )
            )
        finally:
            await client.close()
        assert answer.private_key_der is not None
        chain = [
            load_certificate_der(d) for d in (answer.certificate_der, *answer.ca_certificates_der)
        ]
        return decode_pkcs8(answer.private_key_der, passphrase=None), chain[:-1]

    # -------------------------------------------------------------- state
    def register(self) -> dict[str, dict[str, Any]]:
        """The register, read straight from the node's database (read-only)."""
        query = "SELECT device_id, state, issued_serial, blocked_from, lease_token FROM device"
        url_file = self.node_dir / "database.url"
        if url_file.exists():
            import psycopg

            with psycopg.connect(url_file.read_text().strip()) as pg:
                rows = pg.execute(query).fetchall()
        else:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.node_dir / 'node.sqlite'}?mode=ro", uri=True)
            ) as db:
                rows = db.execute(query).fetchall()
        return {
            r[0]: {"state": r[1], "serial": r[2], "blocked_from": r[3], "lease": r[4]} for r in rows
        }

    def state(self, device_id: str) -> str:
        return self.register()[device_id]["state"]

    def audit(self, device_id: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = json.loads(
            cli("node", "audit", "--dir", str(self.node_dir), "--device", device_id, "--json")
        )
        return entries

    def issued(self, device_id: str) -> list[dict[str, Any]]:
        """What the customer CA system recorded for the device (`ztpki ca issued` in a process:
        SQLite shares one WAL index per file within a process, so an in-process reader could
        keep looking at the CA system's database as it was before a restart)."""
        result = ztpki(
            "ca", "issued", "--dir", str(self.customer_dir), "--device", device_id, "--json"
        )
        records: list[dict[str, Any]] = json.loads(result.stdout)
        return records

    def active(self, device_id: str) -> list[dict[str, Any]]:
        return [r for r in self.issued(device_id) if r["status"] == "active"]

    # -------------------------------------------------------------- Python EST client
    def context(
        self, cert: x509.Certificate | None = None, key: PrivateKey | None = None
    ) -> ssl.SSLContext:
        anchors = load_certificates_pem(self.factory_anchor.read_bytes())
        return client_context(
            key=key, chain=[cert] if cert is not None else [], server_anchors=anchors
        )

    def device_context(self, device: Device) -> ssl.SSLContext:
        return self.context(device.certificate, device.key)

    def request(
        self,
        method: str,
        url: str,
        *,
        context: ssl.SSLContext | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        return asyncio.run(
            request(method, url, context=context or self.context(), body=body, headers=headers)
        )

    def post_csr(
        self,
        device: Device,
        operation: str,
        csr: bytes,
        *,
        label: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> Response:
        return self.request(
            "POST",
            self.url(operation, label),
            context=context or self.device_context(device),
            body=csr,
            headers={"Content-Type": CSR_TYPE, "Content-Transfer-Encoding": "base64"},
        )

    # -------------------------------------------------------------- life cycle
    def restart_customer(self) -> None:
        port = self.customer.port
        self.customer = start_ca(self.customer_dir, self.root, listen=f"127.0.0.1:{port}")
        self.services.append(self.customer)

    def restart_node(self) -> None:
        """Stop `node serve` and start it again on the same directory (a new port)."""
        self.node.stop()
        self.node = start(
            ["node", "serve", "--dir", str(self.node_dir), "--listen", "127.0.0.1:0"],
            log_path=self.root / f"node-{os.urandom(3).hex()}.log",
            env=ENV,
        )
        self.services.append(self.node)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


async def request(
    method: str,
    url: str,
    *,
    context: ssl.SSLContext,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, headers=dict(headers or {}), ssl=context) as answer,
    ):
        return Response(answer.status, dict(answer.headers), await answer.read())


def _databases(backend: str) -> tuple[str | None, str | None]:
    """Fresh (customer CA system, node) database URLs for ``backend``; None for SQLite."""
    if backend == "sqlite":
        return None, None
    if backend == "postgresql":
        from tests.support.postgres import shared_cluster

        cluster = shared_cluster()
        return cluster.fresh_database("ca"), cluster.fresh_database("node")
    raise AssertionError(f"unknown backend {backend}")


def start_ca(directory: Path, logs: Path, *, listen: str = "127.0.0.1:0") -> Service:
    log = logs / f"{directory.name}-{os.urandom(3).hex()}.log"
    return start(
        ["ca", "serve", "--dir", str(directory), "--listen", listen, "--key-workers", "1"],
        log_path=log,
        env=ENV,
    )


def set_limits(node_dir: Path, limits: Mapping[str, float]) -> None:
    path = node_dir / "node.toml"
    data = tomllib.loads(path.read_text())
    data.setdefault("limits", {}).update(limits)
    path.write_text(tomli_w.dumps(data))


def merge_settings(node_dir: Path, settings: Mapping[str, Any]) -> None:
    """Merge tables into node.toml (nested tables such as {"ca": {"meters": {...}}} too)."""

    def merge(into: dict[str, Any], more: Mapping[str, Any]) -> None:
        for key, value in more.items():
            if isinstance(value, Mapping):
                merge(into.setdefault(key, {}), value)
            else:
                into[key] = value

    path = node_dir / "node.toml"
    data = tomllib.loads(path.read_text())
    merge(data, settings)
    path.write_text(tomli_w.dumps(data))


def build_world(
    root: Path,
    *,
    limits: Mapping[str, float] = TEST_LIMITS,
    device_ids: str = "*",
    other_manufacturers: Sequence[tuple[str, Path, str]] = (),
    settings: Mapping[str, Any] | None = None,
    backend: str = "sqlite",
    databases: tuple[str, str] | None = None,
    serve_args: Sequence[str] = (),
) -> NodeWorld:
    """Make and start the three services; the caller stops them (world.stop()).

    The node buys from MANUFACTURER (ids device_ids) and from each (name, trust bundle,
    device-id pattern) of other_manufacturers. ``backend="postgresql"``: the customer CA
    system and the node keep their records in databases of the test process's PostgreSQL
    cluster (the factory stays on SQLite). ``databases``: the (customer CA system, node)
    database URLs to use instead, e.g. of a cluster the caller restarts. ``serve_args``: more
    options of `node serve` (e.g. --console-listen)."""
    factory, customer, node_dir = root / "factory", root / "customer", root / "node"
    customer_db, node_db = databases or _databases(backend)
    cli("ca", "init", "--dir", str(factory), "--name", "froot", "--org", "Acme Devices")
    cli("ca", "init", "--dir", str(factory), "--name", "factory", "--parent", "froot", "--default")
    cli(
        "ca",
        "init",
        "--dir",
        str(factory),
        "--name",
        "nodes",
        "--parent",
        "froot",
        "--profile",
        "server",
    )
    cli(
        "ca",
        "init",
        "--dir",
        str(factory),
        "--name",
        "manifests",
        "--parent",
        "froot",
        "--profile",
        "manifest-signer",
    )
    cli(
        "ca",
        "add-client",
        "--dir",
        str(factory),
        "--name",
        "line1",
        "--out",
        str(root / "cred-line1"),
        "--ca",
        "factory",
        "--ca",
        "manifests",
    )
    cli(
        "ca",
        "add-client",
        "--dir",
        str(factory),
        "--name",
        "customer-x",
        "--out",
        str(root / "cred-customer"),
        "--ca",
        "nodes",
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
    )
    cli("ca", "init", "--dir", str(customer), "--name", "croot", "--org", "Customer X",
        *(["--database", customer_db] if customer_db else []))  # fmt: skip
    cli(
        "ca",
        "init",
        "--dir",
        str(customer),
        "--name",
        "operational",
        "--parent",
        "croot",
        "--default",
    )
    cli("ca", "init", "--dir", str(customer), "--name", "meters", "--parent", "croot")
    cli(
        "ca",
        "add-client",
        "--dir",
        str(customer),
        "--name",
        "node",
        "--out",
        str(root / "cred-node"),
        "--ca",
        "operational",
        "--ca",
        "meters",
    )
    cli(
        "ca",
        "export",
        "--dir",
        str(factory),
        "--name",
        "factory",
        "--out",
        str(root / "factory-bundle.pem"),
    )
    cli(
        "ca",
        "export",
        "--dir",
        str(customer),
        "--name",
        "operational",
        "--out",
        str(root / "customer-chain.pem"),
    )
    cli(
        "ca",
        "export",
        "--dir",
        str(customer),
        "--name",
        "meters",
        "--out",
        str(root / "meters-chain.pem"),
    )
    services: list[Service] = []
    try:
        factory_service = start_ca(factory, root)
        services.append(factory_service)
        customer_service = start_ca(customer, root)
        services.append(customer_service)
        cli(
            "node",
            "request-server-cert",
            "--ca",
            factory_service.address,
            "--client-cred",
            str(root / "cred-customer"),
            "--ca-name",
            "nodes",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            str(root / "server"),
        )
        cli(
            "node",
            "init",
            "--dir",
            str(node_dir),
            "--ca",
            customer_service.address,
            "--client-cred",
            str(root / "cred-node"),
            "--manufacturer",
            MANUFACTURER,
            "--device-ids",
            device_ids,
            "--trust",
            str(root / "factory-bundle.pem"),
            "--server-cert",
            str(root / "server" / "cert.pem"),
            "--server-key",
            str(root / "server" / "key.pem"),
            "--customer-chain",
            str(root / "customer-chain.pem"),
            "--ca-name",
            "operational",
            *(["--database", node_db] if node_db else []),
        )
        cli(
            "node",
            "add-ca",
            "--dir",
            str(node_dir),
            "--label",
            "meters",
            "--ca-name",
            "meters",
            "--customer-chain",
            str(root / "meters-chain.pem"),
            "--key-algorithm",
            "ec-p384",
        )
        for name, bundle, pattern in other_manufacturers:
            maker = ["--manufacturer", name, "--trust", str(bundle), "--device-ids", pattern]
            cli("node", "add-manufacturer", "--dir", str(node_dir), *maker)
        set_limits(node_dir, limits)
        merge_settings(node_dir, settings or {})
        node_service = start(
            ["node", "serve", "--dir", str(node_dir), "--listen", "127.0.0.1:0", *serve_args],
            log_path=root / "node.log",
            env=ENV,
        )
        services.append(node_service)
    except BaseException:
        for service in reversed(services):
            service.stop()
        raise
    return NodeWorld(
        root=root,
        factory_dir=factory,
        customer_dir=customer,
        node_dir=node_dir,
        factory=factory_service,
        customer=customer_service,
        node=node_service,
        factory_anchor=root / "server" / "ca.pem",
        line_credential=Credential.load(root / "cred-line1", passphrase=CLIENT_PASSPHRASE.encode()),
        services=services,
    )
