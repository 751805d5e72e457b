"""`ztpki node set-cmp-secret`: the operator sets (or clears) a device's CMP shared secret.

The secret is read from a file only its owner may read (0600, like every secret ztpki reads),
checked for length, stored in the register (ztpki.store.cmp_secrets) with an audit record in
the same transaction, and never printed, logged or put in an error message.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ztpki.errors import ConfigurationError
from ztpki.node.config import NodeConfig
from ztpki.node.operations import open_register
from ztpki.pki.names import check_device_id
from ztpki.secretfiles import read_private_file
from ztpki.store.records import AuditRecord

MIN_SHARED_SECRET = 16  # bytes: a recorded MAC must not make the secret cheap to guess
MAX_SHARED_SECRET = 1024


def read_shared_secret(path: Path) -> bytes:
    """The secret in path (one trailing newline dropped); ConfigurationError naming the file,
    never its content, when it is not a private regular file holding a usable secret."""
    try:
        data = read_private_file(path, limit=MAX_SHARED_SECRET + 2)
    except FileNotFoundError:
        raise ConfigurationError(f"secret file {path} does not exist") from None
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if not MIN_SHARED_SECRET <= len(data) <= MAX_SHARED_SECRET:
        raise ConfigurationError(
            f"secret file {path} must hold {MIN_SHARED_SECRET} to {MAX_SHARED_SECRET} bytes "
            f"(it holds {len(data)})"
        )
    return data


def set_cmp_secret(
    directory: Path, device_id: str, secret: bytes, *, label: str | None, now: datetime
) -> None:
    """Set device_id's shared secret (replacing one set before), for label or any label."""
    check_device_id(device_id)
    if label is not None:
        config = NodeConfig.load(directory, migrating=True)
        found = next((ca for ca in config.labels if ca.label == label), None)
        if found is None:
            raise ConfigurationError(f"this node has no label {label}")
        if not found.cmp_mac_protection:
            raise ConfigurationError(
                f"label {label} does not accept MAC-based protection: set "
                f"cmp_mac_protection = true in its [ca.{label}] table first"
            )
    where = "any label that allows it" if label is None else f"label {label}"
    audit = AuditRecord(
        at=now,
        endpoint="cli/set-cmp-secret",
        decision="cmp-secret-set",
        reason=f"CMP shared secret set by the operator, for {where}",
        device_id=device_id,
    )
    with open_register(directory) as store:
        if not store.set_cmp_secret(device_id, secret, label=label, now=now, audit=audit):
            raise ConfigurationError(f"device {device_id} is not in the register")


def clear_cmp_secret(directory: Path, device_id: str, *, now: datetime) -> bool:
    """Remove device_id's shared secret; False if it had none."""
    audit = AuditRecord(
        at=now,
        endpoint="cli/set-cmp-secret",
        decision="cmp-secret-cleared",
        reason="CMP shared secret removed by the operator",
        device_id=device_id,
    )
    with open_register(directory) as store:
        return store.clear_cmp_secret(device_id, audit=audit)
