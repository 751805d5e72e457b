"""The activating client (33): swaps the temporary identity for the customer's, exactly once.

One customization (Fig. 3, B47-B53) is a sequence of steps, each reported as an
:class:`ActivationEvent` when done::

    load      read the identity from the device memory (93)
    connect   mutual TLS to the node: temporary key and certificate out, node verified
              with the factory CA certificate(s) or a pinned node CA (``node_trust``)
    cacerts   fetch the customer CA certificates
    request   serverkeygen (the CA generates the key) or simpleenroll (key made here;
              ``ztpki.device.request``)
    verify    the answer: key matches, names this device, current, chains to the CA certs
    replace   one atomic switch of key + certificate + CA certificates in the memory
    confirm   one authenticated request (csrattrs) with the NEW certificate: the node then
              retires the old one, and refuses it if it is not the device's current one

Where a killed process resumes follows from the memory alone: a temporary identity means
"ask again" (the node supersedes an answer that never arrived); a pending device-made key
that the installed certificate does not carry means "a renewal was under way": the node may
already have issued (and superseded the installed certificate), so ask again with the same
key, which the node answers by handing the issued certificate over again; otherwise a
customized identity with ``confirmed: false`` in the configuration means "only confirm". A
failure raises
:class:`ActivationError` naming the step, the cause and what the operator can do; the
identity in the memory is then the one the device had before the step.

Test-only fault injection (``ZTPKI_DEVICE_FAULT``) is described in ``ztpki.device.faults``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from cryptography import x509

from ztpki.device.answer import IssuedIdentity, verify_answer
from ztpki.device.communication import DEFAULT_TIMEOUT, ESTClient, node_context
from ztpki.device.customer_node import (
    CONFIRMED_KEY,
    NODE_CA_KEY,
    NODE_URL_KEY,
    PROTOCOL_KEY,
    NodeAddress,
    NodePin,
    node_changes,
)
from ztpki.device.faults import FAULT_ENV, FAULT_POINTS, FaultInjector
from ztpki.device.key_store import retire_unused_keys
from ztpki.device.memory import DeviceMemory, Identity, Phase
from ztpki.device.node_trust import probe_pinned_anchor
from ztpki.device.reporting import (
    EXIT_REFUSED,
    EXIT_RETRY,
    ActivationError,
    ActivationEvent,
    ActivationResult,
    Step,
    confirm_remedy,
    pinned_node_remedy,
)
from ztpki.device.request import KeyMode, Requested, request_identity
from ztpki.errors import (
    ConfigurationError,
    DeviceMemoryError,
    Unavailable,
    VerificationFailed,
    ZtpkiError,
)
from ztpki.pki.keys import KeySpec, PrivateKey, keys_match
from ztpki.pki.pem import serial_hex

__all__ = [
    "CONFIRMED_KEY",
    "EXIT_REFUSED",
    "EXIT_RETRY",
    "FAULT_ENV",
    "FAULT_POINTS",
    "NODE_CA_KEY",
    "NODE_URL_KEY",
    "ActivatingClient",
    "ActivationError",
    "ActivationEvent",
    "ActivationResult",
    "FaultInjector",
    "KeyMode",
    "Step",
]

logger = logging.getLogger(__name__)

LOCK_FILE = "activation.lock"


@contextmanager
def _exclusive(memory: DeviceMemory) -> Iterator[None]:
    """One activation per device at a time (an agent and an installer's command may race)."""
    path = memory.path / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ActivationError(
            Step.LOAD, DeviceMemoryError(f"cannot open {path}: {exc.strerror}")
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = Unavailable(
                f"another activation of the device in {memory.path} is running", retry_after=1
            )
            raise ActivationError(
                Step.LOAD, busy, remedy="wait for it to finish (is `ztpki device agent` running?)"
            ) from None
        yield
    finally:
        os.close(fd)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


class ActivatingClient:
    """Customizes (and later renews) one device against one customer node.

    ``report`` receives each :class:`ActivationEvent` as it happens; ``now`` is the clock
    the answer's validity is checked against.
    """

    protocol_name = "est"  # recorded in the configuration with the identity (PROTOCOL_KEY)

    def __init__(
        self,
        memory: DeviceMemory,
        node: NodeAddress,
        *,
        key_mode: KeyMode = KeyMode.SERVERKEYGEN,
        key_spec: KeySpec | None = None,
        pin: NodePin | None = None,
        report: Callable[[ActivationEvent], None] | None = None,
        now: Callable[[], datetime] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        fault: FaultInjector | None = None,
        remember_node: bool = True,
    ) -> None:
        self.memory = memory
        self.node = node
        self.remember_node = remember_node
        self.key_mode = KeyMode(key_mode)
        self.key_spec = key_spec
        self.pin = pin
        self.events: list[ActivationEvent] = []
        self._report = report
        self._now = now or (lambda: datetime.now(UTC))
        self._timeout = timeout
        self._fault = fault
        self._anchors: list[x509.Certificate] | None = None

    # -- public operations -------------------------------------------------------------------

    async def activate(self) -> ActivationResult:
        """Customize the device; resumes a customization a crash interrupted."""
        with _exclusive(self.memory):
            identity = self._load()
            if identity.phase is Phase.CUSTOMIZED:
                pending = self._unfinished_renewal(identity)
                if pending is not None:
                    return await self._resume_renewal(identity, pending)
                if self._confirmed():
                    self._emit(Step.LOAD, "the device is already customized; nothing to do")
                    await asyncio.to_thread(self._retire_keys)  # a crash may have left some
                    return self._result("unchanged", identity)
                self._emit(Step.LOAD, "the device is customized but not yet confirmed")
                return await self._confirm(identity, "confirmed")
            if identity.phase is Phase.BLANK:
                raise ActivationError(
                    Step.LOAD,
                    DeviceMemoryError("the device has no temporary identity"),
                    remedy="manufacture it first (ztpki factory manufacture)",
                )
            issued = await self._enroll(identity, self.key_mode)
            return await self._install(issued, "activated")

    async def renew(self) -> ActivationResult:
        """Replace the operational identity with a new one (simplereenroll, key made here)."""
        with _exclusive(self.memory):
            identity = self._load()
            if identity.phase is not Phase.CUSTOMIZED:
                raise ActivationError(
                    Step.LOAD,
                    DeviceMemoryError(f"the device is {identity.phase}, not customized"),
                    remedy="customize it first (ztpki device activate)",
                )
            pending = self._unfinished_renewal(identity)
            if pending is not None:
                return await self._resume_renewal(identity, pending)
            if not self._confirmed():
                await self._confirm(identity, "confirmed")
            issued = await self._enroll(identity, None)
            return await self._install(issued, "renewed")

    async def confirm(self) -> ActivationResult:
        """Present the operational certificate to the node once (idempotent)."""
        with _exclusive(self.memory):
            return await self._confirm(self._load(), "confirmed")

    # -- the steps ---------------------------------------------------------------------------

    def _load(self) -> Identity:
        try:
            identity = self.memory.identity()
        except ZtpkiError as exc:
            raise ActivationError(Step.LOAD, exc) from None
        if identity.certificate is not None:
            self._emit(
                Step.LOAD,
                f"device {self.memory.device_id} holds a {identity.phase} identity "
                f"(serial {serial_hex(identity.certificate)}, issued by "
                f"{_subject_of_issuer(identity.certificate)})",
            )
        return identity

    def _unfinished_renewal(self, identity: Identity) -> PrivateKey | None:
        """The key of a renewal the node may have answered but the device never installed.

        Only a pending key whose request was sent with the installed certificate qualifies.
        Any other is dropped here: one the installed certificate already carries (a crash
        between the swap and its clean-up), one left by a request made with an earlier
        identity, and one that no longer decrypts (it could never fetch anything).
        """
        assert identity.certificate is not None
        try:
            if not self.memory.has_pending_key():
                return None
            try:
                pending = self.memory.pending_key()
            except DeviceMemoryError as exc:
                self._emit(Step.LOAD, f"dropping a pending key that cannot be read: {exc.message}")
                self.memory.clear_pending_key()
                return None
            assert pending is not None
            made_with = self.memory.pending_key_made_with()
            if keys_match(pending, identity.certificate.public_key()) or made_with != serial_hex(
                identity.certificate
            ):
                self.memory.clear_pending_key()
                return None
        except ZtpkiError as exc:
            raise ActivationError(Step.LOAD, exc) from None
        return pending

    async def _resume_renewal(self, identity: Identity, pending: PrivateKey) -> ActivationResult:
        # Not confirmed with the installed certificate first: the node may have superseded it.
        self._emit(
            Step.LOAD,
            "a renewal was interrupted before its answer was installed; asking the node again "
            "with the same key (it hands over the certificate it issued, if it did)",
        )
        issued = await self._enroll(identity, None, pending=pending)
        return await self._install(issued, "renewed")

    def _confirmed(self) -> bool:
        try:
            return self.memory.config().get(CONFIRMED_KEY) is True
        except ZtpkiError as exc:
            raise ActivationError(Step.LOAD, exc) from None

    async def _node_anchors(self) -> list[x509.Certificate]:
        if self._anchors is not None:
            return self._anchors
        try:
            if self.pin is not None:
                pinned = await probe_pinned_anchor(
                    self.node, self.pin, now=self._now(), timeout=self._timeout
                )
                self._emit(
                    Step.CONNECT,
                    f"the node's certificate chains to the pinned CA {_subject(pinned)}",
                )
                self._anchors = [pinned]
            else:
                self._anchors = self.memory.trust_anchors()
        except ZtpkiError as exc:
            raise ActivationError(Step.CONNECT, exc, remedy=self._connect_remedy(exc)) from None
        if not self._anchors:
            raise ActivationError(
                Step.CONNECT,
                ConfigurationError("the device holds no factory CA certificate"),
                remedy="reload the device at the factory, or pin the node's CA with --node-ca FILE",
            )
        return self._anchors

    def _connect_remedy(self, exc: ZtpkiError) -> str | None:
        if self.pin is not None and isinstance(exc, VerificationFailed):
            return pinned_node_remedy(exc, self.pin, self.node, str(self.memory.path))
        return None

    def _chain_of(self, identity: Identity) -> list[x509.Certificate]:
        assert identity.certificate is not None
        cas = [c for c in identity.ca_certificates if c.subject != c.issuer]
        return [identity.certificate, *cas]

    async def _client(self, identity: Identity) -> ESTClient:
        anchors = await self._node_anchors()
        try:
            context = node_context(
                key=identity.private_key, chain=self._chain_of(identity), anchors=anchors
            )
        except ZtpkiError as exc:
            raise ActivationError(Step.CONNECT, exc) from None
        return ESTClient(self.node, context, timeout=self._timeout)

    async def _enroll(
        self, identity: Identity, mode: KeyMode | None, *, pending: PrivateKey | None = None
    ) -> IssuedIdentity:
        """Steps connect..verify; ``mode`` None means a renewal, with the ``pending`` key of
        an interrupted renewal when given."""
        requested, cacerts = await self._ask(identity, mode, pending=pending)
        try:
            issued = verify_answer(
                device_id=self.memory.device_id,
                private_key=requested.private_key,
                certificates=requested.certificates,
                cacerts=cacerts,
                now=self._now(),
                previous=identity.certificate,
            )
        except ZtpkiError as exc:
            raise ActivationError(Step.VERIFY, exc) from None
        self._emit(
            Step.VERIFY,
            f"answer verified: certificate serial {issued.serial} names "
            f"{self.memory.device_id}, matches the key, is valid until "
            f"{issued.certificate.not_valid_after_utc.isoformat(timespec='seconds')} and "
            f"chains to {_subject(issued.anchor)}",
        )
        return issued

    async def _ask(
        self, identity: Identity, mode: KeyMode | None, *, pending: PrivateKey | None
    ) -> tuple[Requested, list[x509.Certificate]]:
        """Steps connect..request over EST: the answer and the customer CA certificates."""
        assert identity.private_key is not None and identity.certificate is not None
        operation = mode.value if mode else "simplereenroll"
        est = await self._client(identity)
        async with est:
            try:
                cacerts = await est.cacerts()
            except ZtpkiError as exc:
                if est.peer_certificate is None:
                    remedy = self._connect_remedy(exc)
                    raise ActivationError(Step.CONNECT, exc, remedy=remedy) from None
                raise ActivationError(Step.CACERTS, exc) from None
            self._report_connected(est.peer_certificate, identity)
            self._emit(
                Step.CACERTS,
                "customer CA certificates: " + "; ".join(_subject(c) for c in cacerts),
            )
            self._at("before-request")
            requested = await request_identity(
                est, self.memory, identity, mode, key_spec=self.key_spec, pending=pending
            )
            self._emit(
                Step.REQUEST,
                f"{operation}: the node answered with {len(requested.certificates)} "
                f"certificate(s); {requested.origin}",
            )
            self._at("after-answer")
        return requested, cacerts

    async def _install(self, issued: IssuedIdentity, action: str) -> ActivationResult:
        # The node this identity came from, and how it was trusted, as set-node states it
        # (not a discovered node: the device discovers again).
        node = node_changes(self.node, self.pin) if self.remember_node else {}
        changes = {CONFIRMED_KEY: False, PROTOCOL_KEY: self.protocol_name, **node}
        try:
            # The memory fsyncs each write: keep that off the event loop (a benchmark or a
            # gateway customizes many devices in one process).
            await asyncio.to_thread(self.memory.update_config, **changes)
            self._at("mid-replace")
            new = await asyncio.to_thread(
                self.memory.replace_identity,
                phase=Phase.CUSTOMIZED,
                private_key=issued.private_key,
                certificate=issued.certificate,
                ca_certificates=issued.ca_certificates,
            )
        except ZtpkiError as exc:
            raise ActivationError(Step.REPLACE, exc) from None
        self._emit(
            Step.REPLACE,
            f"the device memory now holds the operational identity (generation "
            f"{new.generation}, serial {issued.serial}) and "
            f"{len(issued.ca_certificates)} customer CA certificate(s)",
        )
        self._at("after-replace")
        await asyncio.to_thread(self.memory.clear_pending_key)
        return await self._confirm(new, action)

    async def _confirm(self, identity: Identity, action: str) -> ActivationResult:
        said = await self._present(identity)
        try:
            await asyncio.to_thread(self.memory.update_config, **{CONFIRMED_KEY: True})
        except ZtpkiError as exc:
            raise ActivationError(Step.CONFIRM, exc) from None
        self._at("after-confirm")
        await asyncio.to_thread(self._retire_keys)
        self._emit(
            Step.CONFIRM,
            f"{said}the node accepted the operational certificate; the previous certificate "
            "is retired",
        )
        return self._result(action, identity)

    def _retire_keys(self) -> None:
        """Destroy the token key objects of identities the confirmed one replaced."""
        try:
            retire_unused_keys(self.memory)
        except ZtpkiError as exc:
            # The identity is confirmed and whole; the next confirmation tries again.
            logger.warning("device %s: old token keys stay: %s", self.memory.device_id, exc)

    async def _present(self, identity: Identity) -> str:
        """Show the node the new certificate once (EST); what it answered, as a prefix."""
        est = await self._client(identity)
        async with est:
            try:
                # csrattrs, not cacerts: the node serves cacerts to any certificate (or none),
                # but answers csrattrs only for the device's current certificate, so a 200
                # here proves the node takes this certificate as the live one.
                await est.csrattrs()
            except ZtpkiError as exc:
                if exc.refused_with != 404:
                    raise ActivationError(
                        Step.CONFIRM, exc, remedy=confirm_remedy(exc, self.node)
                    ) from None
                await self._confirm_with_cacerts(est)
        return ""

    async def _confirm_with_cacerts(self, est: ESTClient) -> None:
        # RFC 7030 4.5.2: 404 to csrattrs means "no CSR attributes", so an EST server other
        # than ztpki's node may answer it to every device. Such a server gets the confirmation
        # the protocol names (cacerts with the new certificate), which cannot tell a
        # superseded certificate from the live one; ztpki's node always answers csrattrs.
        try:
            await est.cacerts()
        except ZtpkiError as exc:
            raise ActivationError(
                Step.CONFIRM, exc, remedy=confirm_remedy(exc, self.node)
            ) from None
        self._emit(
            Step.CONFIRM,
            "the node has no CSR attributes (404 to csrattrs); confirmed with cacerts instead",
        )

    # -- reporting ---------------------------------------------------------------------------

    def _report_connected(self, peer: x509.Certificate | None, identity: Identity) -> None:
        shown = _subject(peer) if peer is not None else "unknown"
        self._emit(
            Step.CONNECT,
            f"mutual TLS with {self.node}: the node ({shown}) is verified, the device "
            f"presented its {identity.phase} certificate",
        )

    def _emit(self, step: Step, message: str) -> None:
        event = ActivationEvent(step, message)
        self.events.append(event)
        logger.debug("device %s: %s: %s", self.memory.device_id, step.value, message)
        if self._report is not None:
            self._report(event)

    def _at(self, point: str) -> None:
        if self._fault is not None:
            self._fault.at(point)

    def _result(self, action: str, identity: Identity) -> ActivationResult:
        assert identity.certificate is not None
        return ActivationResult(
            device_id=self.memory.device_id,
            action=action,
            serial=serial_hex(identity.certificate),
            not_after=identity.certificate.not_valid_after_utc,
            events=tuple(self.events),
        )


def _subject_of_issuer(cert: x509.Certificate) -> str:
    return cert.issuer.rfc4514_string()
