"""Recalling a production batch: revoke the temporary certificates of its devices.

The factory's batch directory (``factory manufacture --out``) keeps one device directory per
device, each with its batch name and, until it is customized, its temporary certificate. A
recall asks the factory CA system to revoke each one over the XML protocol
(``CAClient.revoke``): by serial where the directory still holds the certificate, else by
device id (that device's live certificate of the CA). The CA system allows it only for
certificates this CA-client obtained itself. Revoking is idempotent, so a recall may be run
again after a partial failure.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ztpki.casystem.client import CAClient
from ztpki.device.memory import DEVICE_FILE, DeviceMemory, Phase
from ztpki.errors import ConfigurationError, ZtpkiError
from ztpki.factory.configuration import BATCH
from ztpki.pki.pem import serial_hex
from ztpki.protocol.revocation import RevocationAnswer, RevocationRequest
from ztpki.store.records import RevocationReason


@dataclass(frozen=True)
class RecallTarget:
    device_id: str
    serial: str | None  # None: the directory no longer holds the temporary certificate


@dataclass(frozen=True)
class RecallResult:
    target: RecallTarget
    answer: RevocationAnswer | None = None
    error: str | None = None

    @property
    def revoked(self) -> bool:
        return self.answer is not None


def recall_targets(devices: Path, batch: str) -> list[RecallTarget]:
    """The devices of ``batch`` under ``devices``, with their temporary certificate's serial."""
    try:
        children = sorted(p for p in devices.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise ConfigurationError(f"cannot list devices in {devices}: {exc.strerror}") from None
    targets: list[RecallTarget] = []
    for path in children:
        if not (path / DEVICE_FILE).exists():
            continue
        memory = DeviceMemory.open(path)
        if memory.config().get(BATCH) != batch:
            continue
        identity = memory.identity()
        temporary = identity.phase is Phase.TEMPORARY and identity.certificate is not None
        serial = serial_hex(identity.certificate) if temporary and identity.certificate else None
        targets.append(RecallTarget(memory.device_id, serial))
    if not targets:
        raise ConfigurationError(f"no device of batch {batch!r} in {devices}")
    return targets


async def recall(
    client: CAClient,
    targets: Sequence[RecallTarget],
    *,
    ca: str | None,
    reason: RevocationReason,
    concurrency: int = 8,
) -> list[RecallResult]:
    """Revoke every target's temporary certificate; one result per target, in order."""
    slots = asyncio.Semaphore(concurrency)

    async def one(target: RecallTarget) -> RecallResult:
        request = RevocationRequest(
            request_id=secrets.token_hex(8),
            ca=ca,
            serial=target.serial,
            device_id=None if target.serial else target.device_id,
            reason=reason,
        )
        async with slots:
            try:
                return RecallResult(target, answer=await client.revoke(request))
            except ZtpkiError as exc:
                return RecallResult(target, error=exc.message)

    return list(await asyncio.gather(*(one(t) for t in targets)))
