"""What the activating client reports: its steps, their events, and failures with remedies.

A failure is an :class:`ActivationError` naming the step, the cause (an error from the
``ztpki.errors`` tree) and what the operator can do; the CLI turns it into an exit status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ztpki.device.connect import ServerRefused
from ztpki.device.customer_node import NodeAddress, NodePin
from ztpki.device.node_trust import PinNotPresented
from ztpki.errors import (
    ConfigurationError,
    DeviceMemoryError,
    MalformedInput,
    NotAuthenticated,
    NotAuthorized,
    PayloadTooLarge,
    Unavailable,
    VerificationFailed,
    ZtpkiError,
)

__all__ = [
    "EXIT_REFUSED",
    "EXIT_RETRY",
    "ActivationError",
    "ActivationEvent",
    "ActivationResult",
    "Step",
    "confirm_remedy",
    "connect_remedy",
    "pinned_node_remedy",
    "refusal_remedy",
    "request_remedy",
]

EXIT_REFUSED = 3
EXIT_RETRY = 4


class Step(StrEnum):
    """The steps of one customization, in order (see ``ztpki.device.activation``)."""

    LOAD = "load"
    CONNECT = "connect"
    CACERTS = "cacerts"
    REQUEST = "request"
    VERIFY = "verify"
    REPLACE = "replace"
    CONFIRM = "confirm"


@dataclass(frozen=True)
class ActivationEvent:
    step: Step
    message: str


@dataclass(frozen=True)
class ActivationResult:
    """What one run achieved: ``action`` is activated, renewed, confirmed or unchanged."""

    device_id: str
    action: str
    serial: str
    not_after: datetime
    events: tuple[ActivationEvent, ...] = field(default=(), repr=False)


_REMEDIES: tuple[tuple[type[ZtpkiError], str], ...] = (
    (
        NotAuthorized,
        "the customer must check this device in the node's register (ztpki node devices): "
        "register an unknown device (ztpki node add), unblock a blocked one (ztpki node "
        "unblock)",
    ),
    (
        NotAuthenticated,
        "the node does not accept the device's certificate; the customer must give the node "
        "the CA certificate that issued it (the manufacturer's factory CA)",
    ),
    (Unavailable, "retry later; `ztpki device agent` retries by itself"),
    (ConfigurationError, "check the node address (https://HOST:PORT[/label])"),
    (DeviceMemoryError, "check the device directory (permissions, disk space), then run again"),
    (MalformedInput, "the device identity is unchanged; report this to the node's operator"),
    (PayloadTooLarge, "the device identity is unchanged; report this to the node's operator"),
)


def _remedy(step: Step, cause: ZtpkiError) -> str:
    if isinstance(cause, VerificationFailed):
        if step is Step.CONNECT:
            return (
                "check the node address; if the node's certificate comes from another CA than "
                "the factory's, pin that CA: give its certificate with --node-ca FILE (or its "
                "fingerprint with --node-ca-fingerprint sha256:HEX)"
            )
        return "the device identity is unchanged; report the answer to the node's operator"
    explained = refusal_remedy(cause)
    if explained is not None:
        return explained
    for kind, remedy in _REMEDIES:
        if isinstance(cause, kind):
            return remedy
    return "the device identity is unchanged; run again with --log-level debug for details"


class ActivationError(ZtpkiError):
    """One step of a customization failed; ``step``, ``cause`` and ``remedy`` say which and why.

    ``retryable`` is true for network errors and answers that say "later" (202, 429, 5xx);
    ``retry_after`` is then the node's hint in seconds.
    """

    code = "activation-failed"

    def __init__(self, step: Step, cause: ZtpkiError, *, remedy: str | None = None) -> None:
        self.step = step
        self.cause = cause
        self.remedy = remedy or _remedy(step, cause)
        cause_text = cause.message.rstrip(". ")
        super().__init__(f"step {step.value} failed: {cause_text}. What to do: {self.remedy}")

    @property
    def retryable(self) -> bool:
        return isinstance(self.cause, Unavailable)

    @property
    def retry_after(self) -> int | None:
        return self.cause.retry_after if isinstance(self.cause, Unavailable) else None

    @property
    def refused(self) -> bool:
        """The node refused the device for good (403, or its certificate is not accepted)."""
        return isinstance(self.cause, NotAuthorized | NotAuthenticated)

    @property
    def exit_code(self) -> int:
        if self.refused:
            return EXIT_REFUSED
        return EXIT_RETRY if self.retryable else 1


_BLOCKED = "is blocked in the customer register"
_UNKNOWN = "is not in the customer register"
_CUSTOMIZED = "already customized"


def refusal_remedy(exc: ZtpkiError) -> str | None:
    """What to do about a 403 the node explained: blocked, unknown or customized device.

    ztpki's node says why it refuses (see ``ztpki.node.authorization``); another EST server's
    403 gets the generic remedy.
    """
    if not isinstance(exc, NotAuthorized):
        return None
    text = exc.message
    if _BLOCKED in text:
        return (
            "the customer blocked this device on the node; if it should be served again, the "
            "customer must unblock it (ztpki node unblock --dir NODE_DIR DEVICE_ID), then run "
            "again"
        )
    if _UNKNOWN in text:
        return (
            "the node does not know this device; the customer must import the manufacturer's "
            "manifest that lists it or register it (ztpki node import / ztpki node add), then "
            "run again"
        )
    if _CUSTOMIZED in text:
        return (
            "the device is already customized at this node, so its temporary certificate is "
            "no longer accepted; use the operational identity (ztpki device renew renews it); "
            "a device that lost it must be registered anew by the customer"
        )
    return None


def request_remedy(exc: ZtpkiError, *, renewing: bool) -> str | None:
    if isinstance(exc, MalformedInput):
        return "the device identity is unchanged; report the node's answer to its operator"
    explained = refusal_remedy(exc)
    if explained is not None:
        return explained
    if renewing and isinstance(exc, NotAuthorized):
        return (
            "the node no longer renews this certificate; the customer must check the device "
            "in the node's register (ztpki node devices, ztpki node audit)"
        )
    return None


def pinned_node_remedy(exc: ZtpkiError, pin: NodePin, node: NodeAddress, device_dir: str) -> str:
    """What to do when the node does not verify under the pinned CA: the node did not send
    the pinned CA (give it to the device), or its chain does not match (a stale pin)."""
    set_node = f"ztpki device set-node --device {device_dir} {node}"
    if isinstance(exc, PinNotPresented):  # only under a fingerprint: see node_trust
        return (
            "give the device the CA certificate that issued the node's certificate (PEM, from "
            f"the node's operator; if it is the pinned CA, its fingerprint is {pin.shown}): "
            f"`{set_node} --node-ca FILE`; or the node's operator appends the missing CA "
            "certificate(s) to the node's server certificate file (server/cert.pem)"
        )
    return (
        f"the device pins the node's CA {pin.shown}; check the node address, and if the "
        "node's CA changed, the pin is stale: pin the new CA with "
        f"`{set_node} --node-ca FILE` (or --node-ca-fingerprint sha256:HEX), or remove the "
        f"pin with `{set_node}` to verify the node with the factory CA certificate(s) again"
    )


def confirm_remedy(exc: ZtpkiError, node: NodeAddress) -> str | None:
    if isinstance(exc, Unavailable):
        return (
            "the new identity is installed but not yet confirmed; run `ztpki device activate "
            f"--node {node}` again to confirm"
        )
    explained = refusal_remedy(exc)
    if explained is not None:
        return explained
    if isinstance(exc, NotAuthorized):
        return (
            "the node does not take the installed certificate as this device's current one; "
            "the customer must check the device in the node's register (ztpki node devices, "
            "ztpki node audit): a superseded certificate means another enrollment replaced it"
        )
    return None


def connect_remedy(exc: ZtpkiError) -> str | None:
    """What to do when ``ztpki device connect`` fails (see ``ztpki.device.connect``)."""
    if isinstance(exc, ServerRefused):
        if "revoked" in exc.message:
            return "the server's CA revoked its certificate: its operator must replace it"
        return (
            "make the server's CRL or OCSP responder reachable, or connect without "
            "--require-revocation-check"
        )
    if isinstance(exc, VerificationFailed):
        return (
            "give the server's CA certificate with --trust FILE (PEM); without it, the device "
            "trusts only the CA certificates stored with its current identity"
        )
    if isinstance(exc, ConfigurationError) and "no CA certificate" in exc.message:
        return "give the server's CA certificate with --trust FILE (PEM)"
    if isinstance(exc, NotAuthenticated):
        return (
            "the server must trust the CA that issued the device's current certificate (the "
            "customer CA once customized, the factory CA before)"
        )
    return None
