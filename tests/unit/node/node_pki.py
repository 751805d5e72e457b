"""In-memory PKI and an in-process customer CA system for the node's unit tests.

``InProcessCA`` is the real CA-system logic (casystem.issuer.CASystem planning and signing, the
SQLite issuance store keeping one live certificate per device) behind the EnrollmentTransport
protocol, with knobs to fail, stall or lose answers the way a network does.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from tests.support.no_eku import certificate_without_eku

from ztpki.casystem.issuer import CASystem, LoadedCA
from ztpki.casystem.policy import IssuingPolicy
from ztpki.casystem.wire import error_answer, raise_for
from ztpki.errors import ZtpkiError
from ztpki.node.authentication import AuthenticationModule, ClientIdentity, CustomerCA, FactoryTrust
from ztpki.node.ca_client import SecondCAClient
from ztpki.node.config import CALabel, IssuingParameters, Limits
from ztpki.node.enrollment import EnrollmentService, LoadedLabel
from ztpki.node.metrics import NodeMetrics
from ztpki.node.register import AsyncRegister
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.pem import certificate_der
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest
from ztpki.protocol.revocation import RevocationAnswer, RevocationRequest
from ztpki.store.interfaces import IssuanceStore
from ztpki.store.records import CertificateStatus, ClientEntitlement, NewDevice
from ztpki.store.sqlite import SQLiteNodeStore, open_sqlite_ca_store, open_sqlite_node_store

NOW = datetime.now(UTC).replace(microsecond=0)


def name(cn: str, *, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def root_ca(cn: str) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    cert = create_self_signed_ca(
        key, name(cn), now=NOW - timedelta(days=1), validity=timedelta(days=3650)
    )
    return CertificateAuthority(name=cn, key=key, certificate=cert)


def sub_ca(parent: CertificateAuthority, cn: str) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=name(cn),
        profile=CertificateProfile.CA,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=3000),
        path_length=0,
    )
    return CertificateAuthority(
        name=cn, key=key, certificate=parent.issue(key.public_key(), grant), parents=parent.chain
    )


def leaf(
    ca: CertificateAuthority,
    device_id: str,
    *,
    profile: CertificateProfile = CertificateProfile.DEVICE,
    not_before: datetime | None = None,
    validity: timedelta = timedelta(days=365),
) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_private_key(KeySpec.EC_P256)
    start = not_before or NOW - timedelta(hours=1)
    grant = IssuanceGrant(
        subject=name(device_id, serial=device_id),
        profile=profile,
        not_before=start,
        not_after=start + validity,
    )
    return key, ca.issue(key.public_key(), grant)


def leaf_without_eku(
    ca: CertificateAuthority, device_id: str
) -> tuple[PrivateKey, x509.Certificate]:
    """A device certificate like ``leaf`` but with no extendedKeyUsage extension at all."""
    key = generate_private_key(KeySpec.EC_P256)
    cert = certificate_without_eku(
        subject=name(device_id, serial=device_id),
        public_key=key.public_key(),
        issuer=ca.certificate,
        issuer_key=ca.key,
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=30),
    )
    return key, cert


@dataclass
class PKI:
    factory_root: CertificateAuthority
    factory_ca: CertificateAuthority
    customer_root: CertificateAuthority
    operational: CertificateAuthority
    sibling: CertificateAuthority  # another CA under the customer root, behind no label

    @classmethod
    def create(cls) -> PKI:
        factory_root = root_ca("factory root")
        customer_root = root_ca("customer root")
        return cls(
            factory_root=factory_root,
            factory_ca=sub_ca(factory_root, "factory CA"),
            customer_root=customer_root,
            operational=sub_ca(customer_root, "operational"),
            sibling=sub_ca(customer_root, "sibling"),
        )

    def bundle(self) -> list[x509.Certificate]:
        return [self.factory_ca.certificate, self.factory_root.certificate]

    def authentication(self, **kwargs: object) -> AuthenticationModule:
        return AuthenticationModule(
            FactoryTrust.from_bundles([self.bundle()]),
            [CustomerCA("default", self.operational.chain)],
            **kwargs,  # type: ignore[arg-type]
        )

    def temporary(self, device_id: str) -> tuple[PrivateKey, x509.Certificate]:
        return leaf(self.factory_ca, device_id)

    def identity(self, cert: x509.Certificate) -> ClientIdentity:
        # The clock now, not NOW: the in-process CA issues with the real clock, and a loaded
        # run may reach this minutes after the module was imported.
        return self.authentication().authenticate(certificate_der(cert), now=datetime.now(UTC))

    def revoking_crl(self, *revoked: x509.Certificate) -> x509.CertificateRevocationList:
        """A current CRL of the factory CA that revokes ``revoked``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.factory_ca.certificate.subject)
            .last_update(NOW - timedelta(hours=1))
            .next_update(NOW + timedelta(days=1))
        )
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(NOW)
                .build()
            )
        return builder.sign(self.factory_ca.key, hashes.SHA256())


def with_namesake_factory_ca(pki: PKI) -> tuple[AuthenticationModule, CertificateAuthority]:
    """A module whose factory CA (another maker's) bears the subject of pki's customer CA."""
    maker = PKI.create()
    namesake = sub_ca(maker.factory_root, "operational")  # the customer CA's subject
    module = AuthenticationModule(
        FactoryTrust.from_bundles([[namesake.certificate, maker.factory_root.certificate]]),
        [CustomerCA("default", pki.operational.chain)],
    )
    return module, namesake


def counting_verifications(module: AuthenticationModule) -> list[bytes]:
    """Record every full verification the module runs (the DER of each certificate)."""
    calls: list[bytes] = []
    verify = module._verify

    def counted(der: bytes, *, now: object) -> object:
        calls.append(der)
        return verify(der, now=now)  # type: ignore[arg-type]

    module._verify = counted  # type: ignore[assignment,method-assign]
    return calls


@dataclass
class InProcessCA:
    """The customer CA system's issuing logic in this process, with failure knobs."""

    system: CASystem
    store: IssuanceStore
    calls: int = 0
    fail_with: ZtpkiError | None = None  # raise this instead of answering
    lose_answer: bool = False  # issue and record, then fail like a dropped connection
    before_answer: Callable[[EnrollmentRequest], object] | None = None
    stall: asyncio.Event | None = None  # wait for this before answering
    requests: list[EnrollmentRequest] = field(default_factory=list)
    revocations: list[RevocationRequest] = field(default_factory=list)

    @classmethod
    def create(
        cls, pki: PKI, directory: Path, *, more: dict[str, CertificateAuthority] | None = None
    ) -> InProcessCA:
        """The customer CA system with CA "operational" and the CAs in ``more`` by name."""
        cas = {"operational": pki.operational, **(more or {})}
        loaded = {
            name: LoadedCA(
                authority=ca,
                policy=IssuingPolicy(),
                chain_der=tuple(certificate_der(c) for c in ca.chain),
            )
            for name, ca in cas.items()
        }
        system = CASystem(loaded, default_ca="operational")
        return cls(system, open_sqlite_ca_store(directory / "ca.sqlite", durable=False))

    async def enroll(self, request: EnrollmentRequest) -> EnrollmentAnswer:
        self.calls += 1
        self.requests.append(request)
        if self.stall is not None:
            await self.stall.wait()
        if self.fail_with is not None:
            raise self.fail_with
        try:
            answer = self._issue(request)
        except ZtpkiError as exc:
            raise raise_for(error_answer(request.request_id, exc)) from None
        if self.before_answer is not None:
            self.before_answer(request)
        if self.lose_answer:
            from ztpki.errors import Unavailable

            raise Unavailable("connection to CA system lost")
        return answer

    def _issue(self, request: EnrollmentRequest) -> EnrollmentAnswer:
        from ztpki.pki.keys import generate_private_key as generate

        now = datetime.now(UTC)
        # This fake CA system serves one client entitled to every CA it holds.
        everything = ClientEntitlement(cas=tuple(self.system.cas))
        plan = self.system.plan(request, now=now, client="node", entitlement=everything)
        # As the real service: a request sent again is answered from its record.
        recorded = self.store.answered_request("node", request.request_id)
        if recorded is not None:
            return self.system.answer_again(plan, recorded)
        private_key = None
        if plan.csr_public_key is not None:
            public_key = plan.csr_public_key
        else:
            private_key = generate(plan.key_spec)
            public_key = private_key.public_key()
        certificate = self.system.sign(plan, public_key)
        answer = self.system.answer(plan, certificate, private_key)
        kept = answer.private_key_der if answer.private_key_encrypted else None
        self.store.record_issuance(
            self.system.record_of(plan, certificate, now=now, answer_key_der=kept),
            supersede=request.reissue,
        )
        return answer

    async def revoke(self, request: RevocationRequest) -> RevocationAnswer:
        """Revoke as the real CA system does, for the one client "node" entitled to all."""
        from ztpki.casystem.revocation import revoke_for_client
        from ztpki.store.records import ClientRecord, ClientStatus

        self.revocations.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        now = datetime.now(UTC)
        client = ClientRecord(
            name="node",
            serial="01",
            fingerprint="00" * 32,
            not_after=now,
            status=ClientStatus.ACTIVE,
            added_at=now,
            removed_at=None,
            entitlement=ClientEntitlement(cas=tuple(self.system.cas)),
        )
        try:
            return revoke_for_client(
                request, client=client, system=self.system, store=self.store, now=now
            )
        except ZtpkiError as exc:
            raise raise_for(error_answer(request.request_id, exc)) from None

    def active(self, device_id: str) -> list[str]:
        return [
            c.serial
            for c in self.store.issued(device_id=device_id, status=CertificateStatus.ACTIVE)
        ]

    async def close(self) -> None:
        pass


@dataclass
class Node:
    pki: PKI
    ca: InProcessCA
    store: SQLiteNodeStore
    service: EnrollmentService
    label: LoadedLabel

    def list(self, device_id: str, *, fingerprint: str | None = None) -> None:
        self.store.add_device(NewDevice(device_id, fingerprint), now=NOW)

    def state(self, device_id: str) -> str:
        device = self.store.get(device_id)
        assert device is not None
        return device.state.value

    def decisions(self, device_id: str) -> builtins.list[str]:
        return [e.decision for e in self.store.entries(device_id=device_id)]

    def close(self) -> None:
        self.service.register.close()
        self.store.close()


def make_node(
    tmp: Path,
    *,
    pki: PKI | None = None,
    parameters: IssuingParameters | None = None,
    limits: Limits | None = None,
    more_labels: tuple[str, ...] = (),
) -> Node:
    """A node with EST label "default" (CA "operational") and, for each of ``more_labels``,
    a label of that name served by its own CA of that name under the customer root."""
    pki = pki or PKI.create()
    more = {name: sub_ca(pki.customer_root, name) for name in more_labels}
    ca = InProcessCA.create(pki, tmp, more=more)
    store = open_sqlite_node_store(tmp / "node.sqlite", durable=False)
    label = LoadedLabel(
        CALabel(
            "default", Path("ca/default.pem"), "operational", parameters or IssuingParameters()
        ),
        pki.operational.chain,
    )
    labels = {"default": label}
    for name, authority in more.items():
        labels[name] = LoadedLabel(CALabel(name, Path(f"ca/{name}.pem"), name), authority.chain)
    service = EnrollmentService(
        register=AsyncRegister(store),
        ca_client=SecondCAClient(ca, timeout=(limits or Limits()).ca_timeout),
        labels=labels,
        default_label="default",
        limits=limits or Limits(),
        metrics=NodeMetrics(),
    )
    return Node(pki, ca, store, service, label)


def csr_for(device_id: str, key: PrivateKey | None = None) -> x509.CertificateSigningRequest:
    from ztpki.protocol.est import build_csr

    return build_csr(key or generate_private_key(KeySpec.EC_P256), device_id=device_id)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
