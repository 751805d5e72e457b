"""``[revocation]`` of node.toml: how the node revokes the certificates its register retires,
and how long the revocation sender's lease lasts."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from ztpki.errors import ConfigurationError

if TYPE_CHECKING:
    from ztpki.node.config import CALabel


@dataclass(frozen=True)
class RevocationPolicy:
    """``[revocation]``: how the node revokes the certificates its register retires."""

    # A renewed device's previous certificate is revoked this long after the device first uses
    # the new one (a label's own superseded_grace_seconds wins).
    superseded_grace_seconds: float = 0.0
    # How often the running node looks for revocations to send (`node block` and friends
    # queue theirs from another process), and the longest wait between two attempts.
    poll_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    # One process of all the node machines sharing the register sends: the holder of the
    # sender lease, which it renews at every look and before every order; another takes it
    # over this long after the holder stopped renewing it (it died, or hangs). None: 3 looks,
    # and at least 90 s (the default [limits] ca_timeout, 30 s, with room).
    sender_lease_seconds: float | None = None

    def __post_init__(self) -> None:
        if not self.superseded_grace_seconds >= 0:
            raise ConfigurationError("[revocation] superseded_grace_seconds must be 0 or more")
        for name in ("poll_seconds", "retry_max_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"[revocation] {name} must be positive")
        lease = self.sender_lease_seconds
        if lease is not None and not lease >= 3 * self.poll_seconds:
            raise ConfigurationError(
                "[revocation] sender_lease_seconds must be at least 3 times poll_seconds, so that "
                "the sender renews its lease well before it expires"
            )

    @property
    def sender_lease(self) -> float:
        """Seconds the sender lease lasts unless renewed."""
        if self.sender_lease_seconds is not None:
            return self.sender_lease_seconds
        return max(90.0, 3 * self.poll_seconds)

    def grace_for(self, label: CALabel) -> float:
        if label.superseded_grace_seconds is not None:
            return label.superseded_grace_seconds
        return self.superseded_grace_seconds

    def to_toml(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_toml(cls, table: dict[str, Any]) -> RevocationPolicy:
        known = {f.name for f in fields(cls)}
        unknown = set(table) - known
        if unknown:
            raise ConfigurationError(f"[revocation] has unknown setting {sorted(unknown)[0]!r}")
        return cls(**{name: float(value) for name, value in table.items()})
