"""The agent's choice of a discovered customer node: the first candidate that verifies.

Candidates come from :mod:`ztpki.device.discovery` in the order to try them. Each is
verified with the device's own anchors (:func:`ztpki.device.node_probe.verify_candidate`)
before the device presents its temporary certificate to it; one that does not verify is
logged and skipped. A node that refused the device (403: another customer's node, which the
factory CA vouches for too) is left out for the rest of the agent's life. How soon the agent
looks again after a round without a node is the agent's backoff.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ztpki.device.customer_node import NodeAddress, NodePin
from ztpki.device.discovery import Candidate, DiscoverySettings, Finding, find_candidates
from ztpki.device.memory import DeviceMemory
from ztpki.device.node_probe import verify_candidate
from ztpki.errors import ZtpkiError
from ztpki.pki.pem import fingerprint_sha256

__all__ = ["CandidateCheck", "NodeFinder", "check_candidates", "trusted_hints"]

logger = logging.getLogger(__name__)


def trusted_hints(memory: DeviceMemory, pin: NodePin | None) -> list[str]:
    """Fingerprints of the CAs the device verifies nodes with (the TXT hints it prefers)."""
    if pin is not None:
        return [pin.fingerprint]
    return [fingerprint_sha256(c) for c in memory.trust_anchors()]


@dataclass(frozen=True)
class CandidateCheck:
    """One candidate and the verdict: ``proof`` when it verifies, else ``problem``."""

    candidate: Candidate
    proof: str | None = None
    problem: str | None = None

    @property
    def verified(self) -> bool:
        return self.proof is not None


async def check_candidates(
    memory: DeviceMemory,
    settings: DiscoverySettings,
    pin: NodePin | None,
    *,
    now: Callable[[], datetime],
    timeout: float,
    stop_at_first: bool = False,
    skip: Callable[[NodeAddress], str | None] = lambda node: None,
    draw: Callable[[], float] = random.random,
) -> tuple[Finding, list[CandidateCheck]]:
    """Discover, then verify the candidates in order (up to the first that verifies, with
    ``stop_at_first``); ``skip`` names why a node is not even tried (None: try it)."""
    finding = await find_candidates(settings, trusted_hints=trusted_hints(memory, pin), draw=draw)
    checks: list[CandidateCheck] = []
    for candidate in finding.candidates:
        reason = skip(candidate.node)
        if reason is not None:
            checks.append(CandidateCheck(candidate, problem=reason))
            continue
        try:
            proof = await verify_candidate(memory, candidate.node, pin, now=now(), timeout=timeout)
        except ZtpkiError as exc:
            checks.append(CandidateCheck(candidate, problem=exc.message))
            continue
        checks.append(CandidateCheck(candidate, proof=proof))
        if stop_at_first:
            break
    return finding, checks


class NodeFinder:
    """Chooses the node for an agent that has no configured one."""

    def __init__(
        self,
        settings: DiscoverySettings,
        *,
        report: Callable[[str], None],
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._report = report
        self._draw = draw
        self._refused: dict[NodeAddress, str] = {}

    def refused(self, node: NodeAddress, why: str) -> None:
        """The node refused the device: do not try it again."""
        self._refused[_key(node)] = why

    def _skip(self, node: NodeAddress) -> str | None:
        why = self._refused.get(_key(node))
        return None if why is None else f"it refused this device before: {why}"

    async def choose(
        self,
        memory: DeviceMemory,
        pin: NodePin | None,
        *,
        now: Callable[[], datetime],
        timeout: float,
    ) -> NodeAddress | None:
        """The first candidate that verifies, or None (each other one is logged)."""
        finding, checks = await check_candidates(
            memory,
            self.settings,
            pin,
            now=now,
            timeout=timeout,
            stop_at_first=True,
            skip=self._skip,
            draw=self._draw,
        )
        device = memory.device_id
        for problem in finding.problems:
            logger.warning("device %s: discovery: %s", device, problem)
            self._report(problem)
        if not finding.candidates:
            self._report("no customer node is announced (mDNS or DNS-SD)")
        for check in checks:
            shown = check.candidate.describe()
            if not check.verified:
                logger.warning(
                    "device %s: skipped discovered node %s: %s", device, shown, check.problem
                )
                self._report(f"skipped {shown}: {check.problem}")
                continue
            logger.info("device %s: chose discovered customer node %s", device, shown)
            self._report(f"chose {shown}: {check.proof}")
            return check.candidate.node
        return None


def _key(node: NodeAddress) -> NodeAddress:
    # The addresses a node answers at may change between rounds; it is the same node.
    return NodeAddress(node.host, node.port, node.label)
