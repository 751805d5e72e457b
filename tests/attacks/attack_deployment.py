"""The deployment the attacks run against: everything a manufacturer and a customer run, built
with the real CLI and served by real processes on loopback.

* factory CA system: root "froot", the default factory CA (temporary device certificates),
  "nodes" (server profile: the node's TLS certificate) and "manifests" (manifest signers);
* customer CA system: root "croot", the default device CA "devices", and "meters";
* customer node in front of the customer CA system, with short limits (node.toml [limits]) so
  the slow-client and crash cases take seconds, not minutes; EST label "meters" (add-ca);
* a production batch made by `ztpki factory manufacture`, two signed manifests of it (the
  older one is never imported: the replay case uses it) and the newer one imported.

Every passphrase is random per deployment, and every log line, answer and error text the run
produces is kept, so that the secret scan at the end has something real to search.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w
from cryptography import x509
from tests.attacks.attack_state import StateView
from tests.attacks.attack_wire import (
    Observed,
    Transcript,
    https_context,
    https_request,
)
from tests.support.environment import environment
from tests.support.services import Service, start

from ztpki.casystem.client import CAClient
from ztpki.casystem.directory import CASystemDirectory
from ztpki.cli import main as ztpki_main
from ztpki.credentials import Credential
from ztpki.demo.processes import ztpki_argv
from ztpki.device.activation import ActivatingClient, ActivationResult, KeyMode
from ztpki.device.communication import NodeAddress
from ztpki.device.memory import DeviceMemory, Identity, Phase
from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.keys import PrivateKey
from ztpki.pki.pem import load_certificates_pem
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest
from ztpki.protocol.est import CSR_TYPE

# Short enough that slow clients and stale leases resolve in seconds; lease_seconds must be at
# least twice ca_timeout plus 10 s (node.config.Limits checks it).
NODE_LIMITS: dict[str, float] = {
    "keepalive_timeout": 3.0,
    "handshake_timeout": 5.0,
    "body_timeout": 2.0,
    "ca_timeout": 4.0,
    "lease_seconds": 18.0,
}
MANUFACTURER = "Acme Devices"  # as the manifests name it (the signer's O)
DEVICES = 60
REFILL = 30
EST = "/.well-known/est"
PASSPHRASES = (
    "factory_ca",
    "customer_ca",
    "globex_ca",
    "ZTPKI_CLIENT_PASSPHRASE",
    "ZTPKI_NODE_PASSPHRASE",
    "ZTPKI_SIGNER_PASSPHRASE",
)


@dataclass(frozen=True)
class CommandResult:
    status: int
    out: str
    err: str


@dataclass
class DeviceUnderTest:
    path: Path
    device_id: str

    def memory(self) -> DeviceMemory:
        return DeviceMemory.open(self.path)

    def identity(self) -> Identity:
        return self.memory().identity()

    @property
    def key(self) -> PrivateKey:
        key = self.identity().private_key
        assert key is not None
        return key

    @property
    def certificate(self) -> x509.Certificate:
        cert = self.identity().certificate
        assert cert is not None
        return cert


@dataclass
class Deployment(StateView):
    root: Path
    passphrases: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    pool: list[DeviceUnderTest] = field(default_factory=list)
    used: list[DeviceUnderTest] = field(default_factory=list)
    served: list[str] = field(default_factory=list)  # positive controls, by device id
    batches: int = 1

    # ------------------------------------------------------------------ layout
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def factory_dir(self) -> Path:
        return self.root / "factory"

    @property
    def customer_dir(self) -> Path:
        return self.root / "customer"

    @property
    def transcript(self) -> Transcript:
        return Transcript(self.logs / "transcript.log")

    @property
    def env(self) -> dict[str, str]:
        common = {k: v for k, v in self.passphrases.items() if k.startswith("ZTPKI_")}
        return {**common, "ZTPKI_LOG_LEVEL": "info"}

    def ca_env(self, system: str) -> dict[str, str]:
        return {**self.env, "ZTPKI_CA_PASSPHRASE": self.passphrases[f"{system}_ca"]}

    # ------------------------------------------------------------------ commands
    def cli(self, *args: str, system: str | None = None, check: bool = True) -> CommandResult:
        """A `ztpki` command run in-process (the same code as the binary, no start-up cost)."""
        out, err = io.StringIO(), io.StringIO()
        env = self.ca_env(system) if system else self.env
        with (
            environment(env),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            status = ztpki_main(list(args))
        result = CommandResult(status, out.getvalue(), err.getvalue())
        self.transcript.add(f"ztpki {args[0]} {args[1]}", result.out + result.err)
        if check and status != 0:
            raise AssertionError(f"ztpki {' '.join(args)} exited {status}:\n{result.err}")
        return result

    def operator(self, *args: str, system: str | None = None) -> CommandResult:
        """A `ztpki` command in its own process, exactly as an operator runs it."""
        env = self.ca_env(system) if system else self.env
        done = subprocess.run(
            ztpki_argv(*args),
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=120,
        )
        self.transcript.add(f"ztpki {' '.join(args[:2])}", done.stdout + done.stderr)
        return CommandResult(done.returncode, done.stdout, done.stderr)

    # ------------------------------------------------------------------ services
    def serve_ca(self, system: str, *, port: int = 0) -> Service:
        directory = self.root / system
        log = self.logs / f"{system}-ca-{os.urandom(3).hex()}.log"
        service = start(
            [
                "ca",
                "serve",
                "--dir",
                str(directory),
                "--listen",
                f"127.0.0.1:{port}",
                "--key-workers",
                "1",
            ],
            log_path=log,
            env=self.ca_env(system),
        )
        self.services[system] = service
        return service

    def serve_node(self, *, port: int = 0, extra: Sequence[str] = ()) -> Service:
        log = self.logs / f"node-{os.urandom(3).hex()}.log"
        service = start(
            [
                "node",
                "serve",
                "--dir",
                str(self.node_dir),
                "--listen",
                f"127.0.0.1:{port}",
                *extra,
            ],
            log_path=log,
            env=self.env,
        )
        self.services["node"] = service
        return service

    @property
    def node(self) -> Service:
        return self.services["node"]

    @property
    def node_address(self) -> tuple[str, int]:
        return self.node.host, self.node.port

    def address(self, system: str) -> tuple[str, int]:
        service = self.services[system]
        return service.host, service.port

    def kill(self, name: str) -> int:
        """SIGKILL a service; returns its port, to restart it on the same one."""
        service = self.services[name]
        port = service.port
        service.kill()
        return port

    def pause(self, name: str) -> None:
        os.kill(self.services[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.services[name].pid, signal.SIGCONT)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            self.resume_process(service)
            service.stop()

    @staticmethod
    def resume_process(service: Service) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(service.pid, signal.SIGCONT)

    def log_mark(self, name: str = "node") -> tuple[Path, int]:
        path = self.services[name].log_path
        return path, path.stat().st_size

    @staticmethod
    def logged_since(mark: tuple[Path, int]) -> str:
        path, offset = mark
        with path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    def tls_refusal(self, mark: tuple[Path, int]) -> str:
        """The reason the service logged for refusing a TLS handshake since mark."""
        found = re.findall(r"TLS handshake failed: (.*)", self.logged_since(mark))
        assert found, "the service refused a TLS handshake without logging why"
        return str(found[-1]).strip()

    # ------------------------------------------------------------------ trust material
    def certificates(self, relative: str) -> list[x509.Certificate]:
        return load_certificates_pem((self.root / relative).read_bytes())

    @property
    def factory_root(self) -> x509.Certificate:
        return self.certificates("factory-bundle.pem")[-1]

    @property
    def node_anchors(self) -> list[x509.Certificate]:
        """What devices verify the node with: the factory root."""
        return [self.factory_root]

    def authority(self, system: str, name: str) -> CertificateAuthority:
        """A CA of a CA system, key decrypted: to forge certificates a real CA would sign."""
        return CASystemDirectory(self.root / system).load_authority(
            name, passphrase=self.passphrases[f"{system}_ca"].encode()
        )

    def credential(self, name: str) -> Credential:
        return Credential.load(
            self.root / name, passphrase=self.passphrases["ZTPKI_CLIENT_PASSPHRASE"].encode()
        )

    # ------------------------------------------------------------------ devices
    def take_device(self) -> DeviceUnderTest:
        """A listed device in the temporary phase that no other case has touched."""
        self.reserve(1)
        device = self.pool.pop(0)
        self.used.append(device)
        return device

    def reserve(self, count: int) -> None:
        """Have count devices ready; a case that snapshots the register calls this first.

        xdist may send most cases to one process: then another batch is made and imported.
        """
        while len(self.pool) < count:
            self.batches += 1
            batch = f"B{self.batches}"
            manifest = f"manifest-{batch}.json"
            self.pool += self.manufacture(batch, REFILL, manifests=(manifest,))
            self.cli("node", "import", "--dir", str(self.node_dir), str(self.root / manifest))

    def factory_client(self, address: str) -> list[str]:
        return ["--ca", address, "--client-cred", str(self.root / "cred-line1")]

    def manufacture(
        self, batch: str, count: int, *, manifests: Sequence[str]
    ) -> list[DeviceUnderTest]:
        """A production batch by `ztpki factory manufacture`, and its signed manifest(s)."""
        out = self.root / f"batch-{batch}"
        options = ["--count", str(count), "--batch", batch, "--model", "e-box", "--json"]
        options += ["--id-pattern", "ACME-{batch}-{n:04d}", "--out", str(out)]
        self.cli(
            "factory",
            "manufacture",
            *self.factory_client(self.services["factory"].address),
            *options,
        )
        for name in manifests:
            signing = ["--devices", str(out), "--signer", str(self.root / "signer")]
            self.cli("factory", "sign-manifest", *signing, "--out", str(self.root / name))
        devices = [
            DeviceUnderTest(p, json.loads((p / "device.json").read_text())["device_id"])
            for p in sorted(out.iterdir())
            if (p / "device.json").exists()
        ]
        assert len(devices) == count
        return devices

    def activate(
        self, device: DeviceUnderTest, *, key_mode: KeyMode = KeyMode.SIMPLEENROLL
    ) -> ActivationResult:
        node = NodeAddress.parse(f"https://{self.node.host}:{self.node.port}")
        client = ActivatingClient(device.memory(), node, key_mode=key_mode, timeout=30)
        return asyncio.run(client.activate())

    def serve_next_device(self, *, key_mode: KeyMode = KeyMode.SIMPLEENROLL) -> str:
        """The positive control: a fresh device customizes itself end to end."""
        device = self.take_device()
        self.served.append(device.device_id)
        result = self.activate(device, key_mode=key_mode)
        assert result.action == "activated", result
        assert device.memory().phase is Phase.CUSTOMIZED
        state = self.device_row(device.device_id)
        assert state is not None and state[0] == "customized", state
        live = self.live_serials("customer", device.device_id)
        assert live == [result.serial], (live, result.serial)
        return "next legitimate device served"

    def enroll_factory(self, device_id: str) -> EnrollmentAnswer:
        """A legitimate CA-client request to the factory CA system (its positive control)."""
        client = CAClient(self.address("factory"), self.credential("cred-line1"), pool_size=1)

        async def run() -> EnrollmentAnswer:
            try:
                return await client.enroll(
                    EnrollmentRequest(request_id=f"ctl-{secrets.token_hex(6)}", device_id=device_id)
                )
            finally:
                await client.close()

        return asyncio.run(run())

    # ------------------------------------------------------------------ EST requests
    def est(
        self,
        operation: str,
        *,
        key: PrivateKey | None,
        chain: Sequence[x509.Certificate],
        body: bytes | None = None,
        content_type: str | None = CSR_TYPE,
        encoding: str | None = "base64",
        headers: Mapping[str, str] | None = None,
        method: str = "POST",
        label: str | None = None,
    ) -> Observed:
        context = https_context(key=key, chain=chain, anchors=self.node_anchors)
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers.setdefault("Content-Type", content_type)
        if encoding is not None:
            all_headers.setdefault("Content-Transfer-Encoding", encoding)
        path = f"{EST}/{label}/{operation}" if label else f"{EST}/{operation}"
        return https_request(
            self.node_address,
            method,
            path,
            context=context,
            body=body,
            headers=all_headers,
            transcript=self.transcript,
            key_expected=operation == "serverkeygen",
        )

    def issued_by_operator(self, system: str) -> list[dict[str, Any]]:
        """`ztpki ca issued --json`, in its own process, as the operator checks it."""
        result = self.operator("ca", "issued", "--dir", str(self.root / system), "--json")
        assert result.status == 0, result.err
        records: list[dict[str, Any]] = json.loads(result.out)
        return records


def _secret() -> str:
    return secrets.token_urlsafe(24)


def set_limits(node_dir: Path, limits: Mapping[str, float]) -> None:
    path = node_dir / "node.toml"
    data = tomllib.loads(path.read_text())
    data.setdefault("limits", {}).update(limits)
    path.write_text(tomli_w.dumps(data))


def allow_cmp_mac(node_dir: Path, label: str) -> None:
    path = node_dir / "node.toml"
    data = tomllib.loads(path.read_text())
    data["ca"][label]["cmp_mac_protection"] = True
    path.write_text(tomli_w.dumps(data))


FACTORY_CAS: tuple[tuple[str, ...], ...] = (
    ("--name", "froot", "--org", "Acme Devices"),
    ("--name", "factory", "--parent", "froot", "--default", "--org", "Acme Devices"),
    ("--name", "nodes", "--parent", "froot", "--profile", "server"),
    (
        "--name",
        "manifests",
        "--parent",
        "froot",
        "--profile",
        "manifest-signer",
        "--org",
        MANUFACTURER,
    ),
    # A CA for subordinate CAs, which its policy keeps from issuing them over the protocol.
    ("--name", "subcas", "--parent", "froot", "--path-length", "1", "--profile", "ca"),
)
# A second manufacturer the node also buys from ("GLX-*" devices); its CA system never serves:
# the cases forge what its CAs would sign (d.authority("globex", ...)).
OTHER_MANUFACTURER = "Globex"
GLOBEX_CAS: tuple[tuple[str, ...], ...] = (
    ("--name", "groot", "--org", OTHER_MANUFACTURER),
    ("--name", "gfactory", "--parent", "groot", "--default", "--org", OTHER_MANUFACTURER),
    ("--name", "gmanifests", "--parent", "groot", "--profile", "manifest-signer"),
)
# What each factory CA-client may ask for (the README's set-up).
CLIENT_RIGHTS: dict[str, tuple[str, ...]] = {
    "line1": ("--ca", "factory", "--ca", "manifests"),
    "customer": ("--ca", "nodes", "--ip", "127.0.0.1", "--dns", "localhost"),
}
CUSTOMER_CAS: tuple[tuple[str, ...], ...] = (
    ("--name", "croot", "--org", "Customer Ltd"),
    ("--name", "devices", "--parent", "croot", "--default"),
    ("--name", "meters", "--parent", "croot"),  # behind the node's second EST label
)


def build(root: Path) -> Deployment:
    """Make every directory with the CLI and start the three services."""
    d = Deployment(root, passphrases={name: _secret() for name in PASSPHRASES})
    d.logs.mkdir(parents=True, exist_ok=True)
    _install_log_handler(d.logs / "in-process.log")
    f, c = ["--dir", str(d.factory_dir)], ["--dir", str(d.customer_dir)]
    for args in FACTORY_CAS:
        d.cli("ca", "init", *f, *args, system="factory")
    for args in CUSTOMER_CAS:
        d.cli("ca", "init", *c, *args, system="customer")
    for name, rights in CLIENT_RIGHTS.items():
        out = ["--out", str(root / f"cred-{name}")]
        d.cli("ca", "add-client", *f, "--name", name, *out, *rights, system="factory")
    node_cred = str(root / "cred-node")
    node = ["--name", "node", "--out", node_cred, "--ca", "devices", "--ca", "meters"]
    d.cli("ca", "add-client", *c, *node, system="customer")
    bundle, chain = str(root / "factory-bundle.pem"), str(root / "customer-chain.pem")
    d.cli("ca", "export", *f, "--name", "factory", "--out", bundle, system="factory")
    d.cli("ca", "export", *c, "--name", "devices", "--out", chain, system="customer")
    meters = ["--customer-chain", str(root / "meters-chain.pem")]
    d.cli("ca", "export", *c, "--name", "meters", "--out", meters[1], system="customer")
    server = root / "server"
    try:
        factory = d.serve_ca("factory")
        customer = d.serve_ca("customer")
        _manufacture(d, factory.address)
        request = ["--ca", factory.address, "--client-cred", str(root / "cred-customer")]
        request += ["--ca-name", "nodes", "--ip", "127.0.0.1", "--dns", "localhost"]
        d.cli("node", "request-server-cert", *request, "--out", str(server))
        init = ["--dir", str(d.node_dir), "--ca", customer.address, "--client-cred", node_cred]
        init += ["--manufacturer", MANUFACTURER, "--device-ids", "ACME-*"]
        init += ["--trust", bundle, "--customer-chain", chain]
        init += ["--server-cert", str(server / "cert.pem"), "--server-key", str(server / "key.pem")]
        d.cli("node", "init", *init)
        _other_manufacturer(d)
        add_ca = ["--dir", str(d.node_dir), "--label", "meters", "--ca-name", "meters", *meters]
        d.cli("node", "add-ca", *add_ca)
        set_limits(d.node_dir, NODE_LIMITS)
        allow_cmp_mac(d.node_dir, "meters")  # the shared-secret cases (test_attack_cmp_mac.py)
        d.cli("node", "import", "--dir", str(d.node_dir), str(root / "manifest-new.json"))
        d.serve_node()
    except BaseException:
        d.stop()
        raise
    return d


def _other_manufacturer(d: Deployment) -> None:
    g, bundle = ["--dir", str(d.root / "globex")], str(d.root / "globex-bundle.pem")
    for args in GLOBEX_CAS:
        d.cli("ca", "init", *g, *args, system="globex")
    d.cli("ca", "export", *g, "--name", "gfactory", "--out", bundle, system="globex")
    maker = ["--manufacturer", OTHER_MANUFACTURER, "--device-ids", "GLX-*", "--trust", bundle]
    d.cli("node", "add-manufacturer", "--dir", str(d.node_dir), *maker)


def _manufacture(d: Deployment, factory_address: str) -> None:
    root = d.root
    signer = ["--ca-name", "manifests", "--name", "signer-1", "--out", str(root / "signer")]
    d.cli("factory", "signer", *d.factory_client(factory_address), *signer)
    # Two manifests of the first batch: the older one is kept back for the replay case.
    d.pool = d.manufacture("B1", DEVICES, manifests=("manifest-old.json", "manifest-new.json"))


def _install_log_handler(path: Path) -> None:
    """Keep every log line this test process emits (library code run in-process)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.02) -> bool:
    """Poll a condition another process makes true (a service's state, not a timer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def now() -> datetime:
    return datetime.now(UTC)
