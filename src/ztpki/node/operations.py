"""The register operations behind `ztpki node ...`: import, add, block, list, audit.

Each change carries its audit record into the same transaction as the change itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from ztpki.errors import ConfigurationError, MalformedInput, VerificationFailed
from ztpki.node.config import NODE_FILE, CALabel, NodeConfig
from ztpki.node.manufacturers import manifest_trusts
from ztpki.node.material import load_labels, load_manufacturers
from ztpki.node.revocation_orders import operator_order
from ztpki.pki.names import check_device_id
from ztpki.pki.pem import certificate_der, parse_sha256_fingerprint
from ztpki.protocol.manifest_stream import (
    CheckedManifest,
    check_manifest_file,
    manifest_file_entries,
)
from ztpki.store.records import (
    AuditEntry,
    AuditRecord,
    DeviceState,
    DuplicateDevice,
    ImportResult,
    ManifestRecord,
    NewDevice,
    RegisteredDevice,
    RevocationReason,
)
from ztpki.store.revocation_records import (
    QueuedRevocation,
    QueueStatus,
    RevocationAction,
    RevocationOrder,
)
from ztpki.store.sqlite import SQLiteNodeStore, open_node_store
from ztpki.untrusted import quote


def check_register(directory: Path) -> None:
    """ConfigurationError unless ``directory`` is a node directory."""
    if not (directory / NODE_FILE).exists():
        raise ConfigurationError(
            f"{directory} is not a node directory (no {NODE_FILE}); run `ztpki node init`"
        )


def open_register(directory: Path) -> SQLiteNodeStore:
    check_register(directory)
    # The register stays readable while an older node.toml is being migrated.
    return open_node_store(NodeConfig.load(directory, migrating=True).database)


_READ_PIECE = 1024 * 1024


def _pieces(path: Path) -> Callable[[], Iterator[bytes]]:
    """The file's bytes a megabyte at a time, opened anew for each pass over it."""

    def read() -> Iterator[bytes]:
        with path.open("rb") as file:
            while piece := file.read(_READ_PIECE):
                yield piece

    return read


def check_manifest(
    directory: Path, path: Path, *, now: datetime, operator: str | None = None
) -> CheckedManifest:
    """Verify a manifest file as ``import_manifest`` does before it lists anything: signature,
    signer, manufacturer and members (the web console shows this before its operator
    confirms). A manifest that does not verify is refused, and the refusal audited."""
    trusts = manifest_trusts(load_manufacturers(NodeConfig.load(directory)))
    try:
        return check_manifest_file(_pieces(path), manufacturers=trusts, now=now)
    except (MalformedInput, VerificationFailed) as exc:
        _refused(directory, path, exc, now=now, operator=operator)
        raise


def import_manifest(
    directory: Path, path: Path, *, now: datetime, operator: str | None = None
) -> ImportResult:
    """List the devices of a signed manifest; refused unless it verifies as the manufacturer it
    names (that manufacturer's signer, ids in its namespace). All or nothing. ``operator``:
    the web console's operator who uploaded it (named in the audit entry).

    The file is read in passes, never whole (a manifest may list a million devices): the
    signature, signer and members are verified before any entry is used; then the entries
    stream into the register, which keeps none of them when one is bad or the file changed.
    """
    checked = check_manifest(directory, path, now=now, operator=operator)
    try:
        manifest = checked.manifest
        signer = checked.signer.subject.rfc4514_string()
        record = ManifestRecord(
            manufacturer=manifest.manufacturer,
            manifest_id=manifest.manifest_id,
            issued_at=manifest.issued_at,
            signer=signer,
            device_count=checked.device_count,
            imported_at=now,
        )
        audit = AuditRecord(
            at=now,
            endpoint=_endpoint("import", operator),
            decision="imported",
            reason=(
                # The manufacturer field and the signer's subject are the factory's text.
                f"manifest {manifest.manifest_id} of {quote(manifest.manufacturer)} with "
                f"{checked.device_count} device(s), signed by {quote(signer)}"
                f"{_by(operator)}"
            ),
        )
        devices = (
            NewDevice(
                device_id=entry.device_id,
                temp_fingerprint=entry.temp_fingerprint,
                manufacturer=manifest.manufacturer,
                model=entry.model,
                batch=entry.batch or manifest.batch,
            )
            for entry in manifest_file_entries(_pieces(path), checked)
        )
        with open_register(directory) as store:
            return store.import_devices(devices, manifest=record, audit=audit)
    except (MalformedInput, VerificationFailed, DuplicateDevice) as exc:
        _refused(directory, path, exc, now=now, operator=operator)
        raise


def _refused(
    directory: Path,
    path: Path,
    exc: MalformedInput | VerificationFailed | DuplicateDevice,
    *,
    now: datetime,
    operator: str | None,
) -> None:
    # A forged or altered manifest is a security event: the audit trail keeps it.
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    refusal = AuditRecord(
        at=now,
        endpoint=_endpoint("import", operator),
        decision="refused",
        reason=f"manifest (sha256 {digest}) refused: {exc.message}{_by(operator)}",
    )
    with open_register(directory) as store:
        store.append_many([refusal])


def _endpoint(action: str, operator: str | None) -> str:
    """The audit trail's endpoint of an operator's change: the CLI's, or the web console's."""
    return f"cli/{action}" if operator is None else f"console/{action}"


def _by(operator: str | None) -> str:
    # Operator names are checked when added (ztpki.node.console.passwords), so plain text.
    return "" if operator is None else f" (by operator {operator} in the web console)"


def normalise_fingerprint(value: str) -> str:
    """A temporary certificate's SHA-256 fingerprint (any usual spelling) -> lower-case hex."""
    try:
        return parse_sha256_fingerprint(value)
    except MalformedInput as exc:
        raise ConfigurationError(f"--fingerprint {exc.message}") from None


def add_device(
    directory: Path,
    device_id: str,
    *,
    fingerprint: str | None,
    manufacturer: str | None,
    model: str | None,
    now: datetime,
) -> None:
    check_device_id(device_id)
    if fingerprint is not None:
        fingerprint = normalise_fingerprint(fingerprint)
    elif manufacturer is None:
        raise ConfigurationError(
            f"cannot list {device_id} without --fingerprint unless --manufacturer names the "
            "manufacturer whose temporary certificate it must present (any certificate of "
            "that manufacturer's CA for this id is then accepted)"
        )
    if manufacturer is not None:
        maker = NodeConfig.load(directory).manufacturer(manufacturer)
        if not maker.device_ids.covers(device_id):
            raise ConfigurationError(
                f"{device_id} is outside manufacturer {maker.name}'s device ids "
                f"({maker.device_ids})"
            )
    try:
        device = NewDevice(device_id, fingerprint, manufacturer=manufacturer, model=model)
    except ValueError as exc:
        raise ConfigurationError(f"cannot list {device_id}: {exc}") from None
    reason = "listed by hand" + (
        " with its temporary certificate fingerprint" if fingerprint else ""
    )
    if manufacturer is not None:
        reason += f" for manufacturer {manufacturer}"
    audit = AuditRecord(
        at=now, endpoint="cli/add", decision="listed", reason=reason, device_id=device_id
    )
    with open_register(directory) as store:
        store.add_device(device, now=now, audit=audit)


# A change decided on a row that changed meanwhile (an issuance completing) is decided again.
_ROUNDS = 5


def _issuing_label(config: NodeConfig, device: RegisteredDevice) -> CALabel:
    """The EST label whose CA issued the device's certificate."""
    if device.issuance_label is not None:
        return config.label(device.issuance_label)
    if device.issued_chain_der:
        for loaded in load_labels(config).values():
            if certificate_der(loaded.certificate) == device.issued_chain_der[0]:
                return loaded.config
    raise ConfigurationError(
        f"no EST label of this node has the CA that issued device {device.device_id}'s "
        f"certificate {device.issued_serial}; add that CA back (`node add-ca`) to revoke it"
    )


def _last_hold(store: SQLiteNodeStore, device: RegisteredDevice) -> bool:
    """True when the last order on the device's certificate put it on hold."""
    orders = [
        o
        for o in store.revocations(device_id=device.device_id)
        if o.serial == device.issued_serial and o.status is not QueueStatus.REFUSED
    ]
    return (
        bool(orders)
        and orders[-1].reason == RevocationReason.CERTIFICATE_HOLD.value
        and (orders[-1].action is RevocationAction.REVOKE)
    )


def set_blocked(
    directory: Path,
    device_id: str,
    *,
    blocked: bool,
    now: datetime,
    operator: str | None = None,
) -> RevocationOrder | None:
    """Block (its live certificate on hold at the CA) or unblock (the hold released); the
    order queued for the CA system, if any. ``operator``: the web console's operator."""
    word = "blocked" if blocked else "unblocked"
    audit = AuditRecord(
        at=now,
        endpoint=_endpoint(word[:-2], operator),
        decision=word,
        reason=f"{word} by the operator{_by(operator)}",
        device_id=device_id,
    )
    config = NodeConfig.load(directory, migrating=True)
    hold = RevocationReason.CERTIFICATE_HOLD
    with open_register(directory) as store:
        for _ in range(_ROUNDS):
            device = _device(store, device_id)
            order = None
            if device.issued_serial is not None and (blocked or _last_hold(store, device)):
                order = operator_order(
                    device,
                    _issuing_label(config, device),
                    reason=hold,
                    release=not blocked,
                    cause=f"device {word} by the operator",
                )
            change = store.block if blocked else store.unblock
            orders = [] if order is None else [order]
            if change(
                device_id,
                now=now,
                audit=audit,
                revocations=orders,
                issued_serial=device.issued_serial,
            ):
                return order
            if device.state is DeviceState.RETIRED or (
                (device.state is DeviceState.BLOCKED) is blocked
            ):
                break  # nothing to do; otherwise the row changed meanwhile: decide again
    raise ConfigurationError(f"device {device_id} is {device.state.value}; nothing to do")


def retire_device(
    directory: Path,
    device_id: str,
    *,
    reason: RevocationReason,
    now: datetime,
    operator: str | None = None,
) -> RevocationOrder | None:
    """Revoke the device's live certificate for good and move it to RETIRED (final).
    ``operator``: the web console's operator."""
    if reason is RevocationReason.CERTIFICATE_HOLD:
        raise ConfigurationError(
            "retiring revokes for good: use `node block` to put a certificate on hold"
        )
    audit = AuditRecord(
        at=now,
        endpoint=_endpoint("retire", operator),
        decision="retired",
        reason=f"retired by the operator ({reason.value}){_by(operator)}: never enrolled again",
        device_id=device_id,
    )
    config = NodeConfig.load(directory, migrating=True)
    with open_register(directory) as store:
        for _ in range(_ROUNDS):
            device = _device(store, device_id)
            if device.state is DeviceState.RETIRED:
                break
            order = None
            if device.issued_serial is not None:
                order = operator_order(
                    device,
                    _issuing_label(config, device),
                    reason=reason,
                    cause="device retired by the operator",
                )
            if store.retire(
                device_id,
                now=now,
                audit=audit,
                revocations=[] if order is None else [order],
                issued_serial=device.issued_serial,
            ):
                return order
    raise ConfigurationError(f"device {device_id} is {device.state.value}; nothing to do")


def _device(store: SQLiteNodeStore, device_id: str) -> RegisteredDevice:
    device = store.get(device_id)
    if device is None:
        raise ConfigurationError(f"device {device_id} is not in the register")
    return device


def pending_revocations(directory: Path) -> dict[str, list[QueuedRevocation]]:
    """Open (and refused) revocation orders by device: what `node devices` shows."""
    unfinished = [status for status in QueueStatus if status is not QueueStatus.DONE]
    with open_register(directory) as store:
        orders = store.revocations(statuses=unfinished)
    found: dict[str, list[QueuedRevocation]] = {}
    for order in orders:
        found.setdefault(order.device_id, []).append(order)
    return found


def describe_sender(directory: Path, *, now: datetime) -> str:
    """Which process sends the register's revocation orders (the sender lease), in one line."""
    with open_register(directory) as store:
        lease = store.sender_lease()
    if lease is None:
        return "revocation sender: none yet (no node has run on this register)"
    until = lease.expires_at.isoformat(timespec="seconds")
    if lease.expires_at <= now:
        return f"revocation sender: none (the lease of {lease.holder} ended at {until})"
    return f"revocation sender: {lease.holder} (lease token {lease.token}, until {until})"


def revocation_json(order: QueuedRevocation) -> dict[str, Any]:
    return {
        "seq": order.seq,
        "serial": order.serial,
        "action": order.action.value,
        "reason": order.reason,
        "status": order.status.value,
        "ca_name": order.ca_name,
        "label": order.label,
        "created_at": order.created_at.isoformat(),
        "due_at": None if order.due_at is None else order.due_at.isoformat(),
        "attempts": order.attempts,
        "last_error": order.last_error,
    }


def list_devices(directory: Path, *, state: DeviceState | None) -> Iterator[RegisteredDevice]:
    """The register's devices in device_id order, read page by page as they are consumed."""
    check_register(directory)
    return _devices(directory, state)


def _devices(directory: Path, state: DeviceState | None) -> Iterator[RegisteredDevice]:
    with open_register(directory) as store:
        yield from store.devices(state=state)


def device_json(
    device: RegisteredDevice, revocations: list[QueuedRevocation] | None = None
) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "state": device.state.value,
        "temp_fingerprint": device.temp_fingerprint,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "batch": device.batch,
        "manifest_id": device.manifest_id,
        "issued_serial": device.issued_serial,
        "blocked_from": device.blocked_from.value if device.blocked_from else None,
        "updated_at": device.updated_at.isoformat(),
        "revocations": [revocation_json(o) for o in revocations or []],
    }


def audit_entries(
    directory: Path, *, device_id: str | None, limit: int | None
) -> Iterator[AuditEntry]:
    """Audit entries in seq order, read page by page as they are consumed."""
    check_register(directory)
    if limit is not None and limit < 0:
        raise ConfigurationError("--limit must not be negative")
    return _entries(directory, device_id, limit)


def _entries(directory: Path, device_id: str | None, limit: int | None) -> Iterator[AuditEntry]:
    with open_register(directory) as store:
        yield from store.entries(device_id=device_id, limit=limit)


def verify_audit(directory: Path) -> tuple[str, int]:
    """The verification summary and the number of entries checked; VerificationFailed when
    the chain is broken."""
    with open_register(directory) as store:
        result = store.verify()
    if not result.ok:
        where = f" at entry {result.first_bad_seq}" if result.first_bad_seq is not None else ""
        raise VerificationFailed(f"the audit trail does not verify{where}: {result.reason}")
    return result.reason, result.checked


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": entry.at.isoformat(),
        "device_id": entry.device_id,
        "client_fingerprint": entry.client_fingerprint,
        "endpoint": entry.endpoint,
        "decision": entry.decision,
        "reason": entry.reason,
        "serial": entry.serial,
        "entry_hash": entry.entry_hash,
    }
