"""The web console's end-to-end world: the node world of node_fixtures with `node serve
--console-listen`, an operator CA ([console] operator_ca) and three operators: ``olga``
(operator, password), ``victor`` (viewer, password) and ``carol`` (operator, certificate
only). ``ConsoleWorld.client()`` is one browser (tests.support.console_client)."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from node_fixtures import NodeWorld, build_world, cli
from tests.support.console_client import ConsoleClient, Page
from tests.support.operator_pki import OperatorPKI, make_operator_pki

from ztpki.credentials import client_context
from ztpki.pki.pem import load_certificates_pem

OPERATOR, OPERATOR_PASSWORD = "olga", "olga-password-for-tests"
VIEWER, VIEWER_PASSWORD = "victor", "victor-password-for-tests"
CERT_OPERATOR = "carol"
_CONSOLE = re.compile(r"web console on (https://\S+)")


@dataclass
class ConsoleWorld:
    world: NodeWorld
    url: str
    pki: OperatorPKI

    @property
    def node_dir(self) -> Path:
        return self.world.node_dir

    def stop(self) -> None:
        self.world.stop()

    def context(self, cert: str | None = None) -> ssl.SSLContext:
        """A client context trusting the node's server certificate; with ``cert`` (a name of
        OperatorPKI.cert), presenting that client certificate."""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        anchors = load_certificates_pem(self.world.factory_anchor.read_bytes())
        if cert is None:
            return client_context(key=None, chain=[], server_anchors=anchors)
        cert_path, key_path = self.pki.cert(cert)
        key = load_pem_private_key(key_path.read_bytes(), password=None)
        chain = load_certificates_pem(cert_path.read_bytes())
        return client_context(key=key, chain=chain, server_anchors=anchors)  # type: ignore[arg-type]

    def client(self, cert: str | None = None) -> ConsoleClient:
        """One browser; with ``cert``, presenting that client certificate (OperatorPKI)."""
        return ConsoleClient(self.url, self.context(cert))

    def audit_all(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = json.loads(
            cli("node", "audit", "--dir", str(self.node_dir), "--json")
        )
        return entries

    def audit_count(self) -> int:
        return len(self.audit_all())


def add_operator(node_dir: Path, name: str, role: str, password: str | None) -> None:
    args = ["node", "add-operator", "--dir", str(node_dir), name, "--role", role]
    if password is None:
        cli(*args, "--certificate-only")
        return
    path = node_dir.parent / f"{name}.password"
    path.write_text(password + "\n")
    cli(*args, "--password-file", str(path))


def build_console_world(
    root: Path, *, settings: Mapping[str, Any] | None = None, backend: str = "sqlite"
) -> ConsoleWorld:
    pki = make_operator_pki(root / "operator-pki")
    console_settings = {"console": {"operator_ca": str(pki.ca), **dict(settings or {})}}
    world = build_world(
        root,
        settings=console_settings,
        backend=backend,
        serve_args=["--console-listen", "127.0.0.1:0", "--workers", "2"],
    )
    try:
        log = (root / "node.log").read_text()
        found = _CONSOLE.search(log)
        assert found, f"node serve did not announce its console:\n{log[-2000:]}"
        add_operator(world.node_dir, OPERATOR, "operator", OPERATOR_PASSWORD)
        add_operator(world.node_dir, VIEWER, "viewer", VIEWER_PASSWORD)
        add_operator(world.node_dir, CERT_OPERATOR, "operator", None)
    except BaseException:
        world.stop()
        raise
    return ConsoleWorld(world, found.group(1).rstrip("/"), pki)


async def customize(world: NodeWorld, devices: list[Any]) -> None:
    """Each device enrolls (simpleenroll with a new key) and confirms with its new
    certificate (a first request with it), one after another: a small fleet run."""
    from ztpki.pki.keys import KeySpec, generate_private_key
    from ztpki.protocol.est import CSR_TYPE, decode_certs_only

    async with aiohttp.ClientSession() as session:
        for device in devices:
            new_key = generate_private_key(KeySpec.EC_P256)
            async with session.post(
                world.url("simpleenroll"),
                data=device.csr(new_key),
                headers={"Content-Type": CSR_TYPE},
                ssl=world.device_context(device),
            ) as answer:
                assert answer.status == 200, await answer.text()
                (cert,) = decode_certs_only(await answer.read())
            async with session.get(
                world.url("csrattrs"), ssl=world.context(cert, new_key)
            ) as confirmed:
                assert confirmed.status == 200, await confirmed.text()


def tampered(manifest: bytes, device_id: str) -> bytes:
    """The signed manifest with one device added to its payload (signature left as it was)."""
    import base64

    genuine = json.loads(manifest)
    payload = json.loads(base64.urlsafe_b64decode(genuine["payload"] + "=="))
    payload["devices"].append({**payload["devices"][0], "device_id": device_id})
    encoded = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    genuine["payload"] = base64.urlsafe_b64encode(encoded).rstrip(b"=").decode()
    return json.dumps(genuine, separators=(",", ":"), sort_keys=True).encode() + b"\n"


__all__ = ["ConsoleClient", "Page"]
