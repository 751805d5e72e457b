"""Does a discovered node verify? Checked before the device sends anything of its own.

The device connects presenting no certificate, and verifies the node exactly as the
activating client will: under a pinned node CA with :func:`probe_pinned_anchor`, else with
its factory CA certificate(s), for the announced host name, then asks for ``cacerts``. A
node that fails is never handed the temporary certificate: the handshake with it stops at
the node's certificate.
"""

from __future__ import annotations

from datetime import datetime

from ztpki.device.communication import ESTClient, node_context
from ztpki.device.customer_node import NodeAddress, NodePin
from ztpki.device.memory import DeviceMemory
from ztpki.device.node_trust import probe_pinned_anchor
from ztpki.errors import ConfigurationError, VerificationFailed

__all__ = ["verify_candidate"]


async def verify_candidate(
    memory: DeviceMemory,
    node: NodeAddress,
    pin: NodePin | None,
    *,
    now: datetime,
    timeout: float,
) -> str:
    """What the node proved (a sentence), or a ``ZtpkiError`` saying why it does not verify
    (``VerificationFailed``) or could not be asked (``Unavailable`` and the like)."""
    if pin is not None:
        pinned = await probe_pinned_anchor(node, pin, now=now, timeout=timeout)
        shown = pinned.subject.rfc4514_string()
        return f"its certificate for {node.host} chains to the pinned CA {shown}"
    anchors = memory.trust_anchors()
    if not anchors:
        raise ConfigurationError("the device holds no factory CA certificate to verify nodes with")
    context = node_context(key=None, chain=[], anchors=anchors)
    async with ESTClient(node, context, timeout=timeout) as est:
        await est.cacerts()
        peer = est.peer_certificate
    if peer is None:
        raise VerificationFailed(f"the node at {node} presented no certificate")
    return (
        f"its certificate {peer.subject.rfc4514_string()} for {node.host} chains to the "
        "device's factory CA"
    )
