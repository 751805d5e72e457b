"""The CA-system service's own TLS server certificate, and its renewal while the service runs.

The certificate and its key live only in memory and are short-lived (a leaked key is worth
little for long). A service that runs for months renews it on the same SSLContext well before
it expires: every handshake after the renewal presents the new certificate, and connections
already open keep theirs. Time comes from the caller, so the schedule is tested without
waiting for it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from cryptography import x509

from ztpki.credentials import load_identity, server_context
from ztpki.pki.authority import CLOCK_SKEW, CertificateAuthority, IssuanceGrant
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import serial_hex
from ztpki.pki.profiles import CertificateProfile

log = logging.getLogger(__name__)

SERVER_CERT_LIFETIME = timedelta(days=30)
# Renew once fewer than 20 days are left (every 10 days): a failing renewal has days of
# hourly retries, and an operator days to notice the log, before any client refuses.
RENEW_BEFORE = timedelta(days=20)
CHECK_EVERY = 3600.0  # seconds between checks


def _split_hosts(hostnames: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    dns, ips = [], []
    for host in dict.fromkeys(hostnames):
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            dns.append(host)
    return tuple(dns), tuple(ips)


class ServerIdentity:
    """The service's server certificate and the SSLContext that presents it."""

    def __init__(
        self,
        authority: CertificateAuthority,
        hostnames: tuple[str, ...],
        *,
        now: datetime,
        lifetime: timedelta = SERVER_CERT_LIFETIME,
        renew_before: timedelta = RENEW_BEFORE,
    ) -> None:
        self._authority = authority
        self._dns_names, self._ip_addresses = _split_hosts(hostnames)
        self._lifetime = lifetime
        self._renew_before = renew_before
        key, self.certificate = self._issue(now)
        self.context = server_context(
            key, [self.certificate], client_anchors=[authority.certificate]
        )

    def _issue(self, now: datetime) -> tuple[PrivateKey, x509.Certificate]:
        key = generate_private_key(KeySpec.EC_P256)
        grant = IssuanceGrant(
            subject=build_subject("ztpki CA-system service", SubjectFields(), serial_number=None),
            profile=CertificateProfile.SERVER,
            not_before=now - CLOCK_SKEW,
            not_after=now + self._lifetime,
            dns_names=self._dns_names,
            ip_addresses=self._ip_addresses,
        )
        return key, self._authority.issue(key.public_key(), grant)

    def due(self, now: datetime) -> bool:
        return self.certificate.not_valid_after_utc - now <= self._renew_before

    def renew(self, now: datetime) -> x509.Certificate:
        """A new key and certificate, presented from the next handshake on."""
        key, certificate = self._issue(now)
        load_identity(self.context, key, [certificate])
        self.certificate = certificate
        log.info(
            "renewed the TLS server certificate: serial=%s valid until %s",
            serial_hex(certificate),
            certificate.not_valid_after_utc.isoformat(timespec="seconds"),
        )
        return certificate

    def renew_if_due(self, now: datetime) -> bool:
        if not self.due(now):
            return False
        self.renew(now)
        return True


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def keep_renewed(
    identity: ServerIdentity,
    *,
    clock: Callable[[], datetime] = _utc_now,
    check_every: float = CHECK_EVERY,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Check every check_every seconds, renewing when due, until cancelled.

    Renewal runs on the event loop, like the handshakes that read the context: a P-256 key
    and one signature take about a millisecond.
    """
    while True:
        await sleep(check_every)
        try:
            identity.renew_if_due(clock())
        except Exception:
            # Keep serving with the current certificate and try again at the next check.
            log.exception(
                "renewing the TLS server certificate failed (it expires %s); retrying in %.0f s",
                identity.certificate.not_valid_after_utc.isoformat(timespec="seconds"),
                check_every,
            )


__all__ = ["RENEW_BEFORE", "SERVER_CERT_LIFETIME", "ServerIdentity", "keep_renewed"]
