"""The authorization module (19): may this device have a certificate now, and which kind?

Pure decisions over one register row and one authenticated identity: no I/O, no clock. The
enrollment service applies a decision with the register's conditional transitions, so a
decision made on a stale row can only fail to apply, never apply wrongly.

Rules (patent Fig. 3, B59-B65):

* temporary certificate: the device must be listed, not blocked, its certificate chained to
  the manufacturer that listed it (through that manufacturer's trust bundle) and the one the
  manifest names (fingerprint), and not customized; it may enroll from LISTED, and retry
  from ISSUED (answer lost): simpleenroll with the same key gets the same certificate again,
  anything else is issued anew and supersedes the unconfirmed one; every retry stays under
  the EST label its first issuance began under (after an abort or a takeover too);
* operational certificate: only the device's current one counts (a superseded one is
  refused); its first use confirms the device (ISSUED -> CUSTOMIZED); it renews with
  simplereenroll, which supersedes it;
* either certificate names clientAuth in its EKU, or has none and its label allows that
  (``check_purpose``);
* a temporary certificate its factory CA's CRL lists as revoked is refused, whatever the
  register says (403, with the CRL's reason); one whose status no current CRL tells is
  deferred (503) unless its manufacturer's policy is ``fail_open`` (``check_revocation``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from ztpki.errors import NotAuthorized, Unavailable
from ztpki.node.authentication import ClientIdentity, IdentityKind
from ztpki.pki.revocation_check import RevocationStatus, RevocationVerdict
from ztpki.store.records import DeviceState, RegisteredDevice
from ztpki.untrusted import quote


class Operation(StrEnum):
    """The EST operations (RFC 7030 section 3.2.2)."""

    CACERTS = "cacerts"
    CSRATTRS = "csrattrs"
    SIMPLEENROLL = "simpleenroll"
    SIMPLEREENROLL = "simplereenroll"
    SERVERKEYGEN = "serverkeygen"


class RefusalReason(StrEnum):
    UNKNOWN = "unknown"
    BLOCKED = "blocked"
    FINGERPRINT_MISMATCH = "fingerprint-mismatch"
    MANUFACTURER_MISMATCH = "manufacturer-mismatch"
    CUSTOMIZED = "already-customized"
    SUBJECT_MISMATCH = "subject-mismatch"
    SUPERSEDED = "superseded"
    LABEL_MISMATCH = "label-mismatch"
    WRONG_OPERATION = "wrong-operation"
    NO_CLIENT_AUTH = "no-client-auth"
    RETIRED = "retired"
    REVOKED = "revoked"


class Refused(NotAuthorized):
    """The register refuses this device this request (HTTP 403 with the reason)."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RevocationUnknown(Unavailable):
    """No current CRL tells whether this temporary certificate is revoked, and its
    manufacturer's policy is to fail closed (HTTP 503: the node may fetch one soon)."""


@dataclass(frozen=True)
class RevocationCheck:
    """The factory CRLs' verdict on a temporary certificate, and the policy for an unknown one."""

    verdict: RevocationVerdict
    fail_open: bool
    manufacturers: tuple[str, ...]


class InProgress(Unavailable):
    """Another request of the same device holds the issuance lease (HTTP 503, retry soon)."""

    def __init__(self, device_id: str) -> None:
        super().__init__(
            f"an enrollment for device {device_id} is in progress; retry in a second",
            retry_after=1,
        )


class Action(StrEnum):
    PROCEED = "proceed"  # authorized; nothing to issue (csrattrs)
    ISSUE = "issue"
    REDELIVER = "redeliver"  # hand out the stored certificate again, without the CA system


# The states an issuance may start from, by the certificate that asks. A decision narrows this to
# the one state it was made on, so a decision made on a stale row cannot start an issuance.
TEMPORARY_FROM = frozenset({DeviceState.LISTED, DeviceState.ISSUED})
RENEWAL_FROM = frozenset({DeviceState.CUSTOMIZED})


@dataclass(frozen=True)
class Decision:
    action: Action
    allowed_from: frozenset[DeviceState] = frozenset()
    new_state: DeviceState | None = None
    reissue: bool = False
    reason: str = "authorized"
    takeover: bool = False  # lease expired or holder died: what it issued is unknown


@dataclass(frozen=True)
class EnrollmentContext:
    """What a decision looks at besides the register row and the identity."""

    operation: Operation
    label: str  # the EST label of the request
    csr_device_id: str | None = None  # the device the CSR names
    csr_spki: str | None = None  # SHA-256 of the CSR's SubjectPublicKeyInfo
    issued_label: str | None = None  # label whose CA issued the device's current certificate
    lease_expired: bool = False  # the device is ISSUING under a lease that ran out (a crash)


def check_purpose(
    identity: ClientIdentity, *, label: str, allow_no_eku: Collection[str] = ()
) -> None:
    """Refused unless the certificate names clientAuth in its EKU, or has no EKU and the label
    whose policy governs it is in ``allow_no_eku``: the request's label for a temporary
    certificate, the label of its CA for an operational one."""
    if identity.client_auth_stated:
        return
    governing = identity.label if identity.kind is IdentityKind.OPERATIONAL else None
    governing = governing or label
    if governing in allow_no_eku:
        return
    raise Refused(
        RefusalReason.NO_CLIENT_AUTH,
        f"the client certificate of device {identity.device_id} has no extendedKeyUsage: "
        f"this node requires clientAuth in it (EST label {governing} does not allow_no_eku)",
    )


def check_revocation(identity: ClientIdentity, check: RevocationCheck | None) -> None:
    """Refused if the factory CA revoked this certificate; RevocationUnknown if no current CRL
    says and the manufacturer does not fail open."""
    if check is None:
        return
    verdict = check.verdict
    if verdict.status is RevocationStatus.REVOKED:
        when = "" if verdict.revoked_at is None else f" on {verdict.revoked_at.isoformat()}"
        raise Refused(
            RefusalReason.REVOKED,
            f"the temporary certificate of device {identity.device_id} (serial "
            f"{identity.serial}) is revoked by its factory CA{when}, reason {verdict.reason}",
        )
    if verdict.status is RevocationStatus.UNKNOWN and not check.fail_open:
        makers = ", ".join(check.manufacturers) or "the factory CA"
        raise RevocationUnknown(
            f"the revocation status of the temporary certificate of device "
            f"{identity.device_id} is unknown ({verdict.detail}); manufacturer {makers} "
            "fails closed (fail_open = false): refused until a current CRL is fetched",
            retry_after=60,
        )


def should_confirm(device: RegisteredDevice | None, identity: ClientIdentity | None) -> bool:
    """True for the first request made with the certificate the node issued last (B71)."""
    return (
        device is not None
        and identity is not None
        and identity.kind is IdentityKind.OPERATIONAL
        and device.state is DeviceState.ISSUED
        and device.issued_serial == identity.serial
    )


def decide(
    device: RegisteredDevice | None, identity: ClientIdentity, context: EnrollmentContext
) -> Decision:
    """The decision for one request (confirmation already applied), or Refused / InProgress."""
    if device is None:
        raise Refused(
            RefusalReason.UNKNOWN, f"device {identity.device_id} is not in the customer register"
        )
    if device.state is DeviceState.RETIRED:
        raise Refused(
            RefusalReason.RETIRED,
            f"device {device.device_id} is retired: its certificates are revoked and it is "
            "never enrolled again",
        )
    if device.state is DeviceState.BLOCKED:
        raise Refused(
            RefusalReason.BLOCKED, f"device {device.device_id} is blocked in the customer register"
        )
    if identity.kind is IdentityKind.OPERATIONAL:
        return _operational(device, identity, context)
    return _temporary(device, identity, context)


def _resting_state(device: RegisteredDevice) -> DeviceState:
    if device.state is DeviceState.ISSUING and device.previous_state is not None:
        return device.previous_state
    return device.state


def _check_subject(device: RegisteredDevice, context: EnrollmentContext) -> None:
    if context.csr_device_id != device.device_id:
        # The CSR's subject is the client's own text: quoted, it cannot forge a log line.
        named = quote(context.csr_device_id) if context.csr_device_id else "no device"
        raise Refused(
            RefusalReason.SUBJECT_MISMATCH,
            f"subject mismatch: the CSR names {named}, but the client certificate is "
            f"device {device.device_id}'s",
        )


def _check_label(device: RegisteredDevice, context: EnrollmentContext) -> None:
    # Once an issuance began under a label, that label's CA may hold a live certificate for
    # the device (its answer lost, its node crashed): only a retry there supersedes it, so
    # until the device is customized every other label is refused.
    bound = device.issuance_label or context.issued_label
    if bound is not None and bound != context.label:
        raise Refused(
            RefusalReason.LABEL_MISMATCH,
            f"device {device.device_id} began its enrollment under EST label {bound}; until "
            f"it is customized it enrolls only there: retry under /.well-known/est/{bound}/",
        )


def _check_factory_certificate(device: RegisteredDevice, identity: ClientIdentity) -> None:
    if device.manufacturer is not None and device.manufacturer not in identity.manufacturers:
        raise Refused(
            RefusalReason.MANUFACTURER_MISMATCH,
            f"manufacturer mismatch: device {device.device_id} is listed for manufacturer "
            f"{device.manufacturer!r}, but this temporary certificate does not chain to that "
            "manufacturer's trust bundle",
        )
    if device.temp_fingerprint is not None and device.temp_fingerprint != identity.fingerprint:
        raise Refused(
            RefusalReason.FINGERPRINT_MISMATCH,
            "fingerprint mismatch: this temporary certificate is not the one the manufacturer's "
            f"manifest lists for device {device.device_id}",
        )


def _temporary(
    device: RegisteredDevice, identity: ClientIdentity, context: EnrollmentContext
) -> Decision:
    # A device listed for a manufacturer takes only a certificate of that manufacturer's CA: a
    # clone minted under another trusted manufacturer's root is refused even where the
    # register pins no fingerprint (a device listed by hand). A shared secret is the
    # operator's own word for this one device (ztpki.node.cmp_mac): no certificate to match.
    if identity.kind is IdentityKind.TEMPORARY:
        _check_factory_certificate(device, identity)
    if _resting_state(device) is DeviceState.CUSTOMIZED:
        raise Refused(
            RefusalReason.CUSTOMIZED,
            f"device {device.device_id} is already customized: its temporary certificate is no "
            "longer accepted; use the operational certificate",
        )
    if context.operation is Operation.CSRATTRS:
        return Decision(Action.PROCEED)
    if context.operation is Operation.SIMPLEREENROLL:
        raise Refused(
            RefusalReason.WRONG_OPERATION,
            "simplereenroll renews an operational certificate; with the temporary certificate, "
            "enroll with simpleenroll or serverkeygen",
        )
    _check_subject(device, context)
    _check_label(device, context)
    if device.state is DeviceState.ISSUING:
        return _take_over(device, context, new_state=DeviceState.ISSUED)
    if device.state is DeviceState.ISSUED:
        if context.operation is Operation.SIMPLEENROLL and context.csr_spki == device.issued_spki:
            return Decision(Action.REDELIVER, reason="same public key: answer sent again")
        return Decision(
            Action.ISSUE,
            allowed_from=frozenset({DeviceState.ISSUED}),
            new_state=DeviceState.ISSUED,
            reissue=True,
            reason="issued anew; the unconfirmed certificate is superseded",
        )
    return Decision(
        Action.ISSUE,
        allowed_from=frozenset({DeviceState.LISTED}),
        new_state=DeviceState.ISSUED,
        reissue=False,
        reason="first enrollment with the temporary certificate",
    )


def _operational(
    device: RegisteredDevice, identity: ClientIdentity, context: EnrollmentContext
) -> Decision:
    if device.issued_serial != identity.serial:
        if _renewal_answer_lost(device, identity, context):
            return Decision(Action.REDELIVER, reason="renewal answer sent again (same key)")
        raise Refused(
            RefusalReason.SUPERSEDED,
            f"operational certificate {identity.serial} is not device {device.device_id}'s "
            "current certificate (superseded)",
        )
    if context.operation is Operation.CSRATTRS:
        return Decision(Action.PROCEED)
    if context.operation is not Operation.SIMPLEREENROLL:
        raise Refused(
            RefusalReason.WRONG_OPERATION,
            f"device {device.device_id} is already customized: renew its operational "
            "certificate with simplereenroll",
        )
    if identity.label != context.label:
        raise Refused(
            RefusalReason.LABEL_MISMATCH,
            f"this certificate was issued under EST label {identity.label}; renew it there",
        )
    _check_subject(device, context)
    if device.state is DeviceState.ISSUING:
        if device.previous_state is not DeviceState.CUSTOMIZED:
            raise InProgress(device.device_id)
        return _take_over(device, context, new_state=DeviceState.CUSTOMIZED)
    return Decision(
        Action.ISSUE,
        allowed_from=RENEWAL_FROM,
        new_state=DeviceState.CUSTOMIZED,
        reissue=True,
        reason="renewal; the previous operational certificate is superseded",
    )


def _take_over(
    device: RegisteredDevice, context: EnrollmentContext, *, new_state: DeviceState
) -> Decision:
    """An issuance in flight: wait for it, unless its lease ran out (its node crashed)."""
    if not context.lease_expired or device.previous_state is None:
        raise InProgress(device.device_id)
    # The crashed issuance may have reached the CA system: supersede whatever it issued, and
    # never hand out the stored certificate, which it may have superseded already.
    return Decision(
        Action.ISSUE,
        allowed_from=frozenset({device.previous_state}),
        new_state=new_state,
        reissue=True,
        reason="took over an issuance whose lease expired or whose holder was killed",
        takeover=True,
    )


def _renewal_answer_lost(
    device: RegisteredDevice, identity: ClientIdentity, context: EnrollmentContext
) -> bool:
    # A renewal whose answer was lost: the device still holds its previous certificate and
    # sends the same CSR again. The CSR proves it holds the key of the current certificate,
    # so handing that certificate over again gives nothing away.
    return (
        context.operation is Operation.SIMPLEREENROLL
        and device.state is DeviceState.CUSTOMIZED
        and identity.label == context.label
        and context.csr_device_id == device.device_id
        and context.csr_spki is not None
        and context.csr_spki == device.issued_spki
    )
