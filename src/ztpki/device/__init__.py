"""The device (1): its memory holds one whole identity at a time, private keys never in clear."""

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
from ztpki.device.communication import ESTClient, NodeAddress
from ztpki.device.connect import connect, identity_ssl_context, operational_ssl_context
from ztpki.device.memory import DeviceMemory, Identity, Phase
from ztpki.device.secrets import EnvSecretProvider, FileSecretProvider, SecretProvider

__all__ = [
    "DeviceMemory",
    "EnvSecretProvider",
    "FileSecretProvider",
    "Identity",
    "Phase",
    "SecretProvider",
]

# The activating client (33), communication means (35), agent mode, the operational identity.
__all__ += [
    "ActivatingClient",
    "ActivationError",
    "ActivationEvent",
    "ActivationResult",
    "Agent",
    "AgentEvent",
    "AgentStopped",
    "Backoff",
    "Clock",
    "ESTClient",
    "IssuedIdentity",
    "KeyMode",
    "NodeAddress",
    "Step",
    "connect",
    "identity_ssl_context",
    "operational_ssl_context",
    "verify_answer",
]
