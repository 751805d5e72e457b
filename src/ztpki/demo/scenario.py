"""`ztpki demo`: the whole factory-to-customer flow on loopback, in separate processes.

Factory CA system, customer CA system and customer node run as child processes, exactly as
an operator would start them; the production batch is made by `ztpki factory manufacture`;
then every device is plugged in at once and customizes itself in this process.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ztpki.demo.processes import ServiceProcess, start_service, ztpki_argv
from ztpki.demo.softhsm import demo_tokens
from ztpki.errors import ZtpkiError
from ztpki.secretfiles import write_private_file

DEVICE_PREFIX = "ACME"
# The node's host name: under the site's DNS-SD domain (a `.test` name, RFC 6761), which the
# site DNS resolves to 127.0.0.1 for the devices that discover the node. Not `localhost`: a
# single-label name in a certificate is what pkilint (and public CAs) refuse.
NODE_HOST = "node.demo.ztpki.test"
CONSOLE_OPERATOR = "demo-operator"


class DemoStepFailed(ZtpkiError):
    code = "demo-failed"


@dataclass
class DemoSettings:
    workdir: Path
    devices: int = 20
    concurrency: int = 32
    keep_running: bool = False
    hsm: bool = False  # every CA key in a SoftHSM2 token (demo/softhsm.py)
    verbose: bool = False  # log lines on the terminal too (else only in logs/demo.log)
    wide: bool = False  # the identity table with issuers and fingerprints


@dataclass
class DemoEnvironment:
    """Paths, passphrases and processes of one demo run."""

    settings: DemoSettings
    env: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.settings.workdir

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run one ztpki command to completion; its output is logged and returned, not shown."""
        log = self.path("logs", "commands.log")
        with log.open("a") as out:
            out.write(f"$ ztpki {' '.join(args)}\n")
            out.flush()
            result = subprocess.run(
                ztpki_argv(*args),
                env={**os.environ, **self.env, **(env or {})},
                stdout=subprocess.PIPE,
                stderr=out,
                text=True,
                check=False,
            )
            if result.stdout:
                out.write(result.stdout)
        if result.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-12:])
            raise DemoStepFailed(f"`ztpki {' '.join(args)}` failed; {log} ends:\n{tail}")
        return result.stdout or ""

    def serve(self, name: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        service = start_service(
            args,
            log_path=self.path("logs", f"{name}.log"),
            env={**self.env, **(env or {})},
            name=name,
        )
        self.services[name] = service
        return service

    def stop_all(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.phases[name] = time.perf_counter() - start


def new_environment(settings: DemoSettings) -> DemoEnvironment:
    """Create the work directory with fresh random passphrases (files 0600)."""
    root = settings.workdir
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "secrets").mkdir(mode=0o700, exist_ok=True)
    env: dict[str, str] = {}
    for var in (
        "ZTPKI_CLIENT_PASSPHRASE",
        "ZTPKI_NODE_PASSPHRASE",
        "ZTPKI_SIGNER_PASSPHRASE",
        "ZTPKI_EXPORT_PASSPHRASE",
    ):
        env[var] = _secret(root, var)
    demo = DemoEnvironment(settings, env)
    demo.env["ZTPKI_LOG_LEVEL"] = "info"
    if settings.hsm:
        demo.env.update(demo_tokens(root, ("factory-ca", "customer-ca")))
    return demo


def _secret(root: Path, name: str) -> str:
    value = secrets.token_urlsafe(24)
    write_private_file(root / "secrets" / f"{name.lower()}.txt", (value + "\n").encode())
    return value


@dataclass(frozen=True)
class CASpec:
    """One CA of a demo CA system, as `ztpki ca init` creates it."""

    name: str
    parent: str | None = None
    profile: str = "device"
    org: str | None = None
    common_name: str | None = None
    default: bool = False

    def init_args(self, directory: str) -> list[str]:
        args = ["ca", "init", "--dir", directory, "--name", self.name, "--profile", self.profile]
        for option, value in (
            ("--parent", self.parent),
            ("--org", self.org),
            ("--common-name", self.common_name),
        ):
            if value:
                args += [option, value]
        return [*args, "--default"] if self.default else args


FACTORY_CAS = (
    CASpec("factory-root", org="ACME"),
    CASpec("factory", "factory-root", org="ACME", common_name="ACME Factory CA", default=True),
    CASpec("node-servers", "factory-root", profile="server", org="ACME"),
    CASpec("manifests", "factory-root", profile="manifest-signer", org="ACME"),
)
CUSTOMER_CAS = (
    CASpec("customer-root", org="Customer Ltd"),
    CASpec(
        "devices",
        "customer-root",
        org="Customer Ltd",
        common_name="Customer Device CA",
        default=True,
    ),
    CASpec("services", "customer-root", profile="server", org="Customer Ltd"),
)


def start_ca_system(
    demo: DemoEnvironment,
    name: str,
    cas: tuple[CASpec, ...],
    *,
    clients: dict[str, tuple[str, ...]],
    exports: dict[str, str],
) -> ServiceProcess:
    """Create a CA system with its CAs and CA-clients (each with what it may ask for: the
    `ca add-client` entitlement options), export chains, and serve it."""
    directory, env = str(demo.path(name)), {"ZTPKI_CA_PASSPHRASE": _secret(demo.root, name)}
    for spec in cas:
        in_token = ("--pkcs11", f"pkcs11:token={name};object={spec.name}")
        demo.run(*spec.init_args(directory), *(in_token if demo.settings.hsm else ()), env=env)
    for client, rights in clients.items():
        cred = str(demo.path(f"{client}.cred"))
        add = ("ca", "add-client", "--dir", directory, "--name", client, "--out", cred)
        demo.run(*add, *rights, env=env)
    for ca_name, out in exports.items():
        demo.run(
            "ca", "export", "--dir", directory, "--name", ca_name, "--out", str(demo.path(out))
        )
    return demo.serve(name, "ca", "serve", "--dir", directory, "--listen", "127.0.0.1:0", env=env)


def start_factory(demo: DemoEnvironment) -> ServiceProcess:
    """Factory CA system (5): root, factory CA, node-server CA, manifest CA; the line-1
    client for devices and the manifest signer, customer-1 for the customer's node."""
    return start_ca_system(
        demo,
        "factory-ca",
        FACTORY_CAS,
        clients={
            "line-1": (
                *("--ca", "factory", "--ca", "manifests"),
                *("--device-ids", f"{DEVICE_PREFIX}-*", "--device-ids", "manifest-signer-*"),
            ),
            "customer-1": ("--ca", "node-servers", "--ip", "127.0.0.1", "--dns", NODE_HOST),
        },
        exports={"factory": "factory-bundle.pem"},
    )


def start_customer_ca(demo: DemoEnvironment) -> ServiceProcess:
    """Customer CA system (11): its own root, the device CA, a CA for its own TLS services."""
    return start_ca_system(
        demo,
        "customer-ca",
        CUSTOMER_CAS,
        clients={"node": ("--ca", "devices", "--ca", "services", "--ip", "127.0.0.1")},
        exports={"devices": "customer-chain.pem"},
    )


def manufacture(demo: DemoEnvironment, factory: ServiceProcess, count: int) -> Path:
    """Loading station (4): a batch with a signed shipping manifest (its output, with the
    batch's table, in logs/commands.log: the demo prints its own)."""
    cred = str(demo.path("line-1.cred"))
    demo.run(
        "factory",
        "signer",
        "--ca",
        factory.address,
        "--client-cred",
        cred,
        "--ca-name",
        "manifests",
        "--name",
        "manifest-signer-1",
        "--out",
        str(demo.path("signer.cred")),
    )
    batch = demo.path("batch")
    demo.run(
        "factory",
        "manufacture",
        "--ca",
        factory.address,
        "--client-cred",
        cred,
        "--count",
        str(count),
        "--batch",
        "B1",
        "--model",
        "e-box",
        "--id-pattern",
        DEVICE_PREFIX + "-{batch}-{n:04d}",
        "--out",
        str(batch),
        "--concurrency",
        "16",
        "--manifest-signer",
        str(demo.path("signer.cred")),
    )
    return batch


def start_node(
    demo: DemoEnvironment, factory: ServiceProcess, customer: ServiceProcess, batch: Path
) -> ServiceProcess:
    """Customer node (10): server certificate from the maker's node-server CA, register, EST."""
    node = str(demo.path("node"))
    server_cred = demo.path("node-server.cred")
    demo.run(
        "node",
        "request-server-cert",
        "--ca",
        factory.address,
        "--client-cred",
        str(demo.path("customer-1.cred")),
        "--ca-name",
        "node-servers",
        "--ip",
        "127.0.0.1",
        "--dns",
        NODE_HOST,
        "--out",
        str(server_cred),
    )
    demo.run(
        "node",
        "init",
        "--dir",
        node,
        "--ca",
        customer.address,
        "--client-cred",
        str(demo.path("node.cred")),
        "--manufacturer",
        DEVICE_PREFIX,
        "--trust",
        str(demo.path("factory-bundle.pem")),
        "--device-ids",
        DEVICE_PREFIX + "-*",
        "--customer-chain",
        str(demo.path("customer-chain.pem")),
        "--server-cert",
        str(server_cred / "cert.pem"),
        "--server-key",
        str(server_cred / "key.pem"),
    )
    demo.run("node", "import", "--dir", node, str(manifest_path(batch)))
    password = demo.path("secrets", "console_operator_password.txt")
    write_private_file(password, (secrets.token_urlsafe(12) + "\n").encode())
    add = ("node", "add-operator", "--dir", node, CONSOLE_OPERATOR, "--role", "operator")
    demo.run(*add, "--password-file", str(password))
    return demo.serve(
        "node",
        *("node", "serve", "--dir", node, "--listen", "127.0.0.1:0"),
        *("--console-listen", "127.0.0.1:0"),
    )


def console_login(demo: DemoEnvironment) -> tuple[str, str, Path] | None:
    """The web console's URL, operator name and password file (None: no console).

    `node serve` prints the URL on stderr (the node's log) before its readiness line."""
    node = demo.services.get("node")
    if node is None:
        return None
    for line in node.log().splitlines():
        if line.startswith(CONSOLE_PREFIX):
            url = line[len(CONSOLE_PREFIX) :].strip()
            return url, CONSOLE_OPERATOR, demo.path("secrets", "console_operator_password.txt")
    return None


CONSOLE_PREFIX = "web console on "


def manifest_path(batch: Path) -> Path:
    candidates = sorted(p for p in batch.glob("*.json") if "manifest" in p.name)
    if not candidates:
        raise DemoStepFailed(f"the batch in {batch} has no signed manifest")
    return candidates[0]


def device_dirs(batch: Path) -> list[Path]:
    return sorted(p for p in batch.iterdir() if (p / "device.json").exists())


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
