"""Refusals of parties the node could not authenticate: counted, logged at a bounded rate,
and never written to the audit trail.

The audit trail records decisions about identities: a request whose client certificate the
authentication module verified (it chains to a configured factory trust anchor or customer
CA, is valid now, not revoked, and names a device id). Such a party holds a key a trusted CA
certified, so what it can add to the trail is bounded by what that CA issued; a listed
device that is blocked, or a genuine factory certificate for a device the register does not
know, is still refused *and audited*.

Everything before that point has no identity to record a decision against, and costs the
sender nothing to repeat: a TLS handshake the node refused, a request without a client
certificate, a certificate that does not verify. Those are counted in
``ztpki_node_unauthenticated_refusals_total{reason}`` (exact) and logged through a
``LogThrottle`` (bounded), so strangers can neither grow the hash-chained trail nor flood
the log.
"""

from __future__ import annotations

import logging
import ssl
from enum import StrEnum

from ztpki.credentials import handshake_reason, log_handshake_refusal
from ztpki.node.metrics import NodeMetrics
from ztpki.throttle import LogThrottle

log = logging.getLogger(__name__)


class UnauthenticatedReason(StrEnum):
    """The ``reason`` label of the metric: a fixed, small set."""

    TLS_HANDSHAKE = "tls-handshake"  # refused in the TLS layer (chain, protocol version)
    NO_CERTIFICATE = "no-client-certificate"  # an operation that needs one came without
    CERTIFICATE_REFUSED = "certificate-refused"  # the authentication module refused it
    # A CMP MAC that proved no device's shared secret (a metric label, not a secret).
    SHARED_SECRET_REFUSED = "shared-secret-refused"  # noqa: S105


class StrangerRefusals:
    """Counts and logs the refusals that happen before any identity is authenticated."""

    def __init__(self, metrics: NodeMetrics, *, throttle: LogThrottle | None = None) -> None:
        self.metrics = metrics
        self._log = throttle or LogThrottle(log)

    def tls_handshake(self, exc: ssl.SSLError) -> None:
        """The TLS layer refused a handshake (the hook of the node's server context)."""
        self.metrics.count_unauthenticated(UnauthenticatedReason.TLS_HANDSHAKE)
        self.metrics.count_handshake_failure(handshake_reason(exc))
        log_handshake_refusal(exc)

    def request(
        self, reason: UnauthenticatedReason, endpoint: str, message: str, *, peer: str | None
    ) -> None:
        """An HTTP request refused before authentication; ``message`` is the error sent back,
        whose untrusted parts were quoted where they entered it."""
        self.metrics.count_unauthenticated(reason)
        self._log.info(
            reason.value,
            "refused %s from unauthenticated client %s (%s): %s",
            endpoint,
            peer or "(unknown peer)",
            reason.value,
            message,
        )
