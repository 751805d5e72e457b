"""The signed shipping manifest: which devices left the factory, with which temporary certificate.

The manifest is the contract between a factory and its customers: the factory writes it, the
customer node reads it, and this module is all either needs. The file is a JWS (see
`ztpki.protocol.jws`): flattened JSON serialization, ``x5c`` carrying the signer chain, ``typ``
ztpki-manifest+json, and the manifest JSON as payload. The CSV view is for spreadsheets and is
not signed.

A customer trusts each manufacturer for exactly what it was given (``ManufacturerTrust``): a
manifest counts only when it names a configured manufacturer, its signer chains to that
manufacturer's trust bundle through a certificate with EKU id-kp-documentSigning (RFC 9336),
the signer is one of that manufacturer's manifest signers (its fingerprint pinned, or else any
such certificate under the bundle: the bundle is the entitlement, the EKU only the purpose),
and every device id it lists is in that manufacturer's namespace. A tampered manifest never
adds a device, and no manufacturer lists another's.

Sans-I/O: bytes in, frozen dataclasses out, the clock passed in as ``now``.
"""

from __future__ import annotations

import csv
import functools
import io
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from ztpki.errors import MalformedInput, VerificationFailed
from ztpki.pki.chain import verify_signer_chain
from ztpki.pki.device_ids import DeviceIdNamespace
from ztpki.pki.keys import PrivateKey
from ztpki.pki.names import DEVICE_ID_PATTERN
from ztpki.pki.pem import fingerprint_sha256
from ztpki.protocol.jws import check_members, compact_json, sign_jws, strict_json, verify_jws

MANIFEST_TYPE = "ztpki-manifest+json"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_ENTRIES = 1_000_000

_MANIFEST_MEMBERS = frozenset(
    {"version", "manifest_id", "manufacturer", "batch", "order", "issued_at", "devices"}
)
_ENTRY_MEMBERS = frozenset({"device_id", "temp_fingerprint", "model", "batch", "manufactured_at"})

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_MANIFEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{6})?Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_TEXT = 128


# --- the manifest ------------------------------------------------------------------------------


def _check_text(value: str | None, what: str, *, optional: bool) -> None:
    if value is None:
        if not optional:
            raise ValueError(f"{what} is required")
        return
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    if not value or len(value) > _MAX_TEXT or _CONTROL.search(value):
        raise ValueError(f"{what} must be 1-{_MAX_TEXT} characters without control characters")


def _check_instant(value: datetime, what: str) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def check_manufacturer_name(name: str) -> str:
    """A manufacturer's name as manifests carry it (and node.toml declares it)."""
    _check_text(name, "manufacturer", optional=False)
    return name


@dataclass(frozen=True)
class ManifestEntry:
    """One device: its id and the SHA-256 fingerprint of its temporary certificate (DER)."""

    device_id: str
    temp_fingerprint: str
    model: str | None
    batch: str | None
    manufactured_at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not DEVICE_ID_PATTERN.fullmatch(self.device_id):
            raise ValueError(f"device id {str(self.device_id)[:64]!r} is not a valid device id")
        if not isinstance(self.temp_fingerprint, str) or not _FINGERPRINT.fullmatch(
            self.temp_fingerprint
        ):
            raise ValueError(
                f"fingerprint of {self.device_id} is not 64 lower-case hex digits (SHA-256)"
            )
        _check_text(self.model, "model", optional=True)
        _check_text(self.batch, "batch", optional=True)
        _check_instant(self.manufactured_at, "manufactured_at")


@dataclass(frozen=True)
class Manifest:
    """A shipping manifest for a batch or a customer order; device ids are unique within it."""

    manifest_id: str
    manufacturer: str
    batch: str | None
    order: str | None
    issued_at: datetime
    entries: tuple[ManifestEntry, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.manifest_id, str) or not _MANIFEST_ID.fullmatch(self.manifest_id):
            raise ValueError("manifest id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        check_manufacturer_name(self.manufacturer)
        _check_text(self.batch, "batch", optional=True)
        _check_text(self.order, "order", optional=True)
        _check_instant(self.issued_at, "issued_at")
        if not isinstance(self.entries, tuple):
            raise TypeError("entries must be a tuple of ManifestEntry")
        if len(self.entries) > MAX_ENTRIES:
            raise ValueError(f"a manifest holds at most {MAX_ENTRIES} devices")
        seen: set[str] = set()
        for entry in self.entries:
            if not isinstance(entry, ManifestEntry):
                raise TypeError("entries must be a tuple of ManifestEntry")
            if entry.device_id in seen:
                raise ValueError(f"device {entry.device_id} appears twice in the manifest")
            seen.add(entry.device_id)

    def device_ids(self) -> tuple[str, ...]:
        return tuple(e.device_id for e in self.entries)


def new_manifest_id() -> str:
    """A fresh random manifest id (uuid4, hex)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose signature and signer chain verified, with the path that proved it."""

    manifest: Manifest
    signer: x509.Certificate
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class ManufacturerTrust:
    """What a customer trusts one manufacturer for.

    name: as manifests name it; None only for the factory's own check of what it signs (any
    name). anchors: the manufacturer's trust bundle (any certificate of it may end a signer's
    chain, since x5c may stop below the root). device_ids: the ids it may list.
    signer_fingerprints: SHA-256 (lower-case hex) of the signer certificates it signs with;
    empty means any documentSigning certificate under the anchors.
    """

    name: str | None
    anchors: tuple[x509.Certificate, ...]
    device_ids: DeviceIdNamespace
    signer_fingerprints: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for pin in self.signer_fingerprints:
            if not _FINGERPRINT.fullmatch(pin):
                raise ValueError("a signer fingerprint is 64 lower-case hex digits (SHA-256)")

    def check_signer(self, signer: x509.Certificate) -> None:
        """VerificationFailed unless signer is one of this manufacturer's manifest signers.

        Unpinned, any signer whose chain verified to the bundle with documentSigning counts
        (verify_signer_chain checked both): the customer gave the bundle for that."""
        if self.signer_fingerprints and fingerprint_sha256(signer) not in self.signer_fingerprints:
            who = f"the manifest signer {signer.subject.rfc4514_string()[:128]!r}"
            raise VerificationFailed(
                f"{who} is not one of the signers pinned for manufacturer {self.name} "
                f"(its fingerprint is sha256:{fingerprint_sha256(signer)})"
            )

    def check_device_ids(self, manifest: Manifest) -> None:
        outside = [i for i in manifest.device_ids() if not self.device_ids.covers(i)]
        if outside:
            raise VerificationFailed(
                f"the manifest lists {len(outside)} device id(s) outside manufacturer "
                f"{self.name}'s namespace ({self.device_ids}), e.g. {outside[0]}"
            )


# --- encodings ---------------------------------------------------------------------------------


def _format_instant(value: datetime) -> str:
    utc = value.astimezone(UTC)
    pattern = "%Y-%m-%dT%H:%M:%S.%fZ" if utc.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return utc.strftime(pattern)


def _parse_instant(value: object, what: str) -> datetime:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise MalformedInput(f"manifest {what} is not a UTC time like 2025-01-31T12:00:00Z")
    instant = _utc_instant(value)
    if instant is None:
        raise MalformedInput(f"manifest {what} is not a valid date and time")
    return instant


@functools.lru_cache(maxsize=4096)
def _utc_instant(value: str) -> datetime | None:
    # A batch's devices share a few manufacturing times: a million entries parse a handful.
    try:
        return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
    except ValueError:
        return None


def manifest_document(manifest: Manifest) -> dict[str, Any]:
    """The manifest as the JSON object that is signed (also what `verify-manifest --json` shows)."""
    return {
        "version": MANIFEST_VERSION,
        "manifest_id": manifest.manifest_id,
        "manufacturer": manifest.manufacturer,
        "batch": manifest.batch,
        "order": manifest.order,
        "issued_at": _format_instant(manifest.issued_at),
        "devices": [
            {
                "device_id": e.device_id,
                "temp_fingerprint": e.temp_fingerprint,
                "model": e.model,
                "batch": e.batch,
                "manufactured_at": _format_instant(e.manufactured_at),
            }
            for e in manifest.entries
        ],
    }


def _optional_text(obj: dict[str, Any], name: str) -> str | None:
    value = obj[name]
    if value is not None and not isinstance(value, str):
        raise MalformedInput(f"manifest member {name!r} is not a string or null")
    return value


def _required_text(obj: dict[str, Any], name: str) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise MalformedInput(f"manifest member {name!r} is not a string")
    return value


def _parse_entry(value: object) -> ManifestEntry:
    if not isinstance(value, dict):
        raise MalformedInput("manifest device entry is not a JSON object")
    check_members(value, _ENTRY_MEMBERS, _ENTRY_MEMBERS, "manifest device entry")
    return ManifestEntry(
        device_id=_required_text(value, "device_id"),
        temp_fingerprint=_required_text(value, "temp_fingerprint"),
        model=_optional_text(value, "model"),
        batch=_optional_text(value, "batch"),
        manufactured_at=_parse_instant(value["manufactured_at"], "manufactured_at"),
    )


def _parse_manifest(payload: bytes) -> Manifest:
    obj = strict_json(payload, "manifest payload")
    devices = obj.get("devices")
    if "devices" in obj and not isinstance(devices, list):
        raise MalformedInput("manifest member 'devices' is not a list")
    if isinstance(devices, list) and len(devices) > MAX_ENTRIES:
        raise MalformedInput(f"manifest lists more than {MAX_ENTRIES} devices")
    entries = tuple(devices) if isinstance(devices, list) else ()
    return manifest_from_document(obj, entries=entries)


def manifest_from_document(obj: dict[str, Any], *, entries: Sequence[object]) -> Manifest:
    """The manifest the JSON object ``obj`` describes, with ``entries`` (JSON values) as its
    devices: every member checked, so a file read in pieces passes the same checks."""
    check_members(obj, _MANIFEST_MEMBERS, _MANIFEST_MEMBERS, "manifest")
    if type(obj["version"]) is not int or obj["version"] != MANIFEST_VERSION:
        raise MalformedInput(f"manifest version is not {MANIFEST_VERSION}")
    try:
        return Manifest(
            manifest_id=_required_text(obj, "manifest_id"),
            manufacturer=_required_text(obj, "manufacturer"),
            batch=_optional_text(obj, "batch"),
            order=_optional_text(obj, "order"),
            issued_at=_parse_instant(obj["issued_at"], "issued_at"),
            entries=tuple(_parse_entry(d) for d in entries),
        )
    except (TypeError, ValueError) as exc:
        raise MalformedInput(f"manifest content is invalid: {exc}") from None


def parse_manifest_entry(value: object) -> ManifestEntry:
    """One device entry of a manifest's ``devices`` (a JSON value); MalformedInput if bad."""
    try:
        return _parse_entry(value)
    except (TypeError, ValueError) as exc:
        raise MalformedInput(f"manifest content is invalid: {exc}") from None


# --- the public operations ---------------------------------------------------------------------


def sign_manifest(
    manifest: Manifest, *, key: PrivateKey, chain: Sequence[x509.Certificate]
) -> bytes:
    """The signed manifest file (UTF-8 JSON text): a flattened JWS with an x5c chain.

    chain starts with the signer certificate (its key is key) and may continue with the issuing
    CAs. Whether the certificate is fit to sign manifests is decided by whoever verifies.
    """
    return sign_jws(
        compact_json(manifest_document(manifest)), key=key, chain=chain, typ=MANIFEST_TYPE
    )


def verify_manifest(
    data: bytes, *, manufacturers: Sequence[ManufacturerTrust], now: datetime
) -> VerifiedManifest:
    """The manifest in data, once it verifies as the manufacturer it names.

    MalformedInput: the bytes do not parse (size, JSON, base64url, header, alg, certificates,
    content). VerificationFailed: the signature does not verify; the manifest names no
    manufacturer of manufacturers; the x5c chain does not lead to that manufacturer's trust
    bundle through a certificate with EKU id-kp-documentSigning (or the manifest-signer EKU
    of earlier ztpki versions); the signer is not one of
    that manufacturer's manifest signers; or a device id is outside its namespace.
    """
    signed = verify_jws(data, typ=MANIFEST_TYPE, max_size=MAX_MANIFEST_BYTES, what="manifest")
    # The payload is parsed before its signer is trusted, to learn whose it claims to be;
    # the parser is strict and size-bounded, and nothing of it is used unless all checks pass.
    manifest = _parse_manifest(signed.payload)
    trust, path = trusted_signer(manifest.manufacturer, signed.chain, manufacturers, now=now)
    trust.check_device_ids(manifest)
    return VerifiedManifest(manifest=manifest, signer=signed.chain[0], chain=path)


def trusted_signer(
    manufacturer: str,
    chain: Sequence[x509.Certificate],
    manufacturers: Sequence[ManufacturerTrust],
    *,
    now: datetime,
) -> tuple[ManufacturerTrust, tuple[x509.Certificate, ...]]:
    """The trust of the manufacturer a manifest names and the path from its signer
    (``chain[0]``) to that manufacturer's bundle, once the signer is one of its manifest
    signers; VerificationFailed otherwise."""
    trust = _named(manufacturer, manufacturers)
    signer = chain[0]
    try:
        path = verify_signer_chain(signer, chain[1:], trust.anchors, now=now)
    except VerificationFailed as exc:
        raise VerificationFailed(
            f"{exc.message} (to the trust bundle of manufacturer {manufacturer})"
        ) from None
    trust.check_signer(signer)
    return trust, tuple(path)


def _named(name: str, manufacturers: Sequence[ManufacturerTrust]) -> ManufacturerTrust:
    for trust in manufacturers:
        if trust.name is None or trust.name == name:
            return trust
    known = ", ".join(repr(m.name) for m in manufacturers) or "none"
    raise VerificationFailed(
        f"the manifest names manufacturer {name!r}, which is not a configured manufacturer "
        f"(configured: {known})"
    )


# --- the spreadsheet view ----------------------------------------------------------------------

CSV_COLUMNS = ("device_id", "temp_fingerprint_sha256", "model", "batch", "manufactured_at")


def _cell(value: str | None) -> str:
    # Spreadsheets run cells starting with = + - @ as formulas; a leading quote keeps them text.
    if value and value[0] in "=+-@\t\r":
        return "'" + value
    return value or ""


def manifest_csv(manifest: Manifest) -> str:
    """The manifest as CSV for spreadsheets. NOT signed: trust only the signed JSON manifest."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in manifest.entries:
        writer.writerow(
            [
                _cell(e.device_id),
                e.temp_fingerprint,
                _cell(e.model),
                _cell(e.batch),
                _format_instant(e.manufactured_at),
            ]
        )
    return out.getvalue()
