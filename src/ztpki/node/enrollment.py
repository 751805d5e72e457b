"""The customer node's enrollment service: authorize, take the issuance lease, ask the customer
CA system, record the answer, and audit every decision (patent Fig. 3, B57-B71).

Exactly-once lives in the register: ``begin_issuance`` moves the device to ISSUING under a
lease only from the states the decision allows, so of many concurrent requests for one device
one goes to the CA system and the others are told to retry; ``complete_issuance`` lands only
while that lease holds; any failure on the way gives the state back (``abort_issuance``). Every
state change carries its audit record in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cryptography import x509

from ztpki.errors import Unavailable, UnknownCA, ZtpkiError
from ztpki.node.authentication import ClientIdentity, IdentityKind
from ztpki.node.authorization import (
    Action,
    Decision,
    EnrollmentContext,
    InProgress,
    Operation,
    RefusalReason,
    Refused,
    decide,
    should_confirm,
)
from ztpki.node.ca_client import Issued, SecondCAClient
from ztpki.node.cmp_record import CmpRecord, write_row
from ztpki.node.config import Limits, RevocationPolicy

# Enrolled and LoadedLabel are re-exported: they were defined here before.
from ztpki.node.enrollment_types import Enrolled as Enrolled
from ztpki.node.enrollment_types import (
    KeyRequest,
    audit_record,
    decision_of,
    issued_label,
    lease_expired,
    same_row,
)
from ztpki.node.enrollment_types import LoadedLabel as LoadedLabel
from ztpki.node.lease_holder import new_token
from ztpki.node.metrics import NodeMetrics
from ztpki.node.register import AsyncRegister
from ztpki.node.revocation_orders import confirms_renewal, superseded_order
from ztpki.pki.keys import KeySpec
from ztpki.pki.pem import certificate_der, load_certificate_der, serial_hex
from ztpki.protocol.est import spki_sha256
from ztpki.store.records import AuditRecord, DeviceState, RegisteredDevice
from ztpki.untrusted import quote

log = logging.getLogger(__name__)

# A request that lost the race for the lease looks at the register again this many times.
DECISION_ROUNDS = 3


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Audited(Exception):
    """Carries an error whose audit record was already written with its state change."""

    def __init__(self, error: ZtpkiError) -> None:
        super().__init__(error.message)
        self.error = error


class EnrollmentService:
    """Serves the EST operations for authenticated identities; the HTTP adapter is elsewhere."""

    def __init__(
        self,
        *,
        register: AsyncRegister,
        ca_client: SecondCAClient,
        labels: Mapping[str, LoadedLabel],
        default_label: str,
        limits: Limits,
        metrics: NodeMetrics,
        clock: Callable[[], datetime] = _utcnow,
        revocation: RevocationPolicy | None = None,
        revocation_queued: Callable[[], None] = lambda: None,
    ) -> None:
        if default_label not in labels:
            raise UnknownCA(f"default EST label {default_label!r} is not configured")
        self.register = register
        self.ca_client = ca_client
        self.labels = dict(labels)
        self.default_label = default_label
        self.limits = limits
        self.metrics = metrics
        self._clock = clock
        self.revocation = revocation or RevocationPolicy()
        # Told when this service queued a revocation, so that the sender looks at once.
        self._revocation_queued = revocation_queued

    def label(self, name: str | None) -> LoadedLabel:
        found = self.labels.get(name or self.default_label)
        if found is None:
            raise UnknownCA(
                f"this node has no EST label {quote(name or '')}; "
                f"labels: {', '.join(sorted(self.labels))}"
            )
        return found

    # ------------------------------------------------------------------ read-only operations

    async def cacerts(
        self, label: LoadedLabel, identity: ClientIdentity | None
    ) -> tuple[x509.Certificate, ...]:
        """The label's CA chain. Needs no client certificate; an operational one confirms."""
        if identity is not None and identity.kind is IdentityKind.OPERATIONAL:
            device = await self.register.get(identity.device_id)
            await self._confirm(
                device, identity, endpoint=_endpoint(label, Operation.CACERTS), reread=False
            )
        return label.chain

    async def csrattrs(self, label: LoadedLabel, identity: ClientIdentity) -> KeySpec | None:
        """The key algorithm the label's policy asks for (None: the CA system's default)."""
        endpoint = _endpoint(label, Operation.CSRATTRS)
        try:
            device = await self._confirm(
                await self.register.get(identity.device_id), identity, endpoint=endpoint
            )
            decide(device, identity, EnrollmentContext(Operation.CSRATTRS, label.name))
        except ZtpkiError as exc:
            await self.record_refusal(endpoint, identity, exc)
            raise
        return label.config.parameters.key_algorithm

    # ------------------------------------------------------------------ enrollment

    async def enroll(
        self,
        operation: Operation,
        label: LoadedLabel,
        identity: ClientIdentity,
        csr: x509.CertificateSigningRequest | KeyRequest,
        *,
        endpoint: str | None = None,
        cmp: CmpRecord | None = None,
    ) -> Enrolled:
        """simpleenroll, simplereenroll or serverkeygen for an authenticated device (or a CMP
        request doing the same: ``endpoint`` names it in the audit trail, ``cmp`` carries its
        transaction row into the issuance's own commits)."""
        endpoint = endpoint or _endpoint(label, operation)
        request = csr if isinstance(csr, KeyRequest) else KeyRequest.from_csr(csr)
        try:
            return await self._enroll(operation, label, identity, request, endpoint, cmp)
        except _Audited as done:
            raise done.error from None
        except ZtpkiError as exc:
            await self.record_refusal(endpoint, identity, exc)
            raise

    async def _enroll(
        self,
        operation: Operation,
        label: LoadedLabel,
        identity: ClientIdentity,
        request: KeyRequest,
        endpoint: str,
        cmp: CmpRecord | None,
    ) -> Enrolled:
        device = await self._confirm(
            await self.register.get(identity.device_id), identity, endpoint=endpoint
        )
        spki, named = request.spki_sha256, request.named_device_id
        for _ in range(DECISION_ROUNDS):
            now = self._clock()
            context = EnrollmentContext(
                operation,
                label.name,
                named,
                spki,
                issued_label=issued_label(device, self.labels.values()),
                lease_expired=lease_expired(device, now),
            )
            decision = decide(device, identity, context)
            if decision.action is Action.REDELIVER:
                assert device is not None
                await write_row(self.register, cmp)
                return await self._redeliver(device, identity, decision, endpoint)
            assert device is not None
            token = new_token()
            before = await self.register.begin_issuance(
                identity.device_id,
                allowed_from=decision.allowed_from,
                token=token,
                label=label.name,
                now=now,
                lease_seconds=self.limits.lease_seconds,
                take_over=device.lease_token if context.lease_expired else None,
                cmp_transaction=None if cmp is None else cmp.claim(),
            )
            if cmp is not None:
                cmp.settle(before is not None)
            if before is not None and same_row(before, device):
                key = None if operation is Operation.SERVERKEYGEN else request
                issuing = (before, identity, decision, label, key, token, endpoint, cmp)
                return await self._issue(*issuing)
            if before is not None:
                # The row changed between reading and leasing it (another request issued in
                # between): give the lease back and decide on what is there now.
                await self.register.abort_issuance(
                    identity.device_id, token=token, now=self._clock(), audit=None
                )
            device = await self.register.get(identity.device_id)
        raise InProgress(identity.device_id)

    async def _issue(
        self,
        before: RegisteredDevice,
        identity: ClientIdentity,
        decision: Decision,
        label: LoadedLabel,
        key: KeyRequest | None,
        token: str,
        endpoint: str,
        cmp: CmpRecord | None,
    ) -> Enrolled:
        device_id = before.device_id
        # A device with an issued (unconfirmed) certificate gets it superseded, never a second.
        reissue = decision.reissue or before.issued_serial is not None
        resting = before.previous_state if before.state is DeviceState.ISSUING else before.state
        try:
            issued = await self.ca_client.issue(
                device_id=device_id,
                ca=label.config,
                ca_certificate=label.certificate,
                csr_der=None if key is None else key.csr_der,
                public_key_der=None if key is None or key.csr_der else key.public_key_der,
                reissue=reissue,
                # A taken-over issuance may have left a certificate nobody received; a renewal
                # never revokes first: the live one may be the certificate the device uses.
                revoke_live_first=decision.takeover and resting is not DeviceState.CUSTOMIZED,
            )
        except ZtpkiError as exc:
            self.metrics.observe_ca_system(decision_of(exc), 0.0)
            now = self._clock()
            audit = self._record(endpoint, identity, decision_of(exc), exc.message, now=now)
            await self.register.abort_issuance(device_id, token=token, now=now, audit=audit)
            raise _Audited(exc) from None
        except BaseException:
            # Cancelled (shutdown): give the state back; the lease would expire anyway.
            await asyncio.shield(
                self.register.abort_issuance(device_id, token=token, now=self._clock(), audit=None)
            )
            raise
        self.metrics.observe_ca_system("issued", issued.seconds)
        why = "superseded before delivery: revoked at the CA system before reissuing"
        await self.register.audit(
            *(
                self._record(endpoint, identity, "revoked", why, serial=r.serial)
                for r in issued.revoked
            )
        )
        return await self._complete(issued, before, label, identity, decision, token, endpoint, cmp)

    async def _complete(
        self,
        issued: Issued,
        before: RegisteredDevice,
        label: LoadedLabel,
        identity: ClientIdentity,
        decision: Decision,
        token: str,
        endpoint: str,
        cmp: CmpRecord | None = None,
    ) -> Enrolled:
        device_id = identity.device_id
        serial = serial_hex(issued.certificate)
        reason = decision.reason
        if issued.superseded_undelivered:
            reason += "; superseded a certificate whose answer was lost before delivery"
        renewal = decision.new_state is DeviceState.CUSTOMIZED
        previous = before.issued_serial
        orders = []
        if previous is not None and previous != serial:
            orders.append(superseded_order(device_id, label.config, previous, renewal=renewal))
        now = self._clock()
        assert decision.new_state is not None
        completed = await self.register.complete_issuance(
            device_id,
            token=token,
            new_state=decision.new_state,
            serial=serial,
            spki=spki_sha256(issued.certificate.public_key()),
            certificate_der=certificate_der(issued.certificate),
            chain_der=[certificate_der(c) for c in issued.chain],
            now=now,
            audit=self._record(endpoint, identity, "issued", reason, now=now, serial=serial),
            revocations=orders,
            renewed_from=previous if renewal and orders else None,
            cmp_issued=None if cmp is None else cmp.issued,
        )
        if not completed:
            return await self._discard(label, identity, serial, endpoint)
        if orders:
            self._revocation_queued()
        log.info("issued serial=%s device=%s via %s (%s)", serial, device_id, endpoint, reason)
        return Enrolled("issued", issued.certificate, issued.chain, issued.private_key_der)

    async def _discard(
        self,
        label: LoadedLabel,
        identity: ClientIdentity,
        serial: str,
        endpoint: str,
    ) -> Enrolled:
        # The lease was lost while the CA system worked: the device was blocked, or the lease
        # expired and another request took over. This certificate is not handed out, and is
        # revoked (nobody holds it).
        current = await self.register.get(identity.device_id)
        state = None if current is None else current.state
        error: ZtpkiError = (
            Refused(
                RefusalReason(state.value),
                f"device {identity.device_id} is {state.value} in the customer register",
            )
            if state is DeviceState.BLOCKED or state is DeviceState.RETIRED
            else Unavailable(
                f"the enrollment of device {identity.device_id} was overtaken; retry", retry_after=1
            )
        )
        log.warning(
            "discarded serial=%s for device %s: %s", serial, identity.device_id, error.message
        )
        order = superseded_order(identity.device_id, label.config, serial, renewal=False)
        await self.register.queue_revocations(
            [replace(order, cause="issued but discarded: never delivered")],
            now=self._clock(),
            audit=self._record(
                endpoint,
                identity,
                "discarded",
                f"issued certificate not delivered: {error.message}",
                serial=serial,
            ),
        )
        self._revocation_queued()
        raise _Audited(error)

    async def _redeliver(
        self,
        device: RegisteredDevice,
        identity: ClientIdentity,
        decision: Decision,
        endpoint: str,
    ) -> Enrolled:
        assert device.issued_certificate_der is not None
        certificate = load_certificate_der(device.issued_certificate_der)
        chain = tuple(load_certificate_der(der) for der in device.issued_chain_der)
        await self.register.audit(
            self._record(
                endpoint, identity, "redelivered", decision.reason, serial=device.issued_serial
            )
        )
        log.info("redelivered serial=%s to device %s", device.issued_serial, device.device_id)
        return Enrolled("redelivered", certificate, chain)

    # ------------------------------------------------------------------ confirmation, audit

    async def _confirm(
        self,
        device: RegisteredDevice | None,
        identity: ClientIdentity,
        *,
        endpoint: str,
        reread: bool = True,
    ) -> RegisteredDevice | None:
        """Confirm a customization (or a renewal) if this request shows it; the row afterwards
        (reread) or as it was given (when the caller does not use it)."""
        if confirms_renewal(device, identity):
            assert device is not None
            await self._confirm_renewal(device, identity, endpoint=endpoint)
            return await self.register.get(identity.device_id) if reread else device
        if not should_confirm(device, identity):
            return device
        now = self._clock()
        record = self._record(
            endpoint,
            identity,
            "confirmed",
            "first request with the operational certificate: device customized",
            now=now,
            serial=identity.serial,
        )
        if await self.register.confirm(
            identity.device_id, serial=identity.serial, now=now, audit=record
        ):
            log.info(
                "device %s confirmed serial=%s: customized", identity.device_id, identity.serial
            )
        return await self.register.get(identity.device_id) if reread else device

    async def _confirm_renewal(
        self,
        device: RegisteredDevice,
        identity: ClientIdentity,
        *,
        endpoint: str,
        serial: str | None = None,
        cmp: bytes | None = None,
    ) -> bool:
        """serial: the renewed certificate, when not the one identity presents (certConf)."""
        now, label = self._clock(), self.labels.get(identity.label or "")
        grace = self.revocation.grace_for(label.config) if label else 0.0
        why = f"renewed certificate used: {device.renewed_from} is revoked in {grace:g} s"
        serial = serial or identity.serial
        record = self._record(endpoint, identity, "renewal-confirmed", why, now=now, serial=serial)
        due = now + timedelta(seconds=grace)
        confirmed = await self.register.confirm_renewal(
            identity.device_id, serial=serial, now=now, due_at=due, audit=record, cmp=cmp
        )
        if confirmed:
            self._revocation_queued()
        return confirmed

    async def confirm_certificate(
        self, identity: ClientIdentity, serial: str, *, endpoint: str, cmp: bytes | None = None
    ) -> bool:
        """The device confirms that it holds certificate serial (CMP certConf, signed with
        the certificate it asked with): as its first EST request with that certificate.
        ``cmp``: the CMP transaction that closes confirmed in the same commit (True if so)."""
        device = await self.register.get(identity.device_id)
        if device is None or device.issued_serial != serial:
            raise Refused(
                RefusalReason.SUPERSEDED,
                f"certificate {serial} is not device {identity.device_id}'s current one",
            )
        if device.state is DeviceState.CUSTOMIZED and device.renewed_from is not None:
            return await self._confirm_renewal(device, identity, endpoint=endpoint, serial=serial,
                                               cmp=cmp)  # fmt: skip
        if device.state is not DeviceState.ISSUED:
            return False
        now = self._clock()
        why = "certConf for the issued certificate: device customized"
        record = self._record(endpoint, identity, "confirmed", why, now=now, serial=serial)
        confirmed = await self.register.confirm(
            identity.device_id, serial=serial, now=now, audit=record, cmp=cmp
        )
        if confirmed:
            log.info("device %s confirmed serial=%s: customized", identity.device_id, serial)
        return confirmed

    def now(self) -> datetime:
        return self._clock()

    def revocations_queued(self) -> None:
        """Wake the revocation sender: a handler queued an order (CMP rr)."""
        self._revocation_queued()

    async def record_refusal(
        self, endpoint: str, identity: ClientIdentity, exc: ZtpkiError
    ) -> None:
        """Audit a refused or deferred request of an authenticated device (no state changed).

        Refusals before authentication are not audited: see ztpki.node.strangers.
        """
        record = AuditRecord(
            at=self._clock(),
            endpoint=endpoint,
            decision=decision_of(exc),
            reason=exc.message,
            device_id=identity.device_id,
            client_fingerprint=identity.fingerprint,
        )
        level = logging.INFO if isinstance(exc, Refused | Unavailable) else logging.WARNING
        log.log(level, "%s %s: %s", record.decision, record.device_id, exc.message)
        await self.register.audit(record)

    def _record(
        self,
        endpoint: str,
        identity: ClientIdentity,
        decision: str,
        reason: str,
        *,
        now: datetime | None = None,
        serial: str | None = None,
    ) -> AuditRecord:
        return audit_record(
            endpoint, identity, decision, reason, at=now or self._clock(), serial=serial
        )


def _endpoint(label: LoadedLabel, operation: Operation) -> str:
    return f"est/{label.name}/{operation.value}"
