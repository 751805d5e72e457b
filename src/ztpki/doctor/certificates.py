"""Certificate and CRL lifetimes as the doctor judges them (pure: the time is passed in)."""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509

from ztpki.doctor.findings import Finding, error, ok, warning

DEFAULT_WARN_BEFORE = timedelta(days=30)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.0f} days" if days >= 2 else f"{delta.total_seconds() / 3600:.0f} hours"


def certificate_lifetime(
    cert: x509.Certificate,
    *,
    what: str,
    fix: str,
    now: datetime,
    warn_before: timedelta = DEFAULT_WARN_BEFORE,
) -> Finding:
    """Expired or not yet valid: an error; expiring within ``warn_before``: a warning."""
    subject = f"{what} ({cert.subject.rfc4514_string()})"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now >= end:
        return error("expiry", subject, f"expired on {_when(end)}", fix)
    if now < start:
        return error("expiry", subject, f"not valid before {_when(start)} (check the clock)", fix)
    if end - now <= warn_before:
        return warning("expiry", subject, f"expires in {_days(end - now)}, on {_when(end)}", fix)
    return ok("expiry", subject, f"valid until {_when(end)}")


def crl_freshness(
    crl: x509.CertificateRevocationList, *, what: str, fix: str, now: datetime
) -> Finding:
    """A CRL past its nextUpdate is stale: relying parties that check it refuse or fail open."""
    subject = f"{what} ({crl.issuer.rfc4514_string()})"
    next_update = crl.next_update_utc
    if next_update is None:
        return warning("crl", subject, "has no nextUpdate: nobody can tell it is current", fix)
    if now >= next_update:
        return error("crl", subject, f"stale: its nextUpdate was {_when(next_update)}", fix)
    return ok("crl", subject, f"current until {_when(next_update)}")
