"""The CA systems' health as the console shows it, measured off the request path.

* Reachable: a real TLS handshake with each address of ``[node] ca_system``, presenting the
  node's CA-client credential (the identity it issues with) and verifying the CA system's
  server certificate against that credential's anchors, as every issuance does; the latency
  is the handshake's round trips. TLS 1.3 refuses a client certificate after the handshake,
  so the probe then listens a moment for that refusal. A failure names its reason: refused,
  timeout, certificate mismatch, or the TLS failure.
* Certificates issued and revoked per CA, as the CA systems count them: ``GET /metrics`` of
  each ``[console] ca_http`` listener (``ca serve --http-listen``).
* CRL freshness of each customer CA: ``GET /crl/NAME.crl`` of each listener and of each CRL
  distribution point the CA names in the certificates it issued (one of them read from the
  register), its signature checked against the label's CA certificate; thisUpdate,
  nextUpdate, age, stale once past nextUpdate (the factory CRLs are the node's own,
  ztpki.node.factory_crls).

``HealthMonitor`` runs every probe at once in a background task with bounded timeouts: a page
shows the last report and its age, starts a new one when that is older than REFRESH_EVERY,
and waits for one only when there is none yet (at most FIRST_WAIT), so a CA system that hangs
never holds a page for longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
from cryptography import x509

from ztpki.casystem.failover import parse_addresses
from ztpki.node.console.ca_readings import CRLStatus, MetricsReading, read_crl, read_metrics
from ztpki.node.console.refresh import Refreshed
from ztpki.pki.revocation_check import crl_urls

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0
# A CA system refusing the node's client certificate (TLS 1.3: after the handshake) says so
# within this; a silent connection past it was accepted.
REFUSAL_WAIT = 0.3
REFRESH_EVERY = 30.0
FIRST_WAIT = PROBE_TIMEOUT + REFUSAL_WAIT + 2.0
HUNG_UP = (
    "TLS failure: the CA system closed the connection after the handshake (it refuses the "
    "node's CA-client certificate, or is shutting down)"
)


@dataclass(frozen=True)
class Probe:
    address: str
    reachable: bool
    latency_ms: float | None
    error: str | None


@dataclass(frozen=True)
class CustomerCA:
    """A CA of the customer CA system the node issues from: its name there, its certificate,
    and the EST label whose certificates name its CRL distribution point."""

    name: str
    certificate: x509.Certificate
    label: str = ""


def distribution_points(der: bytes | None) -> tuple[str, ...]:
    """The http CRL distribution points of a certificate its CA issued (none: no DER)."""
    if der is None:
        return ()
    try:
        return crl_urls(x509.load_der_x509_certificate(der))
    except ValueError:
        return ()


@dataclass(frozen=True)
class HealthReport:
    at: datetime
    probes: list[Probe]
    metrics: list[MetricsReading] = field(default_factory=list)
    crls: list[CRLStatus] = field(default_factory=list)

    def issued(self) -> dict[str, int]:
        """Certificates issued per CA, added up over every listener that answered."""
        return _added([reading.issued for reading in self.metrics])

    def revoked(self) -> dict[str, int]:
        return _added([reading.revoked for reading in self.metrics])


def _added(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for ca, count in one.items():
            total[ca] = total.get(ca, 0) + count
    return total


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            "certificate mismatch: the server certificate does not verify against the anchors "
            f"of the node's CA-client credential ({exc.verify_message})"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS failure: {exc.reason or type(exc).__name__}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused: nothing listens at this address"
    if isinstance(exc, (ConnectionResetError, asyncio.IncompleteReadError)):
        return "TLS failure: the CA system closed the connection (is the credential registered?)"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


async def probe_ca_system(host: str, port: int, context: ssl.SSLContext) -> Probe:
    """One TLS handshake with the node's CA-client identity, and its latency."""
    address = f"{host}:{port}"
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
        latency = (time.perf_counter() - started) * 1000
        try:
            async with asyncio.timeout(REFUSAL_WAIT):
                await reader.read(1)
        except TimeoutError:
            return Probe(address, True, latency, None)
        except (ssl.SSLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            return Probe(
                address,
                False,
                latency,
                f"TLS failure: the CA system refused the node's CA-client certificate ({reason})",
            )
        # A close or a byte unasked: no CA system accepting this CA-client. (asyncio reads the
        # TLS 1.3 alert of a refused client certificate as a plain close: the two read alike.)
        return Probe(address, False, latency, HUNG_UP)
    except TimeoutError:
        return Probe(address, False, None, f"timeout: no handshake within {PROBE_TIMEOUT:g} s")
    except (OSError, asyncio.IncompleteReadError) as exc:
        return Probe(address, False, None, _refusal(exc))
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def _utcnow() -> datetime:
    return datetime.now(UTC)


class HealthMonitor:
    """The last health report, and the background task making the next one."""

    def __init__(
        self,
        *,
        addresses: Sequence[str],
        tls: ssl.SSLContext | None,
        http: Sequence[str] = (),
        cas: Sequence[CustomerCA] = (),
        certificate_of_label: Callable[[str], bytes | None] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """``certificate_of_label``: a certificate issued under a label (the register's), whose
        CRL distribution points are read besides ``http``'s /crl/NAME.crl."""
        self._addresses = parse_addresses(tuple(addresses))
        self._tls = tls
        self._http = tuple(base.rstrip("/") for base in http)
        self._cas = tuple(cas)
        self._certificate_of_label = certificate_of_label
        self._clock = clock
        self._crls: dict[str, tuple[bytes, CRLStatus]] = {}  # read_crl's: unchanged bytes
        self._report = Refreshed(
            self._make, every=REFRESH_EVERY, wait=FIRST_WAIT, name="console CA health"
        )

    async def report(self) -> tuple[HealthReport | None, float | None]:
        """The last report and its age in seconds (None, None while the first is made)."""
        last = await self._report.get()
        return (None, None) if last is None else last

    async def _make(self) -> HealthReport:
        at = self._clock()
        probes = self._probes()
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        locations = await self._crl_locations()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            metrics = [read_metrics(session, base) for base in self._http]
            crls = [
                read_crl(session, url, ca.name, ca.certificate, seen=self._crls)
                for ca, url in locations
            ]
            done = await asyncio.gather(probes, asyncio.gather(*metrics), asyncio.gather(*crls))
        return HealthReport(at, done[0], list(done[1]), list(done[2]))

    async def _crl_locations(self) -> list[tuple[CustomerCA, str]]:
        """Each CA's /crl/NAME.crl on every listener, then the distribution points its
        certificates name (each URL once)."""
        found: dict[str, CustomerCA] = {}
        for ca in self._cas:
            for base in self._http:
                found.setdefault(f"{base}/crl/{quote(ca.name, safe='')}.crl", ca)
            if self._certificate_of_label is not None and ca.label:
                der = await asyncio.to_thread(self._certificate_of_label, ca.label)
                for url in distribution_points(der):
                    found.setdefault(url, ca)
        return [(ca, url) for url, ca in found.items()]

    async def _probes(self) -> list[Probe]:
        if self._tls is None:
            return [
                Probe(f"{h}:{p}", False, None, "no CA-client credential loaded in this process")
                for h, p in self._addresses
            ]
        tls = self._tls
        return list(await asyncio.gather(*(probe_ca_system(h, p, tls) for h, p in self._addresses)))

    async def close(self) -> None:
        await self._report.close()


def stale(status: CRLStatus, now: datetime) -> bool:
    return status.next_update is not None and status.next_update <= now


def age(since: datetime | None, now: datetime) -> str:
    """A short age for the page: 42 s, 7 min, 3 h, 2 d."""
    if since is None:
        return "—"
    seconds = max(0.0, (now - since).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"
