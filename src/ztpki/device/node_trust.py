"""How the device decides to trust its customer node under a pinned node CA.

Without a pin the device verifies the node with its factory CA certificate(s). Under a pin
(:class:`~ztpki.device.customer_node.NodePin`) it first looks at the node without sending
anything of its own: ``cacerts`` over a connection that presents no certificate and verifies
nothing. It verifies the node's certificate for this host under the pinned CA: the
installer's certificate (``--node-ca FILE``), or, with the fingerprint alone, the certificate
with that fingerprint among those the node sent in TLS and in ``cacerts``. Only then does it
connect with its identity, trusting the pinned CA alone.

A refusal says which of two things is wrong, because the fixes differ:

* :class:`PinNotPresented`: the node did not send the pinned CA (a leaf-only chain, or a chain
  cut short), so the device cannot check it against the pin: give the device the CA
  certificate (``--node-ca FILE``), or have the node send it;
* :class:`PinMismatch`: the node's chain leads elsewhere: the pin is stale (the node's CA
  changed) or the node is not the customer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from ztpki.device.communication import DEFAULT_TIMEOUT, ESTClient, unverified_context
from ztpki.device.customer_node import NodeAddress, NodePin
from ztpki.errors import VerificationFailed, ZtpkiError
from ztpki.pki.chain import verify_server_chain
from ztpki.pki.pem import fingerprint_sha256

__all__ = ["PinMismatch", "PinNotPresented", "probe_pinned_anchor"]


class PinNotPresented(VerificationFailed):
    """The node did not send the pinned CA (or a CA between its certificate and the pin)."""


class PinMismatch(VerificationFailed):
    """The node's certificate does not chain to the pinned CA."""


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _chain_up(leaf: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """The path from ``leaf`` up by issuer names through ``pool``, as far as it goes."""
    path, seen = [leaf], {fingerprint_sha256(leaf)}
    while path[-1].issuer != path[-1].subject:
        parents = [c for c in pool if c.subject == path[-1].issuer]
        parent = next((c for c in parents if fingerprint_sha256(c) not in seen), None)
        if parent is None:
            break
        seen.add(fingerprint_sha256(parent))
        path.append(parent)
    return path


async def _look_at(
    address: NodeAddress, timeout: float
) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """The chain the node presents in TLS, and its ``cacerts`` (empty when it has none)."""
    async with ESTClient(address, unverified_context(), timeout=timeout) as est:
        try:
            cacerts = await est.cacerts()
        except ZtpkiError:
            # The TLS chain is what the pin is checked on; a node that answers cacerts badly
            # gets that reported by the verified connection that follows.
            if not est.peer_chain:
                raise
            cacerts = []
        return est.peer_chain, cacerts


def _ends(leaf: x509.Certificate, top: x509.Certificate) -> str:
    shown = "its own certificate" if top is leaf else _subject(top)
    return f"the chain it sends ends at {shown}, issued by {top.issuer.rfc4514_string()}"


def _not_found(
    address: NodeAddress, pin: NodePin, leaf: x509.Certificate, top: x509.Certificate
) -> VerificationFailed:
    """The node's chain does not reach the pinned CA. A complete chain (up to a self-signed
    root) leads to another CA; an incomplete one left a CA out, which only matters while the
    device does not hold the pinned CA itself."""
    if top.issuer == top.subject:
        return PinMismatch(
            f"the node's chain does not match the pin: its certificate chains to "
            f"{_subject(top)} (sha256:{fingerprint_sha256(top)}), not to {pin.describe()}"
        )
    if pin.certificate is not None:
        return PinMismatch(
            f"the node's certificate does not chain to {pin.describe()}: {_ends(leaf, top)}, "
            "neither the pinned CA nor a CA the node sent that leads to it"
        )
    return PinNotPresented(
        f"the node at {address} did not send {pin.describe()}: {_ends(leaf, top)}, which it "
        "did not send, so the device cannot check the node against the pin"
    )


async def probe_pinned_anchor(
    address: NodeAddress, pin: NodePin, *, now: datetime, timeout: float = DEFAULT_TIMEOUT
) -> x509.Certificate:
    """The pinned node CA, once the node proved its certificate chains to it for this host.

    Raises :class:`PinNotPresented` or :class:`PinMismatch` (both ``VerificationFailed``);
    the caller then connects again trusting only the returned certificate.
    """
    presented, cacerts = await _look_at(address, timeout)
    if not presented:
        raise VerificationFailed(f"the node at {address} presented no certificate")
    leaf, candidates = presented[0], [*presented[1:], *cacerts]
    if pin.certificate is not None:
        pinned = pin.certificate
    else:
        found = [c for c in candidates if fingerprint_sha256(c) == pin.fingerprint]
        if not found:
            raise _not_found(address, pin, leaf, _chain_up(leaf, candidates)[-1])
        pinned = found[0]
    try:
        verify_server_chain(leaf, candidates, [pinned], host=address.host, now=now)
    except VerificationFailed as exc:
        path = _chain_up(leaf, [*candidates, pinned])
        if not any(fingerprint_sha256(c) == pin.fingerprint for c in path):
            raise _not_found(address, pin, leaf, path[-1]) from None
        raise PinMismatch(
            f"the node's certificate does not chain to {pin.describe()}: {exc.message}"
        ) from None
    return pinned
