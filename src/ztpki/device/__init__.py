"""The device (1): its memory holds one whole identity at a time, private keys never in clear."""

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
