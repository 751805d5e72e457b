"""The revocations the customer node owes its CA system: what to queue, and a queued one.

The register writes an order in the same transaction as the state change that causes it
(a superseded issuance, a renewal, a block, a retirement), so that a revocation is never lost;
the running node sends them (ztpki.node.revocation) and records each outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ztpki.store.instants import require_utc
from ztpki.store.records import RevocationReason


class RevocationAction(StrEnum):
    REVOKE = "revoke"
    RELEASE = "release"  # lift a certificateHold (removeFromCRL)


class QueueStatus(StrEnum):
    WAITING = "waiting"  # a renewal's superseded certificate: due once the new one is used
    PENDING = "pending"  # to send, at due_at or later
    DONE = "done"  # the CA system acknowledged it
    REFUSED = "refused"  # the CA system refused it for good: the operator's to look at


OPEN_STATUSES = frozenset({QueueStatus.WAITING, QueueStatus.PENDING})


@dataclass(frozen=True)
class RevocationOrder:
    """One revocation (or release of a hold) to queue for the certificate ``serial``.

    ``label``: the EST label whose CA issued it; ``ca_name``: that CA's name in the customer
    CA system (None: its default CA). ``reason``: an RFC 5280 reason (RevocationReason value).
    ``waiting``: due only once the device confirms a renewal (then after the grace period).
    """

    device_id: str
    label: str
    ca_name: str | None
    serial: str
    reason: str
    action: RevocationAction = RevocationAction.REVOKE
    waiting: bool = False
    cause: str = ""  # why, for the audit trail's "revocation-requested" entry

    def __post_init__(self) -> None:
        for name in ("device_id", "label", "serial", "reason"):
            if not getattr(self, name):
                raise ValueError(f"a revocation order needs a {name}")
        object.__setattr__(self, "action", RevocationAction(self.action))
        object.__setattr__(self, "reason", RevocationReason(self.reason).value)
        if self.waiting and self.action is not RevocationAction.REVOKE:
            raise ValueError("only a revocation waits for a renewal's confirmation")


@dataclass(frozen=True)
class QueuedRevocation:
    """One order in the register's queue, with where it stands."""

    seq: int
    device_id: str
    label: str
    ca_name: str | None
    serial: str
    action: RevocationAction
    reason: str
    status: QueueStatus
    created_at: datetime
    due_at: datetime | None
    attempts: int
    last_error: str | None
    done_at: datetime | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", RevocationAction(self.action))
        object.__setattr__(self, "status", QueueStatus(self.status))
        object.__setattr__(self, "created_at", require_utc(self.created_at, name="created_at"))

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES

    def describe(self) -> str:
        """One line for `node devices`: what, for which certificate, and where it stands."""
        what = "release hold" if self.action is RevocationAction.RELEASE else self.reason
        text = f"{what} {self.serial} {self.status.value}"
        if self.attempts:
            text += f" (attempts {self.attempts}"
            text += f": {self.last_error})" if self.last_error else ")"
        return text


@dataclass(frozen=True)
class SenderLease:
    """Who sends the register's revocation orders: ``holder`` until ``expires_at``.

    ``token`` grows by one at every taking of the lease: the fencing token a sender closes an
    order under (a sender whose token is no longer current changes nothing).
    """

    holder: str
    token: int
    expires_at: datetime

    def __post_init__(self) -> None:
        require_utc(self.expires_at, name="expires_at")
