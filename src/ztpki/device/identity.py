"""One generation of the device's identity, and the checks on what its memory stores.

An :class:`Identity` is a whole: key, certificate and CA certificates change together, and a
blank identity holds none of them. The memory (``ztpki.device.memory``) stores and switches
identities; this module only says what a valid one is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography import x509

from ztpki.pki.keys import PrivateKey

__all__ = ["MAX_DEVICE_ID", "ORDER", "Identity", "Phase", "check_config_value", "check_device_id"]

MAX_DEVICE_ID = 256
_SIMPLE = (str, bool, int, float)


class Phase(StrEnum):
    """Where the device is in its life: no identity, factory (birth) identity, customer's."""

    BLANK = "blank"
    TEMPORARY = "temporary"
    CUSTOMIZED = "customized"


ORDER = {Phase.BLANK: 0, Phase.TEMPORARY: 1, Phase.CUSTOMIZED: 2}


@dataclass(frozen=True)
class Identity:
    """One generation of the device's identity; a blank identity holds no key material."""

    phase: Phase
    generation: int
    private_key: PrivateKey | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    ca_certificates: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", Phase(self.phase))
        object.__setattr__(self, "ca_certificates", tuple(self.ca_certificates))
        if isinstance(self.generation, bool) or not isinstance(self.generation, int):
            raise TypeError("generation must be an int")
        if self.generation < 0:
            raise ValueError("generation must not be negative")
        if self.phase is Phase.BLANK:
            if self.private_key is not None or self.certificate is not None or self.ca_certificates:
                raise ValueError("a blank identity holds no key, certificate or CA certificate")
        elif self.private_key is None or self.certificate is None:
            raise ValueError(f"a {self.phase} identity needs a private key and a certificate")


def check_device_id(device_id: str) -> None:
    if not isinstance(device_id, str):
        raise TypeError("device_id must be a str")
    if not device_id or len(device_id) > MAX_DEVICE_ID or not device_id.isprintable():
        raise ValueError(f"device_id must be 1 to {MAX_DEVICE_ID} printable characters")


def check_config_value(key: str, value: Any) -> Any:
    """The JSON form of a simple config value; TypeError/ValueError for anything else."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    for item in items:
        if not isinstance(item, _SIMPLE):
            raise TypeError(
                f"config {key!r}: values are str, int, float, bool or a list of them, "
                f"not {type(item).__name__}"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"config {key!r}: {item} is not a finite number")
    return items if isinstance(value, list | tuple) else value
