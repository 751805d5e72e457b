"""What the factory hands to customers: the trust bundle and the manifest of shipped devices."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from ztpki.casystem.directory import CASystemDirectory
from ztpki.credentials import Credential
from ztpki.device.memory import DEVICE_FILE, DeviceMemory, Phase
from ztpki.errors import ConfigurationError, MalformedInput, ZtpkiError
from ztpki.factory.configuration import BATCH, MANUFACTURED_AT, MODEL
from ztpki.factory.signer import sign_checked
from ztpki.pki.pem import fingerprint_sha256, load_certificates_pem
from ztpki.protocol.manifest import Manifest, ManifestEntry, new_manifest_id

log = logging.getLogger(__name__)


def factory_chain(directory: Path, name: str) -> tuple[x509.Certificate, ...]:
    """The PEM-ready chain of CA `name` in a CA-system directory: CA, intermediates, root."""
    system = CASystemDirectory(directory)
    return (system.certificate(name), *system.parents(name))


def load_trust_bundle(path: Path) -> tuple[x509.Certificate, ...]:
    """The certificates of a factory trust bundle (PEM); ConfigurationError if unusable."""
    try:
        return tuple(load_certificates_pem(path.read_bytes()))
    except OSError as exc:
        raise ConfigurationError(f"cannot read trust bundle {path}: {exc.strerror}") from None
    except MalformedInput:
        raise ConfigurationError(f"trust bundle {path} holds no PEM certificate") from None


@dataclass(frozen=True)
class Skipped:
    """A directory left out of a manifest, and why."""

    path: Path
    reason: str


def _optional_text(config: dict[str, object], key: str) -> str | None:
    value = config.get(key)
    return value if isinstance(value, str) and value else None


def manifest_entry(memory: DeviceMemory) -> ManifestEntry:
    """The manifest line of a device in phase temporary (fingerprint of its certificate)."""
    identity = memory.identity()
    if identity.phase is not Phase.TEMPORARY or identity.certificate is None:
        raise ConfigurationError(f"device {memory.device_id} is {identity.phase}, not temporary")
    config = memory.config()
    made = _optional_text(config, MANUFACTURED_AT)
    try:
        manufactured_at = datetime.fromisoformat(made) if made else None
    except ValueError:
        manufactured_at = None
    if manufactured_at is None or manufactured_at.tzinfo is None:
        manufactured_at = identity.certificate.not_valid_before_utc
    return ManifestEntry(
        device_id=memory.device_id,
        temp_fingerprint=fingerprint_sha256(identity.certificate),
        model=_optional_text(config, MODEL),
        batch=_optional_text(config, BATCH),
        manufactured_at=manufactured_at,
    )


def collect_entries(
    devices: Path, *, batch: str | None = None
) -> tuple[list[ManifestEntry], list[Skipped]]:
    """Manifest lines of every temporary device under devices (one directory each).

    With batch, only devices of that batch. Hidden directories (staging) are not devices.
    """
    entries: list[ManifestEntry] = []
    skipped: list[Skipped] = []
    try:
        children = sorted(p for p in devices.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise ConfigurationError(f"cannot list devices in {devices}: {exc.strerror}") from None
    for path in children:
        if not (path / DEVICE_FILE).exists():
            continue
        try:
            entry = manifest_entry(DeviceMemory.open(path))
        except ZtpkiError as exc:
            skipped.append(Skipped(path, exc.message))
            continue
        if batch is not None and entry.batch != batch:
            continue
        entries.append(entry)
    return entries, skipped


def build_manifest(
    entries: Iterable[ManifestEntry],
    *,
    manufacturer: str,
    batch: str | None,
    order: str | None,
    now: datetime,
) -> Manifest:
    try:
        return Manifest(
            manifest_id=new_manifest_id(),
            manufacturer=manufacturer,
            batch=batch,
            order=order,
            issued_at=now,
            entries=tuple(sorted(entries, key=lambda e: e.device_id)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot build the manifest: {exc}") from None


def devices_manifest(
    devices: Path,
    signer: Credential,
    *,
    batch: str | None,
    order: str | None,
    manufacturer: str | None,
    now: datetime,
) -> tuple[Manifest, bytes, list[Skipped]]:
    """The signed manifest of the temporary devices under devices, and what was left out."""
    entries, skipped = collect_entries(devices, batch=batch)
    manifest = build_manifest(
        entries,
        manufacturer=manufacturer or manufacturer_of(signer.certificate),
        batch=batch,
        order=order,
        now=now,
    )
    return manifest, sign_checked(manifest, signer, now=now), skipped


def manufacturer_of(signer: x509.Certificate) -> str:
    """The manufacturer named by a manifest signer certificate: its O, else its CN."""
    from cryptography.x509.oid import NameOID

    for oid in (NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME):
        values = signer.subject.get_attributes_for_oid(oid)
        if values and isinstance(values[0].value, str):
            return values[0].value
    return "unknown manufacturer"
