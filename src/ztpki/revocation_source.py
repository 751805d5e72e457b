"""Where a relying party gets CRLs: fetched, bounded, cached and refreshed (the I/O edge).

The decision itself is pure (``ztpki.pki.revocation_check``); this module moves the bytes. A
CRL comes from an ``http://`` URL (a distribution point in a certificate, or one configured:
CRLs are signed objects, so plain HTTP is the norm, RFC 5280 section 4.2.1.13, and https
would need a revocation check of its own) or from a file. Every fetch is bounded in time and
size. A cached CRL is fetched again when its refresh interval has passed or its nextUpdate
nears; a failed fetch keeps the CRL in hand (its verdicts turn "unknown" once it is stale)
and is logged. Used by the node (factory CRLs) and the device (its servers' CRLs).
"""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from ztpki.errors import ConfigurationError, MalformedInput, PayloadTooLarge, Unavailable
from ztpki.pki.revocation_check import (
    RevocationStatus,
    RevocationVerdict,
    check_crl,
    load_crl,
)

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 4 * 1024 * 1024
FETCH_TIMEOUT = 10.0
DEFAULT_REFRESH = timedelta(hours=1)
# Fetch again this long before nextUpdate (at most), so a current CRL is always in hand.
NEXT_UPDATE_MARGIN = timedelta(minutes=5)

Fetch = Callable[[str], bytes]


def is_url(location: str) -> bool:
    return "://" in location


def check_location(location: str) -> str:
    """An http:// URL with a host, or a file path; ConfigurationError otherwise."""
    if is_url(location):
        parts = urlsplit(location)
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ConfigurationError(
                f"CRL location {location[:200]!r}: only http:// URLs (CRLs are signed) or "
                "file paths are fetched"
            )
    elif not location:
        raise ConfigurationError("a CRL location is empty")
    return location


def fetch_crl_bytes(
    location: str, *, timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_CRL_BYTES
) -> bytes:
    """The bytes at an http:// URL or in a file, at most ``max_bytes``, within ``timeout``.

    Unavailable when they cannot be had, PayloadTooLarge above the limit."""
    check_location(location)
    if not is_url(location):
        try:
            with Path(location).open("rb") as file:
                data = file.read(max_bytes + 1)
        except OSError as exc:
            raise Unavailable(f"cannot read the CRL file {location}: {exc.strerror}") from None
    else:
        data = _http_get(location, timeout=timeout, max_bytes=max_bytes)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the CRL at {location[:200]} is larger than {max_bytes} bytes")
    return data


def _http_get(url: str, *, timeout: float, max_bytes: int) -> bytes:
    parts = urlsplit(url)
    assert parts.hostname is not None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request("GET", path, headers={"User-Agent": "ztpki-crl"})
        response = connection.getresponse()
        if response.status != 200:
            raise Unavailable(f"the CRL at {url[:200]} answered HTTP {response.status}")
        return response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"cannot fetch the CRL at {url[:200]}: {exc}") from None
    finally:
        connection.close()


@dataclass
class _Held:
    crl: x509.CertificateRevocationList
    fetched_at: datetime


class CRLCache:
    """CRLs by location, fetched on first use and again when due; safe across threads.

    ``refresh``: fetch again after this long, whatever the nextUpdate (a revocation is then
    seen within it). A CRL is also fetched again once ``now`` is within a margin of its
    nextUpdate.
    """

    def __init__(
        self,
        *,
        refresh: timedelta = DEFAULT_REFRESH,
        fetch: Fetch | None = None,
    ) -> None:
        self.refresh_interval = refresh
        self._fetch = fetch or fetch_crl_bytes
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()

    def held(self, location: str) -> x509.CertificateRevocationList | None:
        with self._lock:
            held = self._held.get(location)
        return None if held is None else held.crl

    def due(self, location: str, now: datetime) -> bool:
        with self._lock:
            held = self._held.get(location)
        if held is None:
            return True
        if now >= held.fetched_at + self.refresh_interval:
            return True
        next_update = held.crl.next_update_utc
        if next_update is None:
            return True
        margin = min(NEXT_UPDATE_MARGIN, (next_update - held.crl.last_update_utc) / 10)
        return now >= next_update - margin

    def load(self, location: str, *, now: datetime) -> x509.CertificateRevocationList:
        """Fetch ``location`` now and keep it; Unavailable / MalformedInput when it fails
        (the CRL held before stays)."""
        data = self._fetch(location)
        crl = load_crl(data)
        with self._lock:
            before = self._held.get(location)
            if before is not None and _number(crl) < _number(before.crl):
                # An older CRL served again (a stale mirror, a replay): keep the newer one.
                log.warning("CRL at %s is older than the one held; kept the newer", location)
                before.fetched_at = now
                return before.crl
            self._held[location] = _Held(crl, now)
        return crl

    def current(
        self, location: str, *, now: datetime, force: bool = False
    ) -> x509.CertificateRevocationList | None:
        """The CRL at ``location``, fetched again first when due (or ``force``); a failed
        fetch is logged and leaves the CRL held before (None if there is none)."""
        if force or self.due(location, now):
            try:
                return self.load(location, now=now)
            except (Unavailable, MalformedInput, PayloadTooLarge, ConfigurationError) as exc:
                log.warning("CRL refresh failed: %s", exc.message)
        return self.held(location)


def _number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return -1


def verdict_of(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
    *,
    now: datetime,
    verified: Callable[[x509.CertificateRevocationList], bool] = lambda crl: False,
) -> RevocationVerdict:
    """The combined verdict of several CRLs: revoked if one says so, good if one current CRL
    of the issuer says so, else unknown with every reason. ``verified(crl)``: True when
    that CRL's signature by ``issuer`` was checked before."""
    details: list[str] = []
    good: RevocationVerdict | None = None
    for crl in crls:
        verdict = check_crl(cert, issuer, crl, now=now, signature_verified=verified(crl))
        if verdict.status is RevocationStatus.REVOKED:
            return verdict
        if verdict.status is RevocationStatus.GOOD:
            good = good or verdict
        else:
            details.append(verdict.detail)
    if good is not None:
        return good
    return RevocationVerdict(
        RevocationStatus.UNKNOWN, detail="; ".join(details) or "no CRL of the issuer is at hand"
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
