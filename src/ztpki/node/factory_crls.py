"""The factory CAs' CRLs at the node: is this temporary certificate revoked by its manufacturer?

Sources, per manufacturer (``[manufacturer.NAME]`` in node.toml): the ``crl`` locations it
configures (http:// URLs or files), the CRL distribution points named in its temporary
certificates (learned as devices present them), and the CRL files of ``[node] crl`` (``node
init --crl``), each for the manufacturers whose bundle holds the CA that signed it. Each is
fetched at start, again every ``crl_refresh_minutes`` and before its nextUpdate, and at once on
SIGHUP to ``node serve``. A fetch that fails keeps the CRL held before; once that one is past
its nextUpdate, its verdicts are "unknown" and the manufacturer's ``fail_open`` (false by
default) decides: refused (503, try again later), with a log line that says why, or let through
with a warning.

The verdict goes to authorization, which refuses a revoked certificate with 403 and its reason,
in the audit trail (``authorization.check_revocation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from ztpki.errors import ConfigurationError
from ztpki.node.authentication import ClientIdentity, IdentityKind
from ztpki.node.authorization import RevocationCheck
from ztpki.pki.revocation_check import (
    RevocationStatus,
    RevocationVerdict,
    crl_signed_by,
    crl_urls,
)
from ztpki.revocation_source import CRLCache, Fetch, check_location, utcnow, verdict_of

log = logging.getLogger(__name__)

# Distribution points learned from certificates, per manufacturer: a bound, since a factory CA
# (trusted, but not with the node's memory) names them.
MAX_LEARNED = 8
# CRL signatures remembered as checked: a few CRLs per factory CA, kept until refreshed away.
MAX_REMEMBERED = 64
# The refresh loop wakes at least this often to see what is due.
MAX_TICK = timedelta(seconds=60)


@dataclass
class _Maker:
    name: str
    bundle: frozenset[x509.Certificate]
    locations: list[str]
    cache: CRLCache
    fail_open: bool
    learned: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)


def check_static_crls(
    crls: Sequence[x509.CertificateRevocationList], issuers: Sequence[x509.Certificate]
) -> None:
    """Each static CRL must be signed by a factory CA the node trusts; anything else is a
    mistake of the operator's, refused at once."""
    for crl in crls:
        if not any(crl_signed_by(crl, c) for c in issuers):
            raise ConfigurationError(
                f"CRL of {crl.issuer.rfc4514_string()} is not signed by a configured factory CA"
            )


def static_locations(
    files: Sequence[tuple[str, x509.CertificateRevocationList]],
    manufacturers: Sequence[tuple[str, Sequence[x509.Certificate]]],
) -> dict[str, list[str]]:
    """The static CRL files (``[node] crl``: path, its CRL as read now) by the manufacturers
    whose bundle holds the CA that signed each; ConfigurationError for one no bundle does.
    They are re-read like any configured file."""
    check_static_crls([crl for _, crl in files], [c for _, b in manufacturers for c in b])
    return {
        name: [path for path, crl in files if any(crl_signed_by(crl, c) for c in bundle)]
        for name, bundle in manufacturers
    }


def no_crl_warning(manufacturer: str) -> str:
    return (
        f"temporary certificates of {manufacturer} are checked for revocation only if they "
        "name a CRL distribution point; give --crl-url URL (its factory CA's CRL, e.g. from "
        "`ztpki ca serve --http-listen`) to `node init` or `node add-manufacturer`, or set "
        f"crl = [URL] under [manufacturer.{json.dumps(manufacturer)}] in node.toml, so that "
        "a recall at its factory refuses them"
    )


@dataclass(frozen=True)
class CRLFreshness:
    """A factory CRL location, the CRL held for it (None: never fetched), and whether its
    last refresh failed."""

    manufacturer: str
    location: str
    crl: x509.CertificateRevocationList | None
    failed: bool


class FactoryRevocation:
    """The factory CRLs of every manufacturer, and the verdict on a temporary certificate."""

    def __init__(
        self,
        manufacturers: Sequence[tuple[str, Sequence[x509.Certificate]]],
        *,
        locations: dict[str, Sequence[str]] | None = None,
        refresh: dict[str, timedelta] | None = None,
        fail_open: dict[str, bool] | None = None,
        fetch: Fetch | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        locations, refresh, fail_open = locations or {}, refresh or {}, fail_open or {}
        self._makers = [
            _Maker(
                name,
                frozenset(bundle),
                [check_location(loc) for loc in locations.get(name, ())],
                CRLCache(refresh=refresh.get(name, timedelta(hours=1)), fetch=fetch),
                fail_open.get(name, False),
            )
            for name, bundle in manufacturers
        ]
        self._clock = clock
        self._signatures: dict[
            tuple[int, int],
            tuple[x509.CertificateRevocationList, x509.Certificate, bool],
        ] = {}
        self._wake = asyncio.Event()
        self._force = False

    @property
    def configured(self) -> bool:
        return any(m.locations for m in self._makers)

    def freshness(self) -> list[CRLFreshness]:
        """Every CRL location of every manufacturer and the CRL held for it now (the web
        console's CA health page)."""
        return [
            CRLFreshness(maker.name, location, maker.cache.held(location), location in maker.failed)
            for maker in self._makers
            for location in (*maker.locations, *maker.learned)
        ]

    def unconfigured(self) -> list[str]:
        """The manufacturers with no configured CRL (URL or file): a recall at their factory
        reaches the node only through a distribution point their certificates name."""
        return [m.name for m in self._makers if not m.locations]

    # ------------------------------------------------------------------ the verdict

    async def check(self, identity: ClientIdentity) -> RevocationCheck | None:
        """The revocation verdict on a temporary certificate, or None when no CRL speaks for
        its issuer (none configured, none named in it): nothing to check."""
        issuer, cert = identity.issuer, identity.certificate
        if identity.kind is not IdentityKind.TEMPORARY or issuer is None or cert is None:
            return None
        makers = [m for m in self._makers if issuer in m.bundle]
        if not makers:
            return None
        for maker in makers:
            new = [u for u in crl_urls(cert) if u not in maker.locations + maker.learned]
            if new and len(maker.learned) < MAX_LEARNED:
                maker.learned += new[: MAX_LEARNED - len(maker.learned)]
                log.info(
                    "manufacturer %s: CRL distribution point %s learned from device %s",
                    maker.name,
                    ", ".join(new),
                    identity.device_id,
                )
                await asyncio.to_thread(self._refresh_maker, maker, self._clock(), False)
        now = self._clock()
        crls: list[x509.CertificateRevocationList] = []
        missing: list[str] = []
        for maker in makers:
            for location in (*maker.locations, *maker.learned):
                crl = maker.cache.held(location)
                if crl is None:
                    missing.append(location)
                elif crl.issuer == issuer.subject:
                    crls.append(crl)
        if not crls and not missing:
            return None
        verdict = verdict_of(cert, issuer, crls, now=now, verified=self._signature_checker(issuer))
        if verdict.status is RevocationStatus.UNKNOWN and missing:
            verdict = RevocationVerdict(
                RevocationStatus.UNKNOWN,
                detail=f"{verdict.detail}; no CRL could be fetched from {', '.join(missing)}",
            )
        check = RevocationCheck(
            verdict,
            fail_open=bool(makers) and all(m.fail_open for m in makers),
            manufacturers=tuple(m.name for m in makers),
        )
        if verdict.status is RevocationStatus.UNKNOWN:
            log.warning(
                "device %s %s: the revocation status of its temporary certificate is unknown "
                "(%s); manufacturer %s has fail_open = %s",
                identity.device_id,
                "let through" if check.fail_open else "refused",
                verdict.detail,
                ", ".join(check.manufacturers) or "-",
                "true" if check.fail_open else "false",
            )
        return check

    def _signature_checker(
        self, issuer: x509.Certificate
    ) -> Callable[[x509.CertificateRevocationList], bool]:
        """``verified(crl)`` for verdict_of: checks each CRL's signature by ``issuer`` once,
        then remembers it (a factory CRL of 10,000 entries takes ~3.5 ms to verify)."""

        def verified(crl: x509.CertificateRevocationList) -> bool:
            key = (id(crl), id(issuer))
            known = self._signatures.get(key)
            # The entry holds both objects, so neither id can be reused while it is there.
            if known is None or known[0] is not crl or known[1] is not issuer:
                if len(self._signatures) >= MAX_REMEMBERED:
                    self._signatures.clear()
                known = (crl, issuer, crl_signed_by(crl, issuer))
                self._signatures[key] = known
            return known[2]

        return verified

    # ------------------------------------------------------------------ refreshing

    def refresh(self, *, force: bool = False) -> None:
        """Fetch every CRL that is due (every one, with ``force``); blocking I/O."""
        now = self._clock()
        for maker in self._makers:
            self._refresh_maker(maker, now, force)

    def _refresh_maker(self, maker: _Maker, now: datetime, force: bool) -> None:
        for location in (*maker.locations, *maker.learned):
            if not force and not maker.cache.due(location, now):
                continue
            before = maker.cache.held(location)
            crl = maker.cache.current(location, now=now, force=True)
            if crl is None or crl is before:
                maker.failed.add(location)
                log.warning(
                    "manufacturer %s: the factory CRL at %s could not be refreshed%s",
                    maker.name,
                    location,
                    "" if crl is None else f" (keeping the one valid until {_until(crl)})",
                )
                continue
            maker.failed.discard(location)
            log.info(
                "manufacturer %s: factory CRL of %s refreshed from %s: CRL number %s, %d "
                "revoked, next update %s",
                maker.name,
                crl.issuer.rfc4514_string(),
                location,
                _number(crl),
                len(crl),
                _until(crl),
            )

    def refresh_now(self) -> None:
        """Ask the running refresh loop to fetch every CRL at once (SIGHUP)."""
        self._force = True
        self._wake.set()

    async def run(self) -> None:
        """Refresh what is due until cancelled; refresh_now() wakes it at once."""
        while True:
            force, self._force = self._force, False
            try:
                await asyncio.to_thread(self.refresh, force=force)
            except Exception:  # a bug must not end the loop: the CRLs would go stale unseen
                log.exception("factory CRL refresh failed")
            if force:
                log.info("factory CRLs refreshed on request")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._tick().total_seconds())

    def _tick(self) -> timedelta:
        ticks = [MAX_TICK, *(m.cache.refresh_interval for m in self._makers if m.locations)]
        return max(min(ticks), timedelta(seconds=1))


def _number(crl: x509.CertificateRevocationList) -> str:
    try:
        return str(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return "none"


def _until(crl: x509.CertificateRevocationList) -> str:
    next_update = crl.next_update_utc
    return "none" if next_update is None else next_update.isoformat()


def resolve(directory: Path, location: str) -> str:
    """A configured location with a relative file path taken relative to the node directory."""
    if "://" in location or Path(location).is_absolute():
        return location
    return str(directory / location)
