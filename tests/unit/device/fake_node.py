"""An in-process EST node (RFC 7030) for the device's unit tests: real TLS on 127.0.0.1.

It does what the customer node does towards a device, in a few lines: mutual TLS (client
certificate optional at the TLS layer), temporary certificates from the factory CA,
operational ones from the customer's issuing CA, supersede-on-retry until the first
request with the new certificate, then the temporary certificate is refused (403). Tests
steer it with ``queued`` (canned answers for the next enrollments) and ``tamper`` (crafted
bad answers).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ztpki.credentials import server_context
from ztpki.device import DeviceMemory, Phase
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PublicKey, encode_pkcs8, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject, device_id_of
from ztpki.pki.pem import load_certificate_der, serial_hex
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.est import (
    CERTS_ONLY_TYPE,
    CSRATTRS_TYPE,
    decode_csr,
    encode_certs_only,
    encode_csrattrs,
    encode_serverkeygen,
)


def now() -> datetime:
    return datetime.now(UTC)


def make_root(name: str) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject(name, SubjectFields(organization="Test"), serial_number=None)
    cert = create_self_signed_ca(
        key, subject, now=now() - timedelta(days=10), validity=timedelta(days=40)
    )
    return CertificateAuthority(name=name, key=key, certificate=cert)


def make_sub(parent: CertificateAuthority, name: str) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject(name, SubjectFields(organization="Test"), serial_number=None),
        profile=CertificateProfile.CA,
        not_before=now() - timedelta(days=10),
        not_after=now() + timedelta(days=20),
        path_length=0,
    )
    cert = parent.issue(key.public_key(), grant)
    return CertificateAuthority(name=name, key=key, certificate=cert, parents=parent.chain)


def issue(
    ca: CertificateAuthority,
    public_key: PublicKey,
    device_id: str,
    *,
    profile: CertificateProfile = CertificateProfile.DEVICE,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ip: str | None = None,
) -> x509.Certificate:
    start = not_before or now() - timedelta(minutes=5)
    grant = IssuanceGrant(
        subject=build_subject(device_id, SubjectFields(), serial_number=device_id),
        profile=profile,
        not_before=start,
        not_after=not_after or now() + timedelta(days=10),
        ip_addresses=(ip,) if ip else (),
    )
    return ca.issue(public_key, grant)


@dataclass
class Pki:
    """Factory root, customer root + issuing CA, and a rogue CA nobody trusts."""

    factory: CertificateAuthority = field(default_factory=lambda: make_root("Factory Root"))
    customer_root: CertificateAuthority = field(default_factory=lambda: make_root("Customer Root"))
    rogue: CertificateAuthority = field(default_factory=lambda: make_root("Rogue Root"))
    customer: CertificateAuthority = field(init=False)

    def __post_init__(self) -> None:
        self.customer = make_sub(self.customer_root, "Customer Devices")

    def manufacture(self, path: Path, device_id: str) -> DeviceMemory:
        """A device directory holding a temporary identity from the factory CA."""
        memory = DeviceMemory.create(path, device_id=device_id)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(self.factory, key.public_key(), device_id)
        memory.replace_identity(
            phase=Phase.TEMPORARY,
            private_key=key,
            certificate=cert,
            ca_certificates=[self.factory.certificate],
        )
        memory.set_trust_anchors([self.factory.certificate])
        return memory


@dataclass
class Register:
    state: str = "listed"  # listed, issued, customized, blocked
    live: set[str] = field(default_factory=set)
    pending: str | None = None


@dataclass
class FakeNode:
    pki: Pki
    server_ca: CertificateAuthority
    registers: dict[str, Register] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(
        default_factory=list
    )  # (operation, device, cert kind)
    queued: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    tamper: str | None = None
    csrattrs_status: int | None = None  # answer csrattrs with this status instead
    on_issue: Callable[[str], None] | None = None
    port: int = 0
    leaf_only: bool = False  # present the server certificate without its CA chain

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def cacerts_list(self) -> list[x509.Certificate]:
        return [self.pki.customer.certificate, self.pki.customer_root.certificate]

    def register(self, device_id: str) -> Register:
        return self.registers.setdefault(device_id, Register())

    # -- HTTP ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        prefix = "/.well-known/est"
        app.router.add_get(f"{prefix}/cacerts", self.cacerts)
        app.router.add_get(f"{prefix}/csrattrs", self.csrattrs)
        for op in ("simpleenroll", "simplereenroll", "serverkeygen"):
            app.router.add_post(f"{prefix}/{op}", self.enroll)
        return app

    def _peer(self, request: web.Request) -> tuple[str, str] | None:
        assert request.transport is not None
        der = request.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if not der:
            return None
        cert = load_certificate_der(der)
        kind = "temporary" if cert.issuer == self.pki.factory.certificate.subject else "operational"
        device_id = device_id_of(cert)
        assert device_id is not None
        return device_id, kind if kind == "temporary" else serial_hex(cert)

    def _confirm_by(self, device_id: str, who: str) -> web.Response | None:
        """A 403 for an operational certificate that is not live; else the first request
        with the pending certificate customizes the device."""
        reg = self.register(device_id)
        if who == "temporary":
            return None
        if who not in reg.live:
            return web.Response(status=403, text="operational certificate is not live")
        if reg.pending == who:
            reg.state, reg.pending = "customized", None
        return None

    async def cacerts(self, request: web.Request) -> web.Response:
        peer = self._peer(request)
        if peer is not None:
            device_id, who = peer
            self.calls.append(("cacerts", device_id, who))
            refused = self._confirm_by(device_id, who)
            if refused is not None:
                return refused
        body = encode_certs_only(self.cacerts_list())
        return web.Response(body=body, headers=_certs_headers())

    async def csrattrs(self, request: web.Request) -> web.Response:
        """Only for a live certificate; the first request with a new one confirms it."""
        peer = self._peer(request)
        if peer is None:
            return web.Response(status=401, text="a client certificate is required")
        device_id, who = peer
        self.calls.append(("csrattrs", device_id, who))
        if self.csrattrs_status is not None:
            return web.Response(status=self.csrattrs_status, text="no CSR attributes here")
        refused = self._confirm_by(device_id, who)
        if refused is not None:
            return refused
        body = encode_csrattrs([x509.ObjectIdentifier("2.5.4.5")])
        return web.Response(body=body, headers={"Content-Type": CSRATTRS_TYPE})

    async def enroll(self, request: web.Request) -> web.Response:
        op = request.path.rsplit("/", 1)[1]
        peer = self._peer(request)
        if peer is None:
            return web.Response(status=401, text="a client certificate is required")
        device_id, who = peer
        self.calls.append((op, device_id, who))
        if self.queued:
            status, headers, body = self.queued.pop(0)
            return web.Response(status=status, headers=headers, body=body)
        reg = self.register(device_id)
        if reg.state == "blocked":
            return web.Response(
                status=403, text=f"device {device_id} is blocked in the customer register"
            )
        if who == "temporary" and reg.state == "customized":
            return web.Response(status=403, text="the temporary certificate is retired")
        if (op == "simplereenroll") != (who != "temporary"):
            return web.Response(status=403, text=f"{op} is not allowed with this certificate")
        csr = decode_csr(
            await request.read(),
            content_type=request.headers.get("Content-Type"),
            transfer_encoding=request.headers.get("Content-Transfer-Encoding"),
        )
        key = generate_private_key(KeySpec.EC_P256) if op == "serverkeygen" else None
        public_key = key.public_key() if key else csr.public_key()
        cert = self._issue(device_id, public_key)  # type: ignore[arg-type]
        serial = serial_hex(cert)
        reg.live = {serial}  # supersedes whatever was issued before
        reg.pending = serial
        reg.state = "issued" if who == "temporary" else reg.state
        if self.on_issue is not None:
            self.on_issue(device_id)
        if self.tamper == "garbage":
            return web.Response(body=b"<html>not EST</html>", headers=_certs_headers())
        if key is None:
            return web.Response(body=encode_certs_only([cert]), headers=_certs_headers())
        content_type, body = encode_serverkeygen(
            private_key_der=encode_pkcs8(key, passphrase=None), certificate=cert
        )
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _issue(self, device_id: str, public_key: PublicKey) -> x509.Certificate:
        tamper = self.tamper
        if tamper == "wrong-chain":
            return issue(self.pki.rogue, public_key, device_id)
        if tamper == "other-key":
            return issue(
                self.pki.customer, generate_private_key(KeySpec.EC_P256).public_key(), device_id
            )
        if tamper == "other-device":
            return issue(self.pki.customer, public_key, "OTHER-0002")
        if tamper == "expired":
            return issue(
                self.pki.customer,
                public_key,
                device_id,
                not_before=now() - timedelta(days=3),
                not_after=now() - timedelta(days=1),
            )
        if tamper == "server-profile":
            return issue(
                self.pki.customer, public_key, device_id, profile=CertificateProfile.SERVER
            )
        return issue(self.pki.customer, public_key, device_id)


def _certs_headers() -> dict[str, str]:
    return {"Content-Type": CERTS_ONLY_TYPE, "Content-Transfer-Encoding": "base64"}


def _server_context(node: FakeNode) -> ssl.SSLContext:
    key = generate_private_key(KeySpec.EC_P256)
    cert = issue(
        node.server_ca, key.public_key(), "node", profile=CertificateProfile.SERVER, ip="127.0.0.1"
    )
    chain = [cert] if node.leaf_only else [cert, *node.server_ca.chain]
    anchors = [node.pki.factory.certificate, node.pki.customer_root.certificate]
    return server_context(key, chain, client_anchors=anchors, require_client_cert=False)


@asynccontextmanager
async def serving(
    pki: Pki, *, server_ca: CertificateAuthority | None = None, leaf_only: bool = False
) -> AsyncIterator[FakeNode]:
    """Run a FakeNode on 127.0.0.1 (any free port) for the block."""
    node = FakeNode(pki=pki, server_ca=server_ca or pki.factory, leaf_only=leaf_only)
    runner = web.AppRunner(node.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_server_context(node))
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    node.port = server.sockets[0].getsockname()[1]
    try:
        yield node
    finally:
        await runner.cleanup()
