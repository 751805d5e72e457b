"""The loading station (4): loads one device on the production line (patent Fig. 3, B41-B42).

It opens (or creates) the device memory, loads the CA-client configuration and the factory
trust anchors, then signals the device that it is time to request; the device's first
CA-client does the rest. When anything fails the device is put back exactly as it was: a
directory the station created is removed, an existing one gets its configuration and trust
anchors back (its identity never changed, since the switch is the last, atomic step).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from ztpki.casystem.client import CAClient
from ztpki.device.key_store import KEY_TOKEN
from ztpki.device.memory import DEVICE_FILE, DeviceMemory
from ztpki.errors import ConfigurationError, ZtpkiError
from ztpki.factory.answer import AcceptedIdentity
from ztpki.factory.configuration import (
    BATCH,
    MANUFACTURED_AT,
    MODEL,
    REQUEST_SIGNAL,
    CAClientConfig,
)
from ztpki.factory.first_client import FirstCAClient, name_device
from ztpki.pki.names import check_device_id

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Snapshot:
    """What an existing device held before loading, to put back on failure."""

    config: dict[str, Any]
    trust: list[x509.Certificate]


@dataclass(frozen=True)
class LoadingStation:
    """Loads devices one at a time with one CA-client configuration and trust bundle."""

    ca: CAClientConfig
    client_passphrase: bytes | None = field(default=None, repr=False)
    trust: tuple[x509.Certificate, ...] = ()
    model: str | None = None
    batch: str | None = None
    # The device's PKCS#11 token (a URI naming the token): its keys are generated there.
    token: str | None = None
    # --keygen station: the loading station's own token, which makes the key and wraps it.
    station_token: str | None = None
    client: CAClient | None = None
    clock: Callable[[], datetime] = _utcnow

    async def load(
        self, device_dir: Path, device_id: str, *, reissue: bool = False
    ) -> AcceptedIdentity:
        """Load one device and have it request its temporary identity."""
        try:
            check_device_id(device_id)
        except ZtpkiError as exc:
            raise ConfigurationError(exc.message) from None
        device_dir = Path(device_dir)
        existed = device_dir.exists()
        fresh = not (device_dir / DEVICE_FILE).exists()
        try:
            memory = self._memory(device_dir, device_id, fresh=fresh)
            snapshot = None if fresh else _Snapshot(memory.config(), memory.trust_anchors())
        except ZtpkiError as exc:
            raise name_device(device_id, exc) from None
        try:
            self._load_configuration(memory)
            memory.update_config(**{REQUEST_SIGNAL: uuid.uuid4().hex})
            client = FirstCAClient(
                memory,
                client_passphrase=self.client_passphrase,
                client=self.client,
                clock=self.clock,
                station_token=self.station_token,
            )
            return await client.respond(reissue=reissue)
        except BaseException as exc:
            problem = self._put_back(memory, snapshot, existed=existed)
            if isinstance(exc, ZtpkiError):
                error = name_device(device_id, exc)
                if problem:
                    error = type(error)(f"{error.message}; {problem}")
                raise error from None
            raise

    def _memory(self, device_dir: Path, device_id: str, *, fresh: bool) -> DeviceMemory:
        if fresh:
            return DeviceMemory.create(device_dir, device_id=device_id)
        memory = DeviceMemory.open(device_dir)
        if memory.device_id != device_id:
            raise ConfigurationError(
                f"{device_dir} holds device {memory.device_id}, not {device_id}; nothing changed"
            )
        return memory

    def _load_configuration(self, memory: DeviceMemory) -> None:
        memory.update_config(
            **self.ca.to_config(),
            **{MODEL: self.model, BATCH: self.batch, MANUFACTURED_AT: self.clock().isoformat()},
        )
        if self.token is not None:
            memory.update_config(**{KEY_TOKEN: self.token})
        if self.trust:
            memory.set_trust_anchors(self.trust)

    @staticmethod
    def _put_back(memory: DeviceMemory, snapshot: _Snapshot | None, *, existed: bool) -> str:
        """Undo the loading; returns a description of what could not be undone, or ''."""
        try:
            if snapshot is None:
                if existed:  # an empty directory the operator made: empty it again
                    for child in memory.path.iterdir():
                        if child.is_dir():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
                else:
                    shutil.rmtree(memory.path)
                return ""
            current = memory.config()
            memory.update_config(
                **{k: None for k in current if k not in snapshot.config}, **snapshot.config
            )
            memory.set_trust_anchors(snapshot.trust)
        except (OSError, ZtpkiError) as exc:
            log.error("device %s: cannot restore %s: %s", memory.device_id, memory.path, exc)
            return f"restoring {memory.path} also failed ({exc}); inspect it before reuse"
        return ""
