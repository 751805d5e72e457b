"""The request step of the activating client (33): ask the node for a key and certificate.

``serverkeygen`` has the customer CA generate the key; ``simpleenroll`` (first
customization) and ``simplereenroll`` (renewal) send a CSR for a key made here. A key made
here is saved (encrypted) as the device's pending key before its request is sent, so a retry
after a lost answer asks for the same public key, which the node answers by handing over the
certificate it already issued.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509

from ztpki.device.communication import ESTClient
from ztpki.device.key_store import new_device_key
from ztpki.device.memory import DeviceMemory, Identity
from ztpki.device.reporting import ActivationError, Step, request_remedy
from ztpki.errors import DeviceMemoryError, MalformedInput, ZtpkiError
from ztpki.pki.keys import (
    KeySpec,
    PrivateKey,
    decode_pkcs8,
    key_spec_of,
)
from ztpki.pki.pem import serial_hex
from ztpki.protocol.est import build_csr

__all__ = ["KeyMode", "Requested", "device_key", "drop_pending_key", "request_identity"]

logger = logging.getLogger(__name__)

KEY_ALGORITHM_KEY = "key_algorithm"  # in the device configuration: the key a request makes


class KeyMode(StrEnum):
    """Who generates the operational key: the customer CA (serverkeygen) or the device."""

    SERVERKEYGEN = "serverkeygen"
    SIMPLEENROLL = "simpleenroll"


@dataclass(frozen=True)
class Requested:
    """The node's answer before verification: the key, the certificates, and who made the key."""

    private_key: PrivateKey
    certificates: list[x509.Certificate]
    origin: str


async def request_identity(
    est: ESTClient,
    memory: DeviceMemory,
    identity: Identity,
    mode: KeyMode | None,
    *,
    key_spec: KeySpec | None,
    pending: PrivateKey | None,
) -> Requested:
    """One request; ``mode`` None means simplereenroll (renewal), with the ``pending`` key of
    an interrupted renewal when given. Failures are :class:`ActivationError` (step request)."""
    assert identity.private_key is not None
    device_id = memory.device_id
    try:
        if mode is KeyMode.SERVERKEYGEN:
            # The CA ignores the CSR's key; signing with the temporary key costs nothing.
            csr = build_csr(identity.private_key, device_id=device_id)
            answer = await est.serverkeygen(csr)
            try:
                key = decode_pkcs8(answer.private_key_der, passphrase=None)
            except MalformedInput as exc:
                raise MalformedInput(f"the serverkeygen key part: {exc.message}") from None
            return Requested(key, list(answer.certificates), "the customer CA generated the key")
        if pending is None:
            pending = await asyncio.to_thread(device_key, memory, identity, key_spec)
        csr = build_csr(pending, device_id=device_id)
        if mode is KeyMode.SIMPLEENROLL:
            certificates = await est.simpleenroll(csr)
        else:
            certificates = await est.simplereenroll(csr)
        origin = f"the key ({key_spec_of(pending)}) was generated in the device"
        return Requested(pending, certificates, origin)
    except ZtpkiError as exc:
        if exc.refused_with is not None and mode is not KeyMode.SERVERKEYGEN:
            # The node's final word on this key: it issued nothing for it, and asking
            # again with it (another algorithm may be configured by now) cannot succeed.
            await asyncio.to_thread(drop_pending_key, memory)
        remedy = request_remedy(exc, renewing=mode is None)
        raise ActivationError(Step.REQUEST, exc, remedy=remedy) from None


def device_key(memory: DeviceMemory, identity: Identity, key_spec: KeySpec | None) -> PrivateKey:
    """The key for a device-side request: the one a lost answer left pending, or a new
    one saved before it is sent, so that a retry asks for the same public key."""
    assert identity.private_key is not None and identity.certificate is not None
    spec = key_spec or _configured_spec(memory, identity.private_key)
    made_with = serial_hex(identity.certificate)
    try:
        pending = memory.pending_key()
    except DeviceMemoryError:
        pending = None  # unreadable, so it can fetch nothing: replaced below
    if (
        pending is not None
        and key_spec_of(pending) == spec
        and memory.pending_key_made_with() == made_with
    ):
        return pending
    # In the device's token when it has one: a new object, the current key untouched.
    key = new_device_key(memory, spec)
    memory.save_pending_key(key, made_with=made_with)
    return key


def _configured_spec(memory: DeviceMemory, current: PrivateKey) -> KeySpec:
    configured = memory.config().get(KEY_ALGORITHM_KEY)
    if isinstance(configured, str):
        return KeySpec.parse(configured)
    return key_spec_of(current)


def drop_pending_key(memory: DeviceMemory) -> None:
    try:
        memory.clear_pending_key()
    except ZtpkiError as exc:
        # The refusal is what the operator needs to hear; a stale key is dropped later.
        logger.warning("device %s: %s", memory.device_id, exc.message)
