"""The request and confirm steps of the activating client (33) when it speaks CMP.

The same steps as over EST, with CMP's messages (RFC 9483):

    cacerts   the customer CA certificates: the new certificate's chain in the answer's
              extraCerts (genm id-it-caCerts serves them on their own)
    request   ir leaving the key to the customer CA (central key generation, RFC 9483
              4.1.6: the key comes back enveloped to the temporary key), or ir (first
              customization, --key-on-device) and kur (renewal) for a key made in the device,
              saved as its pending key before the request is sent (a retry asks for the same
              public key, and the node hands over what it already issued)
    confirm   certConf in the same transaction, sent only after the new identity is in the
              device memory: a device that crashes before it never told the node it has the
              certificate, and the node re-delivers or supersedes it, as for a lost EST answer

Before a renewal (kur) the device asks, in the same connection, whether the customer root
it trusts rolled over (genm rootCaCert, RFC 9483 4.3.2; ``cmp_root_update``). An update that
verifies under that root goes into the device memory at once, atomically, with the
identity's CA certificates, so every later TLS or CMP check uses the new root; one that does
not verify is refused, logged, and changes nothing, and the renewal goes on with the root the
device has.

A confirmation the crash did cut off (the memory holds the new identity, ``confirmed`` false)
is made with a genm protected by the new certificate: the node takes the first message
signed with it as the device's confirmation, as it takes the first EST request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ztpki.device.activation import ActivatingClient
from ztpki.device.answer import IssuedIdentity
from ztpki.device.cmp_client import CMPClient, Enrollment
from ztpki.device.cmp_root_update import follow_in, follow_root_update, keep_followed, trusted_root
from ztpki.device.cmp_transaction import Credentials, NodeTrust
from ztpki.device.communication import node_context
from ztpki.device.customer_node import NodeAddress
from ztpki.device.key_store import check_token_enrollment, tls_key
from ztpki.device.memory import DeviceMemory, Identity
from ztpki.device.reporting import (
    ActivationError,
    ActivationResult,
    Step,
    confirm_remedy,
    request_remedy,
)
from ztpki.device.request import KeyMode, Requested, device_key, drop_pending_key
from ztpki.errors import MalformedInput, VerificationFailed, ZtpkiError
from ztpki.pki.chain import verify_cmp_signer_chain
from ztpki.pki.keys import KeySpec, PrivateKey, key_spec_of
from ztpki.protocol.cmp import BodyType

__all__ = [
    "CMPActivatingClient",
    "CMPRequested",
    "EnrollmentProtocol",
    "activating_client",
    "cmp_confirm",
    "cmp_request",
    "cmp_url",
    "credentials_of",
    "issuer_chain",
    "trust_for",
]

CMP_PREFIX = "/.well-known/cmp"

logger = logging.getLogger(__name__)


class EnrollmentProtocol(StrEnum):
    """The enrollment protocol the activating client speaks to the node."""

    EST = "est"
    CMP = "cmp"


def cmp_url(node: NodeAddress) -> str:
    """The node's CMP endpoint: ``/.well-known/cmp``, or ``…/cmp/p/<label>`` (RFC 9811)."""
    label = f"/p/{node.label}" if node.label else ""
    return f"{node.base}{CMP_PREFIX}{label}"


def credentials_of(identity: Identity) -> Credentials:
    assert identity.private_key is not None and identity.certificate is not None
    chain = tuple(c for c in identity.ca_certificates if c.subject != c.issuer)
    return Credentials(identity.private_key, identity.certificate, chain)


@dataclass(frozen=True)
class CMPRequested:
    """What the request step got over CMP: the answer to verify, and its open transaction."""

    requested: Requested
    enrollment: Enrollment


async def cmp_request(
    cmp: CMPClient,
    memory: DeviceMemory,
    identity: Identity,
    mode: KeyMode | None,
    *,
    key_spec: KeySpec | None,
    pending: PrivateKey | None,
) -> CMPRequested:
    """ir with central key generation (mode SERVERKEYGEN) or for a key made in the device
    (SIMPLEENROLL), or kur (mode None: renewal) for a key made in the device."""
    assert identity.certificate is not None
    check_token_enrollment(memory, cmp=True, key_on_device=mode is not KeyMode.SERVERKEYGEN)
    if mode is KeyMode.SERVERKEYGEN:
        # Central key generation: nothing is saved before the request (there is no key yet);
        # a lost answer is asked again and the unconfirmed certificate superseded.
        enrollment = await cmp.enroll_central(BodyType.IR, subject=identity.certificate.subject)
        assert enrollment.private_key is not None
        certificates = [enrollment.certificate, *enrollment.extra_certs]
        origin = (
            "the customer CA generated the key; the node delivered it signed and enveloped "
            "to the temporary key"
        )
        return CMPRequested(Requested(enrollment.private_key, certificates, origin), enrollment)
    if pending is None:
        pending = await asyncio.to_thread(device_key, memory, identity, key_spec)
    try:
        if mode is KeyMode.SIMPLEENROLL:
            enrollment = await cmp.enroll(
                BodyType.IR, pending, subject=identity.certificate.subject
            )
        else:
            enrollment = await cmp.enroll(
                BodyType.KUR,
                pending,
                subject=identity.certificate.subject,
                updating=identity.certificate,
            )
    except ZtpkiError as exc:
        if exc.refused_with is not None or exc.code == "refused":
            await asyncio.to_thread(drop_pending_key, memory)
        raise
    certificates = [enrollment.certificate, *enrollment.extra_certs]
    origin = f"the key ({key_spec_of(pending)}) was generated in the device"
    return CMPRequested(Requested(pending, certificates, origin), enrollment)


async def cmp_confirm(cmp: CMPClient, enrollment: Enrollment | None) -> str:
    """certConf for ``enrollment``; without one (a resumed confirmation), a genm protected by
    the new certificate. The sentence says which."""
    if enrollment is not None:
        await cmp.confirm(enrollment)
        return "certConf accepted (pkiConf)"
    await cmp.ca_certificates()
    return "the node answered a genm signed with the operational certificate"


def issuer_chain(
    certificate: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """The certificates of ``candidates`` that certificate's issuer chain runs through, up to
    a self-signed one, in order: each one's signature checked, not only its name (the node's
    own chain in the same extraCerts, or a same-named stranger, stays out)."""
    chain: list[x509.Certificate] = []
    current = certificate
    while current.subject != current.issuer and len(chain) < len(candidates):
        issuer = next((c for c in candidates if c not in chain and _issued(current, by=c)), None)
        if issuer is None:
            break
        chain.append(issuer)
        current = issuer
    return chain


def _issued(certificate: x509.Certificate, *, by: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(by)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def trust_for(anchors: Sequence[x509.Certificate]) -> NodeTrust:
    """The device trusts the node's CMP signer as it trusts its TLS certificate: by anchors."""

    def check(leaf: x509.Certificate, others: Sequence[x509.Certificate], now: datetime) -> None:
        verify_cmp_signer_chain(leaf, others, anchors, now=now)

    return check


class CMPActivatingClient(ActivatingClient):
    """The activating client with CMP in place of EST for the cacerts, request and confirm
    steps; loading, verifying, the atomic swap and resuming are the EST client's own."""

    protocol_name = EnrollmentProtocol.CMP.value
    _enrollment: Enrollment | None = None
    # The CA certificates of the identity a renewal started from (after a root update it
    # followed): the renewed identity keeps the root they trust.
    _held: tuple[x509.Certificate, ...] = ()

    async def _cmp_client(self, credentials: Credentials) -> CMPClient:
        anchors = await self._node_anchors()
        try:
            context = node_context(
                key=tls_key(credentials.key),  # type: ignore[arg-type]
                chain=[credentials.certificate, *credentials.chain],
                anchors=anchors,
            )
        except ZtpkiError as exc:
            raise ActivationError(Step.CONNECT, exc) from None
        return CMPClient(
            cmp_url(self.node),
            credentials,
            trust_for(anchors),
            context=context,
            timeout=self._timeout,
            now=self._now,
            node=self.node,
        )

    async def _ask(
        self, identity: Identity, mode: KeyMode | None, *, pending: PrivateKey | None
    ) -> tuple[Requested, list[x509.Certificate]]:
        cmp = await self._cmp_client(credentials_of(identity))
        async with cmp:
            self._at("before-request")
            if mode is None:
                identity = await self._follow_root(cmp, identity)
                self._held = identity.ca_certificates
            try:
                got = await cmp_request(
                    cmp, self.memory, identity, mode, key_spec=self.key_spec, pending=pending
                )
            except ZtpkiError as exc:
                if cmp.node_certificate is None:  # no answer checked: the node is the issue
                    remedy = self._connect_remedy(exc)
                    raise ActivationError(Step.CONNECT, exc, remedy=remedy) from None
                remedy = request_remedy(exc, renewing=mode is None)
                raise ActivationError(Step.REQUEST, exc, remedy=remedy) from None
            self._report_connected(cmp.node_certificate, identity)
            # The CA certificates come with the answer (its extraCerts carry the new
            # certificate's chain, RFC 9483 4.1.1): no genm round trip before the request.
            cacerts = issuer_chain(got.enrollment.certificate, got.enrollment.extra_certs)
            self._emit(
                Step.CACERTS,
                "customer CA certificates (with the answer): "
                + "; ".join(c.subject.rfc4514_string() for c in cacerts),
            )
            operation = "ir" if mode is not None else "kur"
            polled = f" after {cmp.polls} poll(s)" if cmp.polls else ""
            self._emit(
                Step.REQUEST,
                f"{operation}: the node answered{polled} with "
                f"{len(got.requested.certificates)} certificate(s); {got.requested.origin}",
            )
            self._at("after-answer")
        self._enrollment = got.enrollment
        requested = replace(got.requested, certificates=[got.enrollment.certificate, *cacerts])
        return requested, cacerts

    async def _follow_root(self, cmp: CMPClient, identity: Identity) -> Identity:
        """genm rootCaCert with the root the device trusts; a verified update stored."""
        root = trusted_root(identity.ca_certificates)
        if root is None:
            return identity
        try:
            update = await follow_root_update(cmp, root, now=self._now())
        except (VerificationFailed, MalformedInput) as exc:
            logger.warning(
                "device %s: refused the node's root CA update: %s; the device keeps its root %s",
                self.memory.device_id,
                exc.message,
                root.subject.rfc4514_string(),
            )
            self._emit(Step.CACERTS, f"refused the node's root CA update: {exc.message}")
            return identity
        except ZtpkiError as exc:  # a node that cannot say: the renewal needs no update
            self._emit(Step.CACERTS, f"no root CA update from the node ({exc.message})")
            return identity
        if update is None:
            return identity
        cas = follow_in(identity.ca_certificates, update)
        try:
            await asyncio.to_thread(
                self.memory.replace_ca_certificates, cas, generation=identity.generation
            )
        except ZtpkiError as exc:
            raise ActivationError(Step.CACERTS, exc) from None
        self._emit(
            Step.CACERTS,
            "followed the customer root's key update: newWithOld verified under the root the "
            f"device trusted; the new root {update.new_with_new.subject.rfc4514_string()} "
            "is stored",
        )
        return replace(identity, ca_certificates=cas)

    async def _install(self, issued: IssuedIdentity, action: str) -> ActivationResult:
        held, self._held = self._held, ()
        if held:
            issued = replace(issued, ca_certificates=keep_followed(issued.ca_certificates, held))
        return await super()._install(issued, action)

    async def _present(self, identity: Identity) -> str:
        # certConf goes in the request's transaction, signed and sent with the identity that
        # asked (the new one is in the memory by now, the old key still in this process).
        enrollment, self._enrollment = self._enrollment, None
        credentials = (
            enrollment.transaction.credentials
            if enrollment is not None
            else credentials_of(identity)
        )
        cmp = await self._cmp_client(credentials)
        async with cmp:
            try:
                said = await cmp_confirm(cmp, enrollment)
            except ZtpkiError as exc:
                raise ActivationError(
                    Step.CONFIRM, exc, remedy=confirm_remedy(exc, self.node)
                ) from None
        return f"{said}: "


def activating_client(
    protocol: EnrollmentProtocol, memory: DeviceMemory, node: NodeAddress, **options: Any
) -> ActivatingClient:
    """The activating client that speaks ``protocol``; ``options`` as ActivatingClient's."""
    check_token_enrollment(memory, cmp=EnrollmentProtocol(protocol) is EnrollmentProtocol.CMP)
    kind = (
        CMPActivatingClient
        if EnrollmentProtocol(protocol) is EnrollmentProtocol.CMP
        else ActivatingClient
    )
    return kind(memory, node, **options)
