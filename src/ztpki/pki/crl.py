"""Certificate revocation lists (RFC 5280 section 5): reason codes and the v2 CRL builder.

No I/O and no clock: the caller passes the CA, what it revoked, the CRL number (kept
durable by the store) and ``now``. When a CRL is due again is decided here too
(``crl_due``), so the service's timer is a loop around a pure function.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from cryptography import x509

from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.signer import sign_crl

DEFAULT_NEXT_UPDATE = timedelta(hours=24)
# Re-sign this long before nextUpdate (or a tenth of the period, when shorter), so that a
# relying party that fetches the CRL just before it expires gets the new one.
RESIGN_MARGIN = timedelta(hours=1)


class RevocationReason(StrEnum):
    """RFC 5280 5.3.1 reason codes; the values are cryptography's ``x509.ReasonFlags`` values.

    ``removeFromCRL`` is not among them: lifting a hold removes the entry instead.
    """

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"
    AA_COMPROMISE = "aACompromise"

    @property
    def flag(self) -> x509.ReasonFlags:
        return x509.ReasonFlags(self.value)


class RevokedEntry(Protocol):
    """What one CRL entry needs (``store.records.Revocation`` is one)."""

    @property
    def serial(self) -> str: ...  # lower-case hex

    @property
    def revoked_at(self) -> datetime: ...

    @property
    def reason(self) -> RevocationReason: ...

    @property
    def invalidity_date(self) -> datetime | None: ...


def _entry(revocation: RevokedEntry) -> x509.RevokedCertificate:
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(int(revocation.serial, 16))
        .revocation_date(revocation.revoked_at)
    )
    # RFC 5280 5.3.1: the reasonCode unspecified SHOULD be absent.
    if revocation.reason is not RevocationReason.UNSPECIFIED:
        builder = builder.add_extension(x509.CRLReason(revocation.reason.flag), critical=False)
    if revocation.invalidity_date is not None:
        builder = builder.add_extension(
            x509.InvalidityDate(revocation.invalidity_date), critical=False
        )
    return builder.build()


def build_crl(
    authority: CertificateAuthority,
    revocations: Iterable[RevokedEntry],
    *,
    number: int,
    now: datetime,
    next_update: timedelta = DEFAULT_NEXT_UPDATE,
) -> x509.CertificateRevocationList:
    """A v2 CRL of ``authority`` listing ``revocations``: CRL number, AKI, thisUpdate ``now``
    and nextUpdate ``now + next_update``, each entry with its reason and invalidity date."""
    if number < 1:
        raise ValueError(f"CRL number must be positive, got {number}")
    if next_update <= timedelta(0):
        raise ValueError("next_update must be a positive period")
    ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.certificate.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value),
            critical=False,
        )
    )
    for revocation in revocations:
        builder = builder.add_revoked_certificate(_entry(revocation))
    return sign_crl(builder, authority.key)


def resign_margin(next_update: timedelta) -> timedelta:
    return min(RESIGN_MARGIN, next_update / 10)


def crl_due(
    *,
    this_update: datetime | None,
    next_update: datetime | None,
    changed_at: datetime | None,
    now: datetime,
    period: timedelta = DEFAULT_NEXT_UPDATE,
) -> bool:
    """Whether a CA's CRL must be signed again now.

    Yes when there is none (``this_update`` None), when it is near or past its nextUpdate,
    or when the revoked set changed at or after its thisUpdate (a CRL carries whole seconds,
    so a change in its second counts as newer: signing once too often is harmless, missing
    a revocation is not).
    """
    if this_update is None or next_update is None:
        return True
    if now >= next_update - resign_margin(period):
        return True
    return changed_at is not None and changed_at >= this_update


def wake_in(*, next_update: datetime, now: datetime, period: timedelta) -> timedelta:
    """How long the service's timer may sleep before this CRL is due again."""
    return max(timedelta(0), next_update - resign_margin(period) - now)


__all__ = [
    "DEFAULT_NEXT_UPDATE",
    "RevocationReason",
    "RevokedEntry",
    "build_crl",
    "crl_due",
    "resign_margin",
    "wake_in",
]
