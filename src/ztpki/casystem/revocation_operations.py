"""The operator's revocation commands behind `ztpki ca revoke | release-hold | crl | status`.

The operator may revoke any certificate of the CA system (entitlements bind CA-clients, not
the operator, who holds the CA keys). Every change is durable in the store first, then the
CA's CRL is signed and written to ``cas/NAME/crl.der``; the CA key is opened before anything
changes, so a wrong passphrase leaves the store as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from ztpki.casystem.crl_publisher import CRLTarget, publish_crl, publish_if_due, read_crl
from ztpki.casystem.directory import CASystemDirectory
from ztpki.casystem.operations import open_store
from ztpki.errors import ConfigurationError, UnknownCertificate
from ztpki.pki.crl import crl_due
from ztpki.store.interfaces import IssuanceStore
from ztpki.store.records import IssuedCertificate, Revocation, RevocationReason

_SERIAL = re.compile(r"(?:0x)?([0-9a-f]{1,40})")


def parse_serial(text: str) -> str:
    """A serial as operators copy it (``0A:1B``, ``0x0a1b``, ``a1b``) in the stores' form."""
    compact = text.strip().lower().replace(":", "")
    match = _SERIAL.fullmatch(compact)
    if match is None:
        raise ConfigurationError(
            f"serial {text[:64]!r} is not a hexadecimal serial number such as 4f0a1b "
            "(as `ztpki ca issued` shows it)"
        )
    return match.group(1).lstrip("0") or "0"


def crl_target(directory: CASystemDirectory, name: str, *, passphrase: bytes | None) -> CRLTarget:
    return CRLTarget(
        directory.load_authority(name, passphrase=passphrase),
        directory.policy(name),
        directory.ca_dir(name),
    )


def find_certificate(
    store: IssuanceStore, name: str, *, serial: str | None, device_id: str | None
) -> IssuedCertificate:
    """The certificate named by serial, or the device's live one; UnknownCertificate."""
    if serial is not None:
        found = store.certificate(name, serial)
        if found is None:
            raise UnknownCertificate(f"CA {name} issued no certificate with serial {serial}")
        return found
    assert device_id is not None
    found = store.active_certificate(name, device_id)
    if found is None:
        raise UnknownCertificate(f"device {device_id} holds no live certificate of CA {name}")
    return found


@dataclass(frozen=True)
class RevocationDone:
    revocation: Revocation | None  # None: a hold was released
    certificate: IssuedCertificate
    crl: x509.CertificateRevocationList
    already: bool = False  # revoked before: that record stands, no CRL was signed for it


def revoke_certificate(
    directory: CASystemDirectory,
    name: str,
    *,
    serial: str | None,
    device_id: str | None,
    reason: RevocationReason,
    invalidity_date: datetime | None,
    passphrase: bytes | None,
    now: datetime,
) -> RevocationDone:
    target = crl_target(directory, name, passphrase=passphrase)
    with open_store(directory) as store:
        certificate = find_certificate(store, name, serial=serial, device_id=device_id)
        standing = store.revocation(name, certificate.serial)
        upgrade = reason is not RevocationReason.CERTIFICATE_HOLD
        if standing is not None and not (standing.on_hold and upgrade):
            return RevocationDone(
                standing, certificate, _reflecting_crl(target, store, now=now), already=True
            )
        record = store.revoke(
            name, certificate.serial, reason=reason, at=now, invalidity_date=invalidity_date
        )
        crl = publish_crl(target, store, now=now)
    return RevocationDone(record, certificate, crl)


def release_hold(
    directory: CASystemDirectory,
    name: str,
    *,
    serial: str,
    passphrase: bytes | None,
    now: datetime,
) -> RevocationDone:
    """Lift a certificateHold; ConfigurationError naming the state when there is none."""
    target = crl_target(directory, name, passphrase=passphrase)
    with open_store(directory) as store:
        certificate = find_certificate(store, name, serial=serial, device_id=None)
        if not store.release_hold(name, serial, at=now):
            standing = store.revocation(name, serial)
            state = (
                "is not revoked"
                if standing is None
                else f"is revoked for good ({standing.reason.value})"
            )
            raise ConfigurationError(
                f"certificate {serial} of CA {name} is not on hold: it {state}"
            )
        crl = publish_crl(target, store, now=now)
    return RevocationDone(None, certificate, crl)


def current_crl(
    directory: CASystemDirectory,
    name: str,
    *,
    passphrase: Callable[[], bytes | None],
    now: datetime,
) -> x509.CertificateRevocationList:
    """The CA's published CRL when it is current; else a new one signed and published
    (only then is the CA key, and so ``passphrase()``, needed)."""
    directory.certificate(name)  # UnknownCA before anything else
    with open_store(directory) as store:
        path = directory.ca_dir(name) / "crl.der"
        crl = read_crl(path)
        changed_at = store.revocation_changed_at(name)
        # Not near its nextUpdate, and signed after the newest change (or, when that change
        # fell in the CRL's own second, listing exactly what the store has revoked).
        if (
            crl is not None
            and not _due(crl, None, directory, name, now)
            and (
                not _due(crl, changed_at, directory, name, now)
                or reflects(crl, store.revocations(name))
            )
        ):
            return crl
        target = crl_target(directory, name, passphrase=passphrase())
        publish_if_due(target, store, now=now)
        published = read_crl(path)
    assert published is not None
    return published


def reflects(crl: x509.CertificateRevocationList, revocations: list[Revocation]) -> bool:
    """Whether ``crl`` lists exactly ``revocations`` (serial, second, reason): signed after
    the newest change, though in the same second (so ``crl_due`` cannot tell)."""

    def reason(entry: x509.RevokedCertificate) -> str:
        try:
            return str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value)
        except x509.ExtensionNotFound:
            return RevocationReason.UNSPECIFIED.value

    listed = {
        (format(e.serial_number, "x"), e.revocation_date_utc.replace(microsecond=0), reason(e))
        for e in crl
    }
    wanted = {(r.serial, r.revoked_at.replace(microsecond=0), r.reason.value) for r in revocations}
    return listed == wanted


def _reflecting_crl(
    target: CRLTarget, store: IssuanceStore, *, now: datetime
) -> x509.CertificateRevocationList:
    """The published CRL when it lists the store's revocations; else one signed now."""
    crl = read_crl(target.path)
    if crl is not None and reflects(crl, store.revocations(target.authority.name)):
        return crl
    return publish_crl(target, store, now=now)


def _due(
    crl: x509.CertificateRevocationList,
    changed_at: datetime | None,
    directory: CASystemDirectory,
    name: str,
    now: datetime,
) -> bool:
    return crl_due(
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        changed_at=changed_at,
        now=now,
        period=timedelta(hours=directory.policy(name).crl_next_update_hours),
    )


@dataclass(frozen=True)
class CertificateStatusReport:
    """What `ca status` shows: good, revoked (with its record) or unknown."""

    ca_name: str
    serial: str
    status: str  # good | revoked | unknown
    certificate: IssuedCertificate | None
    revocation: Revocation | None


def certificate_status(
    directory: CASystemDirectory, name: str, serial: str
) -> CertificateStatusReport:
    directory.certificate(name)  # UnknownCA
    with open_store(directory) as store:
        certificate = store.certificate(name, serial)
        revocation = store.revocation(name, serial) if certificate is not None else None
    if certificate is None:
        status = "unknown"
    elif revocation is not None:
        status = "revoked"
    else:
        status = "good"
    return CertificateStatusReport(name, serial, status, certificate, revocation)


__all__ = [
    "CertificateStatusReport",
    "RevocationDone",
    "certificate_status",
    "crl_target",
    "current_crl",
    "find_certificate",
    "parse_serial",
    "reflects",
    "release_hold",
    "revoke_certificate",
]
