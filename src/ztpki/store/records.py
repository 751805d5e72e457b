"""Records the stores hold and return, and the errors they raise.

Every record is a frozen dataclass validated when built; every instant in one is timezone-aware
and is returned in UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ztpki.errors import NotAuthorized, ZtpkiError
from ztpki.pki.crl import RevocationReason as RevocationReason  # the store's record uses it
from ztpki.store.instants import require_utc

_HEX = re.compile(r"[0-9a-f]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _check_hex(value: str, *, name: str) -> None:
    if not _HEX.fullmatch(value):
        raise ValueError(f"{name} must be lower-case hex, got {value!r}")


def _check_sha256(value: str | None, *, name: str) -> None:
    if value is not None and not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"{name} must be 64 lower-case hex digits (SHA-256)")


def _check_text(value: str, *, name: str) -> None:
    if not value:
        raise ValueError(f"{name} must not be empty")


# --------------------------------------------------------------------------- errors


class AlreadyIssued(NotAuthorized):
    """The CA already has a live certificate for this device and the request did not supersede."""

    def __init__(self, *, ca_name: str, device_id: str, serial: str) -> None:
        super().__init__(
            f"device {device_id} already holds live certificate {serial} from CA {ca_name}; "
            "reissue it (supersede) to replace that certificate"
        )
        self.ca_name = ca_name
        self.device_id = device_id
        self.serial = serial

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_already_issued, (self.ca_name, self.device_id, self.serial))


def _rebuild_already_issued(ca_name: str, device_id: str, serial: str) -> AlreadyIssued:
    return AlreadyIssued(ca_name=ca_name, device_id=device_id, serial=serial)


class RequestAnswered(ZtpkiError):
    """This CA-client's request id was recorded already (by this instance or another one
    sharing the store): the request is answered from that record, never issued twice."""

    def __init__(self, *, client: str, request_id: str) -> None:
        super().__init__(f"request {request_id} of CA-client {client} was answered already")
        self.client = client
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_request_answered, (self.client, self.request_id))


def _rebuild_request_answered(client: str, request_id: str) -> RequestAnswered:
    return RequestAnswered(client=client, request_id=request_id)


@dataclass(frozen=True)
class AnsweredRequest:
    """A CA-client's request as recorded with the certificate that answered it."""

    certificate: IssuedCertificate
    request_digest: str
    answer_key_der: bytes | None = field(default=None, repr=False)


class SupersedeRefused(NotAuthorized):
    """The name's live certificate was obtained by another CA-client: asked for or reissued.

    Never says which client holds it, nor its serial, nor that a reissue would help: one
    CA-client learns nothing of the others.
    """

    def __init__(self, *, client: str, ca_name: str, device_id: str) -> None:
        super().__init__(
            f"the name {device_id} is taken by another CA-client at CA {ca_name}; "
            "ask for another --name"
        )
        self.client = client
        self.ca_name = ca_name
        self.device_id = device_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_supersede_refused, (self.client, self.ca_name, self.device_id))


def _rebuild_supersede_refused(client: str, ca_name: str, device_id: str) -> SupersedeRefused:
    return SupersedeRefused(client=client, ca_name=ca_name, device_id=device_id)


class AlreadyRecorded(ZtpkiError):
    """A record with this key already exists; nothing was changed."""

    code = "conflict"


class DuplicateDevice(AlreadyRecorded):
    """The register already lists a device with this identity."""


class DuplicateClient(AlreadyRecorded):
    """An active CA-client has this name, or some CA-client has this certificate."""


class DuplicateSerial(AlreadyRecorded):
    """The CA already recorded a certificate with this serial number."""


# --------------------------------------------------------------------------- CA system


class CertificateStatus(StrEnum):
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate the CA system issued: the record the patent says it keeps."""

    serial: str
    ca_name: str
    device_id: str
    subject: str
    not_before: datetime
    not_after: datetime
    status: CertificateStatus
    request_id: str
    fingerprint: str
    issued_at: datetime
    certificate_der: bytes = field(repr=False)
    # The CA-client that obtained it; None for certificates recorded before clients were.
    client: str | None = None
    # Kept with the client's request id so that the request, sent again (a lost answer, a
    # failover to another CA-system instance), is answered with this certificate: the
    # SHA-256 of the request (casystem.issuer.request_digest), and the answer's private key
    # as it was sent, encrypted under the requester's one-time passphrase (None: a CSR, or
    # a key sent in the clear, which is never kept).
    request_digest: str | None = None
    answer_key_der: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_hex(self.serial, name="serial")
        _check_text(self.ca_name, name="ca_name")
        _check_text(self.device_id, name="device_id")
        _check_sha256(self.fingerprint, name="fingerprint")
        object.__setattr__(self, "status", CertificateStatus(self.status))
        for name in ("not_before", "not_after", "issued_at"):
            object.__setattr__(self, name, require_utc(getattr(self, name), name=name))
        if self.not_after <= self.not_before:
            raise ValueError("not_after must be later than not_before")
        if not self.certificate_der:
            raise ValueError("certificate_der must not be empty")
        _check_sha256(self.request_digest, name="request_digest")
        if self.answer_key_der is not None and self.request_digest is None:
            raise ValueError("an answer's key is kept only with the request it answered")


@dataclass(frozen=True)
class Revocation:
    """One certificate on a CA's revocation list: since when, why, and (when known) since
    when its key was no longer to be trusted (RFC 5280 5.3.2 invalidity date)."""

    ca_name: str
    serial: str  # lower-case hex, as the stores keep serials
    revoked_at: datetime
    reason: RevocationReason
    invalidity_date: datetime | None = None

    def __post_init__(self) -> None:
        _check_text(self.ca_name, name="ca_name")
        _check_hex(self.serial, name="serial")
        object.__setattr__(self, "reason", RevocationReason(self.reason))
        object.__setattr__(self, "revoked_at", require_utc(self.revoked_at, name="revoked_at"))
        if self.invalidity_date is not None:
            object.__setattr__(
                self,
                "invalidity_date",
                require_utc(self.invalidity_date, name="invalidity_date"),
            )

    @property
    def on_hold(self) -> bool:
        return self.reason is RevocationReason.CERTIFICATE_HOLD


class ClientStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True)
class ClientEntitlement:
    """What one CA-client may ask for; ``casystem.entitlement`` checks requests against it.

    ``cas``: the CAs it may use (none unless named). ``device_ids``: fnmatch-style patterns
    of the device ids it may name. ``dns_names`` and ``ip_ranges``: the subjectAltNames it
    may ask a server-profile CA for (patterns such as ``*.node.example.com``, and CIDRs).
    """

    cas: tuple[str, ...] = ()
    device_ids: tuple[str, ...] = ("*",)
    dns_names: tuple[str, ...] = ()
    ip_ranges: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("cas", "device_ids", "dns_names", "ip_ranges"):
            values = getattr(self, name)
            if not isinstance(values, tuple | list) or not all(
                isinstance(v, str) and v for v in values
            ):
                raise ValueError(f"{name} must be a tuple of non-empty strings")
            object.__setattr__(self, name, tuple(values))


@dataclass(frozen=True)
class ClientRecord:
    """A CA-client registered with ``ztpki ca add-client``; removed ones are kept as history.

    ``entitlement`` is None for a client registered before entitlements existed: it may use
    nothing until ``ztpki ca set-client`` gives it one.
    """

    name: str
    serial: str
    fingerprint: str
    not_after: datetime
    status: ClientStatus
    added_at: datetime
    removed_at: datetime | None
    entitlement: ClientEntitlement | None = None


@dataclass(frozen=True)
class RefusedRequest:
    """A request the CA system refused as not authorized: who asked what, and why not."""

    at: datetime
    client: str
    request_id: str
    device_id: str | None
    ca_name: str | None
    reason: str

    def __post_init__(self) -> None:
        _check_text(self.client, name="client")
        object.__setattr__(self, "at", require_utc(self.at, name="at"))


# ------------------------------------------------------------------- access-control register


class DeviceState(StrEnum):
    LISTED = "listed"
    ISSUING = "issuing"
    ISSUED = "issued"
    CUSTOMIZED = "customized"
    BLOCKED = "blocked"
    RETIRED = "retired"  # final: its certificates revoked, no enrollment of any kind again


# States a device rests in (not in the middle of an issuance and not blocked).
RESTING_STATES = frozenset({DeviceState.LISTED, DeviceState.ISSUED, DeviceState.CUSTOMIZED})


@dataclass(frozen=True)
class NewDevice:
    """A device identity to list in the register (from a manifest or by hand)."""

    device_id: str
    temp_fingerprint: str | None
    manufacturer: str | None = None
    model: str | None = None
    batch: str | None = None

    def __post_init__(self) -> None:
        _check_text(self.device_id, name="device_id")
        _check_sha256(self.temp_fingerprint, name="temp_fingerprint")


@dataclass(frozen=True)
class RegisteredDevice:
    """One row of the access-control register: a valid device identity and where it stands."""

    device_id: str
    state: DeviceState
    temp_fingerprint: str | None
    manufacturer: str | None
    model: str | None
    batch: str | None
    manifest_id: str | None
    issued_serial: str | None
    issued_spki: str | None
    issued_certificate_der: bytes | None = field(repr=False)
    issued_chain_der: tuple[bytes, ...]
    blocked_from: DeviceState | None
    lease_token: str | None = field(repr=False)
    lease_expires: datetime | None
    previous_state: DeviceState | None
    updated_at: datetime
    # The EST label its first issuance began under: kept across aborts and takeovers, since
    # that label's CA may hold a certificate for it; other labels wait until it is customized.
    issuance_label: str | None = None
    # A renewal's previous certificate, revoked once the device first uses the renewed one.
    renewed_from: str | None = None


@dataclass(frozen=True)
class ManifestRecord:
    """A signed manifest of devices the register imported; (manufacturer, manifest_id) is
    its key: each manufacturer chooses its own manifest ids."""

    manufacturer: str
    manifest_id: str
    issued_at: datetime
    signer: str
    device_count: int
    imported_at: datetime

    def __post_init__(self) -> None:
        _check_text(self.manufacturer, name="manufacturer")
        _check_text(self.manifest_id, name="manifest_id")
        if self.device_count < 0:
            raise ValueError("device_count must not be negative")
        for name in ("issued_at", "imported_at"):
            object.__setattr__(self, name, require_utc(getattr(self, name), name=name))


@dataclass(frozen=True)
class ImportResult:
    added: list[str]
    unchanged: list[str]
    already_imported: bool


# --------------------------------------------------------------------------- audit trail


@dataclass(frozen=True)
class AuditRecord:
    """One decision to append to the audit trail (the entry minus its place in the chain)."""

    at: datetime
    endpoint: str
    decision: str
    reason: str
    device_id: str | None = None
    client_fingerprint: str | None = None
    serial: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", require_utc(self.at, name="at"))
        _check_text(self.endpoint, name="endpoint")
        _check_text(self.decision, name="decision")


@dataclass(frozen=True)
class AuditEntry:
    """An audit record in the chain: ``entry_hash`` covers it and ``prev_hash``."""

    seq: int
    at: datetime
    device_id: str | None
    client_fingerprint: str | None
    endpoint: str
    decision: str
    reason: str
    serial: str | None
    prev_hash: str
    entry_hash: str


@dataclass(frozen=True)
class AuditVerification:
    """``checked`` counts the entries examined, the first bad one included."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
