"""Which revocations a change of the register owes the customer CA system (pure decisions).

A superseded certificate is revoked (``superseded``): at once when the device never confirmed
it (a lost answer, a retried serverkeygen, a taken-over issuance, a discarded one), and, for a
renewal, once the device first uses the renewed certificate plus the grace period of the
label's policy. ``node block`` holds the live certificate (``certificateHold``), ``unblock``
releases that hold, ``node retire`` revokes it for good with the operator's reason.
"""

from __future__ import annotations

from ztpki.node.authentication import ClientIdentity, IdentityKind
from ztpki.node.config import CALabel
from ztpki.store.records import DeviceState, RegisteredDevice, RevocationReason
from ztpki.store.revocation_records import RevocationAction, RevocationOrder


def superseded_order(
    device_id: str, label: CALabel, serial: str, *, renewal: bool
) -> RevocationOrder:
    return RevocationOrder(
        device_id=device_id,
        label=label.label,
        ca_name=label.ca_name,
        serial=serial,
        reason=RevocationReason.SUPERSEDED.value,
        waiting=renewal,
        cause=(
            "renewed; revoked once the renewed certificate is used"
            if renewal
            else "superseded by a new issuance before the device confirmed it"
        ),
    )


def confirms_renewal(device: RegisteredDevice | None, identity: ClientIdentity) -> bool:
    """True for the first request made with a renewed certificate."""
    return (
        device is not None
        and device.renewed_from is not None
        and device.state is DeviceState.CUSTOMIZED
        and identity.kind is IdentityKind.OPERATIONAL
        and device.issued_serial == identity.serial
    )


def live_serial(device: RegisteredDevice) -> str | None:
    """The certificate the device may hold now: the last one issued to it, if any."""
    return device.issued_serial


def operator_order(
    device: RegisteredDevice,
    label: CALabel,
    *,
    reason: RevocationReason,
    release: bool = False,
    cause: str,
) -> RevocationOrder | None:
    """``node block`` / ``unblock`` / ``retire``: the order for the device's live certificate."""
    serial = live_serial(device)
    if serial is None:
        return None
    return RevocationOrder(
        device_id=device.device_id,
        label=label.label,
        ca_name=label.ca_name,
        serial=serial,
        reason=reason.value,
        action=RevocationAction.RELEASE if release else RevocationAction.REVOKE,
        cause=cause,
    )
