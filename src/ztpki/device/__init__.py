"""The device (1): its memory holds one whole identity at a time, private keys never in clear."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ztpki.device.connect import (
    RevocationPolicy,
    ServerRevocationError,
    connect,
    identity_ssl_context,
    operational_ssl_context,
)
from ztpki.device.customer_node import NodeAddress, NodePin
from ztpki.device.memory import DeviceMemory, Identity, Phase
from ztpki.device.secrets import EnvSecretProvider, FileSecretProvider, SecretProvider

if TYPE_CHECKING:
    from ztpki.device.activation import (
        ActivatingClient,
        ActivationError,
        ActivationEvent,
        ActivationResult,
        KeyMode,
        Step,
    )
    from ztpki.device.agent import Agent, AgentEvent, AgentStopped, Backoff, Clock
    from ztpki.device.answer import IssuedIdentity, verify_answer
    from ztpki.device.communication import ESTClient
    from ztpki.device.discovery import DiscoverySettings
    from ztpki.device.node_finder import NodeFinder

__all__ = [
    "ActivatingClient",
    "ActivationError",
    "ActivationEvent",
    "ActivationResult",
    "Agent",
    "AgentEvent",
    "AgentStopped",
    "Backoff",
    "Clock",
    "DeviceMemory",
    "DiscoverySettings",
    "ESTClient",
    "EnvSecretProvider",
    "FileSecretProvider",
    "Identity",
    "IssuedIdentity",
    "KeyMode",
    "NodeAddress",
    "NodeFinder",
    "NodePin",
    "Phase",
    "RevocationPolicy",
    "SecretProvider",
    "ServerRevocationError",
    "Step",
    "connect",
    "identity_ssl_context",
    "operational_ssl_context",
    "verify_answer",
]

# The activating client (33), communication means (35), agent mode, the operational identity
# are imported on first use: they bring in aiohttp, which reading the device memory never needs.
_LAZY = {
    "ActivatingClient": "activation",
    "ActivationError": "activation",
    "ActivationEvent": "activation",
    "ActivationResult": "activation",
    "KeyMode": "activation",
    "Step": "activation",
    "Agent": "agent",
    "AgentEvent": "agent",
    "AgentStopped": "agent",
    "Backoff": "agent",
    "Clock": "agent",
    "IssuedIdentity": "answer",
    "verify_answer": "answer",
    "ESTClient": "communication",
    # Discovery (DNS-SD) brings in zeroconf and dnspython.
    "DiscoverySettings": "discovery",
    "NodeFinder": "node_finder",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
