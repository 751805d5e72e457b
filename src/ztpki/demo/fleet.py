"""Plug in every device at once and let each customize itself; then prove the result."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from ztpki.device.activation import ActivationError, KeyMode
from ztpki.device.cmp_activation import EnrollmentProtocol, activating_client
from ztpki.device.communication import NodeAddress
from ztpki.device.connect import connect, identity_ssl_context, operational_ssl_context
from ztpki.device.memory import DeviceMemory
from ztpki.device.node_finder import NodeFinder
from ztpki.errors import ZtpkiError
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import device_id_of
from ztpki.pki.pem import fingerprint_sha256, serial_hex
from ztpki.protocol.est import build_csr, encode_csr


@dataclass(frozen=True)
class IdentityView:
    issuer: str
    serial: str
    fingerprint: str
    not_after: str

    @classmethod
    def of(cls, certificate: x509.Certificate) -> IdentityView:
        return cls(
            issuer=certificate.issuer.rfc4514_string(),
            serial=serial_hex(certificate),
            fingerprint=fingerprint_sha256(certificate),
            not_after=certificate.not_valid_after_utc.isoformat(timespec="seconds"),
        )


@dataclass
class DeviceOutcome:
    device_id: str
    path: Path
    key_mode: KeyMode
    # EST, or CMP (RFC 9483): central key generation for serverkeygen, an ir otherwise.
    protocol: EnrollmentProtocol = EnrollmentProtocol.EST
    before: IdentityView | None = None
    after: IdentityView | None = None
    seconds: float = 0.0
    error: str | None = None
    greeted: bool = False
    discover: bool = False  # no address given: find the node by DNS-SD (demo/site_dns.py)


def snapshot(path: Path) -> IdentityView | None:
    certificate = DeviceMemory.open(path).identity().certificate
    return IdentityView.of(certificate) if certificate is not None else None


async def customize_all(
    outcomes: list[DeviceOutcome],
    node_url: str,
    *,
    concurrency: int,
    advance: Callable[[], None],
    finder: NodeFinder | None = None,
) -> None:
    """Activate every device concurrently (bounded), recording each result; a device marked
    ``discover`` is given no address and asks ``finder`` (as the agent does)."""
    slots = asyncio.Semaphore(concurrency)
    node = NodeAddress.parse(node_url)

    async def one(outcome: DeviceOutcome) -> None:
        async with slots:
            start = time.perf_counter()
            memory = DeviceMemory.open(outcome.path)
            try:
                found = None
                if outcome.discover and finder is not None:
                    found = await finder.choose(memory, None, now=_now, timeout=10)
                    if found is None:
                        raise ZtpkiError("no customer node found by DNS-SD")
                client = activating_client(
                    outcome.protocol,
                    memory,
                    found or node,
                    key_mode=outcome.key_mode,
                    remember_node=found is None,
                )
                await client.activate()
                outcome.after = snapshot(outcome.path)
            except (ActivationError, ZtpkiError) as exc:
                outcome.error = exc.message
            outcome.seconds = time.perf_counter() - start
            advance()

    await asyncio.gather(*(one(o) for o in outcomes))


def _now() -> datetime:
    return datetime.now(UTC)


def greet(path: Path, port: int, *, server_anchors: list[x509.Certificate]) -> str:
    """GET / on the customer service with the device's current identity; the answer text."""
    memory = DeviceMemory.open(path)
    context = operational_ssl_context(memory, server_anchors=server_anchors)
    response = connect(f"https://127.0.0.1:{port}/", context, timeout=10)
    return response.body.decode(errors="replace").strip()


def temporary_identity_refused(
    path: Path, port: int, *, server_anchors: list[x509.Certificate]
) -> bool:
    """True when the customer service refuses the device's current (temporary) identity."""
    context = identity_ssl_context(DeviceMemory.open(path), server_anchors=server_anchors)
    try:
        connect(f"https://127.0.0.1:{port}/", context, timeout=10)
    except (ssl.SSLError, OSError, ZtpkiError):
        return True
    return False


def replay_temporary(
    export_dir: Path, node_host: str, node_port: int, *, key_passphrase: str
) -> tuple[int, str]:
    """simpleenroll with a saved copy of a customized device's temporary identity."""
    context = ssl.create_default_context(cafile=str(export_dir / "trust.pem"))
    context.load_cert_chain(
        export_dir / "cert.pem", export_dir / "key.pem", password=key_passphrase
    )
    certificate = x509.load_pem_x509_certificate((export_dir / "cert.pem").read_bytes())
    device_id = device_id_of(certificate) or "unknown"
    csr = encode_csr(build_csr(generate_private_key(KeySpec.EC_P256), device_id=device_id))
    connection = http.client.HTTPSConnection(node_host, node_port, context=context, timeout=10)
    try:
        connection.request(
            "POST",
            "/.well-known/est/simpleenroll",
            body=csr,
            headers={"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"},
        )
        response = connection.getresponse()
        return response.status, response.read(2048).decode(errors="replace").strip()
    except (ssl.SSLError, OSError) as exc:
        return 0, f"TLS refused: {exc}"
    finally:
        connection.close()
