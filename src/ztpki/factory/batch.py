"""A production batch: one CA-client outside the devices requests for many (patent Fig. 1, 3).

Devices are made concurrently over a pool of kept-alive TLS connections. Each new device is
built whole in ``OUT/.staging/`` and published with one directory rename, so ``OUT/<id>`` is
either absent or a complete device with a temporary identity. Re-running a batch skips the
devices already made; the CA system refuses a second live certificate for a device unless
the batch asks to reissue. One run at a time per output directory (a lock enforces it).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import string
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509

from ztpki.casystem.client import CAClient
from ztpki.device.atomic import DIR_MODE, fsync_dir
from ztpki.device.memory import DEVICE_FILE, DeviceMemory, Phase
from ztpki.errors import ConfigurationError, DeviceMemoryError, ZtpkiError
from ztpki.factory.answer import AcceptedIdentity, accept_answer
from ztpki.factory.configuration import BATCH, MANUFACTURED_AT, MODEL, CAClientConfig
from ztpki.factory.first_client import name_device
from ztpki.pki.names import check_device_id
from ztpki.pki.pem import serial_hex
from ztpki.protocol.enrollment import EnrollmentParameters, EnrollmentRequest

log = logging.getLogger(__name__)

STAGING = ".staging"
LOCK = ".manufacture.lock"
DEFAULT_PATTERN = "{batch}-{n:06d}"
_PATTERN_FIELDS = frozenset({"n", "batch"})


class Outcome(StrEnum):
    MADE = "made"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class DeviceResult:
    """What happened to one device: the new serial, why it was skipped, or the error."""

    device_id: str
    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class BatchReport:
    results: tuple[DeviceResult, ...]
    elapsed: float

    def of(self, outcome: Outcome) -> tuple[DeviceResult, ...]:
        return tuple(r for r in self.results if r.outcome is outcome)

    @property
    def rate(self) -> float:
        """Devices made per second."""
        return len(self.of(Outcome.MADE)) / self.elapsed if self.elapsed > 0 else 0.0


def device_ids(pattern: str, *, count: int, batch: str | None, start: int = 1) -> tuple[str, ...]:
    """count unique device ids from pattern, e.g. 'ACME-{batch}-{n:06d}' with n from start."""
    if count < 0 or start < 0:
        raise ConfigurationError("--count and the first number must not be negative")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as exc:
        raise ConfigurationError(
            f"--id-pattern {pattern!r} is not a valid pattern: {exc}"
        ) from None
    if not fields <= _PATTERN_FIELDS or "n" not in fields:
        raise ConfigurationError(
            f"--id-pattern {pattern!r} must use {{n}} (and may use {{batch}}), nothing else"
        )
    if "batch" in fields and batch is None:
        raise ConfigurationError(f"--id-pattern {pattern!r} uses {{batch}}: give --batch")
    try:
        ids = tuple(pattern.format(n=n, batch=batch) for n in range(start, start + count))
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"--id-pattern {pattern!r}: {exc}") from None
    for device_id in ids:
        try:
            check_device_id(device_id)
        except ZtpkiError as exc:
            raise ConfigurationError(
                f"--id-pattern {pattern!r} gives an invalid id: {exc}"
            ) from None
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"--id-pattern {pattern!r} gives the same id twice")
    return ids


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ProductionBatch:
    """Which devices to make, where, and with which CA-client configuration."""

    out: Path
    device_ids: tuple[str, ...]
    ca: CAClientConfig
    trust: tuple[x509.Certificate, ...] = ()
    model: str | None = None
    batch: str | None = None
    reissue: bool = False
    clock: Callable[[], datetime] = _utcnow
    _parameters: EnrollmentParameters = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(set(self.device_ids)) != len(self.device_ids):
            raise ConfigurationError("the batch names a device id twice")
        for device_id in self.device_ids:
            check_device_id(device_id)
        object.__setattr__(self, "_parameters", self.ca.request_parameters())

    def request(self, device_id: str) -> EnrollmentRequest:
        return EnrollmentRequest(
            request_id=uuid.uuid4().hex,
            device_id=device_id,
            ca=self.ca.ca_name,
            parameters=self._parameters,
            reissue=self.reissue,
        )

    def metadata(self) -> dict[str, Any]:
        return {
            **self.ca.to_config(),
            MODEL: self.model,
            BATCH: self.batch,
            MANUFACTURED_AT: self.clock().isoformat(),
        }


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigurationError(
                f"another `factory manufacture` run is using {out}; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def recover_staging(out: Path) -> list[str]:
    """Finish or discard devices a crashed run left in OUT/.staging; returns those published.

    A staged device with a complete temporary identity is published (the CA already recorded
    its certificate, so asking again would be refused); anything else is discarded.
    """
    staging = out / STAGING
    published: list[str] = []
    if not staging.is_dir():
        return published
    for entry in sorted(staging.iterdir()):
        try:
            memory = DeviceMemory.open(entry)
            complete = memory.identity().phase is Phase.TEMPORARY
            target = out / memory.device_id
        except ZtpkiError:
            complete = False
        if complete and not target.exists():
            os.rename(entry, target)
            published.append(target.name)
            log.warning("published device %s left staged by an interrupted run", target.name)
        else:
            shutil.rmtree(entry, ignore_errors=True)
    fsync_dir(out)
    return published


class Manufacturer:
    """Runs one ProductionBatch with a CAClient; `run` returns the report."""

    def __init__(
        self,
        batch: ProductionBatch,
        client: CAClient,
        *,
        concurrency: int = 16,
        on_result: Callable[[DeviceResult], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("--concurrency must be at least 1")
        self.batch = batch
        self._client = client
        self._slots = asyncio.Semaphore(concurrency)
        self._on_result = on_result

    async def run(self) -> BatchReport:
        out = self.batch.out
        try:
            out.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            (out / STAGING).mkdir(exist_ok=True, mode=DIR_MODE)
        except OSError as exc:
            raise ConfigurationError(f"cannot use output directory {out}: {exc.strerror}") from None
        started = time.perf_counter()
        with _exclusive(out):
            recover_staging(out)
            results = await asyncio.gather(*(self._one(d) for d in self.batch.device_ids))
        return BatchReport(tuple(results), time.perf_counter() - started)

    async def _one(self, device_id: str) -> DeviceResult:
        async with self._slots:
            try:
                result = await self._make(device_id)
            except ZtpkiError as exc:
                result = DeviceResult(
                    device_id, Outcome.FAILED, name_device(device_id, exc).message
                )
            except OSError as exc:
                result = DeviceResult(
                    device_id, Outcome.FAILED, f"device {device_id}: {exc.strerror or exc}"
                )
            except Exception:
                log.exception("device %s: internal error", device_id)
                result = DeviceResult(
                    device_id, Outcome.FAILED, f"device {device_id}: internal error (see the log)"
                )
        if self._on_result is not None:
            self._on_result(result)
        return result

    async def _make(self, device_id: str) -> DeviceResult:
        path = self.batch.out / device_id
        existing: DeviceMemory | None = None
        if path.exists():
            found = await asyncio.to_thread(self._existing, path, device_id)
            if isinstance(found, DeviceResult):
                return found
            existing = found
        answer = await self._client.enroll(self.batch.request(device_id))
        anchors = existing.trust_anchors() if existing is not None else []
        accepted = accept_answer(
            answer,
            device_id=device_id,
            anchors=anchors or self.batch.trust or None,
            now=self.batch.clock(),
        )
        if existing is None:
            await asyncio.to_thread(self._publish, accepted)
        else:
            await asyncio.to_thread(self._replace, existing, accepted)
        return DeviceResult(device_id, Outcome.MADE, serial_hex(accepted.certificate))

    def _existing(self, path: Path, device_id: str) -> DeviceMemory | DeviceResult:
        """The device memory to (re)issue into, or the reason to leave it alone."""
        if not (path / DEVICE_FILE).exists():
            raise DeviceMemoryError(
                f"{path} exists but is not a device memory; move it away and retry"
            )
        memory = DeviceMemory.open(path)
        if memory.device_id != device_id:
            raise DeviceMemoryError(f"{path} holds device {memory.device_id}; nothing changed")
        identity = memory.identity()
        if identity.phase is Phase.CUSTOMIZED:
            return DeviceResult(device_id, Outcome.SKIPPED, "customized; left alone")
        if identity.phase is Phase.TEMPORARY and not self.batch.reissue:
            assert identity.certificate is not None
            return DeviceResult(
                device_id,
                Outcome.SKIPPED,
                f"already temporary (serial {serial_hex(identity.certificate)})",
            )
        return memory

    def _publish(self, accepted: AcceptedIdentity) -> None:
        """Build the device whole in staging, then rename it into place."""
        out = self.batch.out
        stage = out / STAGING / f"{accepted.device_id}.{uuid.uuid4().hex[:12]}"
        try:
            memory = DeviceMemory.create(stage, device_id=accepted.device_id)
            memory.update_config(**self.batch.metadata())
            memory.set_trust_anchors(accepted.trust_anchors)
            memory.replace_identity(
                phase=Phase.TEMPORARY,
                private_key=accepted.private_key,
                certificate=accepted.certificate,
                ca_certificates=accepted.ca_certificates,
            )
            try:
                os.rename(stage, out / accepted.device_id)
            except OSError as exc:
                raise DeviceMemoryError(
                    f"cannot publish into {out / accepted.device_id} ({exc.strerror}); "
                    "did another process create it?"
                ) from None
            fsync_dir(out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise

    def _replace(self, memory: DeviceMemory, accepted: AcceptedIdentity) -> None:
        """Reissue into an existing device; its identity switch is the one atomic step."""
        had_anchors = bool(memory.trust_anchors())
        if not had_anchors:
            memory.set_trust_anchors(accepted.trust_anchors)
        try:
            memory.replace_identity(
                phase=Phase.TEMPORARY,
                private_key=accepted.private_key,
                certificate=accepted.certificate,
                ca_certificates=accepted.ca_certificates,
            )
        except BaseException:
            if not had_anchors:
                with contextlib.suppress(ZtpkiError):
                    memory.set_trust_anchors([])
            raise
        try:
            memory.update_config(**self.batch.metadata())
        except ZtpkiError as exc:
            log.warning("device %s: identity stored, metadata not: %s", memory.device_id, exc)


def select_ids(ids: Sequence[str], only: Sequence[str]) -> tuple[str, ...]:
    """--only: those ids (in the order given, once each), each a valid device id."""
    if not only:
        return tuple(ids)
    chosen = tuple(dict.fromkeys(only))
    for device_id in chosen:
        try:
            check_device_id(device_id)
        except ZtpkiError as exc:
            raise ConfigurationError(f"--only: {exc.message}") from None
    return chosen
