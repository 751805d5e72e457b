"""Finding the customer node with nobody typing its address: DNS-SD (RFC 6763).

Two sources, asked in this order, each giving records in RFC 2782 order (priority, then a
weighted draw):

* **mDNS** on the local link (python-zeroconf): the instances of ``_ztpki-est._tcp.local.``
  that nodes started with ``node serve --announce`` answer for;
* **unicast DNS** (dnspython): the SRV and TXT records at ``_ztpki-est._tcp.DOMAIN`` for each
  search domain (``/etc/resolv.conf``'s ``search``/``domain``, or ``--search-domain``), the
  target's addresses from the same DNS server.

What is found is only a list of candidates: each must still pass the device's own node
verification (:func:`ztpki.device.node_probe.verify_candidate`) before the device sends
anything of its own. The TXT record's CA fingerprint is a hint that orders equals.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ztpki.device.customer_node import NodeAddress
from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.protocol.dnssd import (
    SERVICE_TYPES,
    ServiceRecord,
    decode_txt,
    order_records,
    service_name,
)
from ztpki.untrusted import displayable

__all__ = ["Candidate", "DiscoverySettings", "Finding", "find_candidates"]

log = logging.getLogger(__name__)

MAX_RECORDS = 32  # a flood of announcements must not make the device try forever


@dataclass(frozen=True)
class DiscoverySettings:
    """Where to look. ``mdns_interfaces``: IPv4 addresses of the interfaces to browse on
    (empty: all); ``search_domains`` None: the resolver configuration's; ``dns_servers``
    (HOST, PORT) pairs, empty: the resolver configuration's."""

    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    browse_seconds: float = 3.0
    unicast: bool = True
    search_domains: tuple[str, ...] | None = None
    dns_servers: tuple[tuple[str, int], ...] = ()
    timeout: float = 5.0
    kind: str = "est"

    def __post_init__(self) -> None:
        if self.kind not in SERVICE_TYPES:
            raise ConfigurationError(f"no DNS-SD service type for {self.kind!r}")
        if not self.browse_seconds > 0 or not self.timeout > 0:
            raise ConfigurationError("discovery needs a browse time and a timeout above 0 s")

    @property
    def enabled(self) -> bool:
        return self.mdns or self.unicast


@dataclass(frozen=True)
class Candidate:
    """A node found by discovery: the record, and the address the device would use."""

    record: ServiceRecord

    @property
    def node(self) -> NodeAddress:
        r = self.record
        return NodeAddress(r.target, r.port, r.label, addresses=r.addresses)

    def describe(self) -> str:
        r = self.record
        hint = f", announced CA sha256:{r.ca_hint[:16]}..." if r.ca_hint else ""
        where = ", ".join(r.addresses)
        # The instance name is the announcer's free text: shown, never obeyed by a terminal.
        return (
            f"{self.node} (at {where}; {r.source} {displayable(r.instance[:120])}, priority "
            f"{r.priority}, weight {r.weight}{hint})"
        )


@dataclass
class Finding:
    """Candidates in the order to try them, and what went wrong on the way (each source
    that could not be asked, each record that was skipped)."""

    candidates: list[Candidate] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# -- mDNS ---------------------------------------------------------------------------------


async def browse_mdns(settings: DiscoverySettings, finding: Finding) -> list[ServiceRecord]:
    """The announcements answered on the link within ``settings.browse_seconds``."""
    service_type = f"{SERVICE_TYPES[settings.kind]}.local."
    names: list[str] = []

    def changed(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added and name not in names:
            names.append(name)

    try:
        interfaces = list(settings.mdns_interfaces) or None
        aiozc = (
            AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            if interfaces
            else AsyncZeroconf(ip_version=IPVersion.V4Only)
        )
    except OSError as exc:
        finding.problems.append(f"mDNS is not available here: {exc}")
        return []
    records: list[ServiceRecord] = []
    try:
        browser = AsyncServiceBrowser(aiozc.zeroconf, [service_type], handlers=[changed])
        await asyncio.sleep(settings.browse_seconds)
        await browser.async_cancel()
        await _resolve_mdns(aiozc, service_type, names, settings, finding, records)
    except OSError as exc:
        finding.problems.append(f"mDNS browsing failed: {exc}")
    finally:
        await aiozc.async_close()
    return [r for r in records if r.addresses]


async def _resolve_mdns(
    aiozc: AsyncZeroconf,
    service_type: str,
    names: list[str],
    settings: DiscoverySettings,
    finding: Finding,
    records: list[ServiceRecord],
) -> None:
    """Each browsed instance's SRV, TXT and addresses, as a record (or a problem)."""
    for name in names[:MAX_RECORDS]:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(aiozc.zeroconf, int(settings.timeout * 1000)):
            finding.problems.append(
                f"mDNS: {displayable(name[:120])} did not answer with its record"
            )
            continue
        try:
            label, hint = decode_txt(info.properties, kind=settings.kind)
            if info.server is None or not info.port:
                raise MalformedInput("the announcement has no host or port")
            records.append(
                ServiceRecord(
                    instance=name,
                    target=info.server,
                    port=info.port,
                    priority=info.priority,
                    weight=info.weight,
                    label=label,
                    ca_hint=hint,
                    addresses=tuple(info.parsed_addresses(IPVersion.V4Only)),
                    source="mdns",
                )
            )
        except MalformedInput as exc:
            finding.problems.append(f"mDNS: skipped {displayable(name[:120])}: {exc.message}")


# -- unicast DNS --------------------------------------------------------------------------


def _resolver(settings: DiscoverySettings) -> dns.asyncresolver.Resolver:
    if settings.dns_servers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host for host, _ in settings.dns_servers]
        resolver.nameserver_ports = {host: port for host, port in settings.dns_servers}
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = settings.timeout
    return resolver


def search_domains(settings: DiscoverySettings) -> list[str]:
    """The domains to look under: the settings', else /etc/resolv.conf's search list."""
    if settings.search_domains is not None:
        return [d.strip(".") for d in settings.search_domains if d.strip(".")]
    try:
        configured = dns.resolver.Resolver()
    except dns.exception.DNSException:
        return []
    domains = [str(n).strip(".") for n in configured.search]
    if not domains and configured.domain != dns.name.root:
        domains = [str(configured.domain).strip(".")]
    return [d for d in domains if d]


async def _answer(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType
) -> list[object]:
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return list(answer)


async def lookup_dns(settings: DiscoverySettings, finding: Finding) -> list[ServiceRecord]:
    """The SRV records (with the TXT record and the targets' addresses) of every domain."""
    try:
        resolver = _resolver(settings)
    except dns.exception.DNSException as exc:
        finding.problems.append(f"DNS: no resolver configuration: {exc}")
        return []
    records: list[ServiceRecord] = []
    for domain in search_domains(settings):
        name = service_name(settings.kind, domain)
        try:
            srvs = await _answer(resolver, name, dns.rdatatype.SRV)
            if not srvs:
                continue
            texts = await _answer(resolver, name, dns.rdatatype.TXT)
        except dns.exception.DNSException as exc:
            finding.problems.append(f"DNS: cannot look up {name}: {exc}")
            continue
        pairs: dict[bytes, bytes | None] = {}
        for text in texts[:1]:
            for item in getattr(text, "strings", ()):
                key, sep, value = bytes(item).partition(b"=")
                pairs.setdefault(key, value if sep else None)
        try:
            label, hint = decode_txt(pairs, kind=settings.kind)
        except MalformedInput as exc:
            finding.problems.append(f"DNS: skipped {name}: {exc.message}")
            continue
        for srv in srvs[:MAX_RECORDS]:
            target = str(getattr(srv, "target", "")).rstrip(".")
            if not target:  # "." : the service is decidedly not available here (RFC 2782)
                continue
            try:
                addresses = [
                    str(a)
                    for a in await _answer(resolver, target + ".", dns.rdatatype.A)
                    + await _answer(resolver, target + ".", dns.rdatatype.AAAA)
                ]
                records.append(
                    ServiceRecord(
                        instance=name,
                        target=target,
                        port=int(getattr(srv, "port", 0)),
                        priority=int(getattr(srv, "priority", 0)),
                        weight=int(getattr(srv, "weight", 0)),
                        label=label,
                        ca_hint=hint,
                        addresses=tuple(addresses),
                        source="dns",
                    )
                )
            except MalformedInput as exc:
                finding.problems.append(f"DNS: skipped a record of {name}: {exc.message}")
            except dns.exception.DNSException as exc:
                finding.problems.append(f"DNS: cannot resolve {target[:120]}: {exc}")
    for record in records:
        if not record.addresses:
            finding.problems.append(f"DNS: {record.target} has no address record")
    return [r for r in records if r.addresses]


# -- both ---------------------------------------------------------------------------------


async def find_candidates(
    settings: DiscoverySettings,
    *,
    trusted_hints: Sequence[str] = (),
    draw: Callable[[], float] = random.random,
) -> Finding:
    """mDNS first, then unicast DNS; each in RFC 2782 order (``trusted_hints``: fingerprints
    of CAs the device trusts, whose announcers go first among equals)."""
    finding = Finding()
    seen: set[NodeAddress] = set()
    sources = [(settings.mdns, browse_mdns), (settings.unicast, lookup_dns)]
    for wanted, source in sources:
        if not wanted:
            continue
        found = await source(settings, finding)
        for record in order_records(found, random=draw, trusted_hints=trusted_hints):
            candidate = Candidate(record)
            if candidate.node not in seen:
                seen.add(candidate.node)
                finding.candidates.append(candidate)
    return finding
