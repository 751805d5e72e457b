"""`node serve --announce`: the node's EST and CMP services announced by DNS-SD over mDNS
(RFC 6762/6763), one instance each (``_ztpki-est._tcp``, ``_ztpki-cmp._tcp``).

The announcement (python-zeroconf) names the node by a host name its server certificate
carries (``--announce-host``, default: the certificate's first DNS name), because a device
verifies the node's certificate for the name it was given, exactly as for ``--node``. It
gives the addresses the node listens on (every interface's for a wildcard listen address),
and the TXT record of :mod:`ztpki.protocol.dnssd`: the service's path and the fingerprint of the
CA at the top of the chain the node sends (a hint for devices, never their trust).

mDNS is sent only on the interfaces of those addresses, so a node listening on 127.0.0.1
announces on the loopback interface alone. The announcement is withdrawn (goodbye packets,
TTL 0) when the node stops. One process announces: the node itself, or the supervisor of
its workers.

zeroconf runs its own event loop thread; it is started and stopped from a plain thread so
that it never shares (or blocks) the node's event loop.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import ifaddr
from cryptography import x509
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from ztpki.errors import ConfigurationError
from ztpki.pki.pem import fingerprint_sha256
from ztpki.protocol.dnssd import SERVICE_TYPES, encode_txt

__all__ = ["Announcement", "Announcer", "announcement_for"]

log = logging.getLogger(__name__)

MDNS_DOMAIN = "local."


@dataclass(frozen=True)
class Announcement:
    """What the node announces: service ``kind``, the ``host`` name devices verify, the
    ``addresses`` and ``port`` they connect to, the EST ``label`` and the CA hint."""

    kind: str
    host: str
    addresses: tuple[str, ...]
    port: int
    label: str | None
    ca_fingerprint: str | None
    priority: int = 0

    @property
    def service_type(self) -> str:
        return f"{SERVICE_TYPES[self.kind]}.{MDNS_DOMAIN}"

    @property
    def instance(self) -> str:
        label = f" {self.label}" if self.label else ""
        # Instance names are free text (RFC 6763 section 4.1.1); dots would split it.
        shown = f"ztpki node {self.host}{label} {self.port}".replace(".", "-")
        return f"{shown}.{self.service_type}"


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n for n in san.get_values_for_type(x509.DNSName) if "*" not in n]


def _listen_addresses(host: str) -> tuple[str, ...]:
    """The addresses a node listening on ``host`` can be reached at (IPv4)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return tuple(
            sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, socket.AF_INET)})
        )
    if not address.is_unspecified:
        return (str(address),)
    found = {
        str(ip.ip)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback
    }
    if not found:
        raise ConfigurationError(
            f"the node listens on {host}, but no interface has an IPv4 address to announce"
        )
    return tuple(sorted(found))


def announcement_for(
    server_chain: Sequence[x509.Certificate],
    *,
    listen_host: str,
    port: int,
    host: str | None = None,
    label: str | None = None,
    kind: str = "est",
    priority: int = 0,
) -> Announcement:
    """The announcement of a node with this server chain, listening on ``listen_host``."""
    leaf = server_chain[0]
    names = _dns_names(leaf)
    if host is None:
        if not names:
            raise ConfigurationError(
                "--announce needs a DNS name in the node's server certificate (devices verify "
                "the node for the announced name): give --announce-host NAME of the certificate, "
                "or request the certificate again with --dns NAME"
            )
        host = names[0]
    elif host.lower() not in {n.lower() for n in names}:
        shown = ", ".join(names) or "none"
        raise ConfigurationError(
            f"--announce-host {host[:100]!r} is not a DNS name of the node's server certificate "
            f"(it names: {shown}); devices would refuse the node"
        )
    top = server_chain[-1] if len(server_chain) > 1 else None
    return Announcement(
        kind=kind,
        host=host,
        addresses=_listen_addresses(listen_host),
        port=port,
        label=label,
        ca_fingerprint=fingerprint_sha256(top) if top is not None else None,
        priority=priority,
    )


class Announcer:
    """Announces its :class:`Announcement` s (one per service) from ``start()`` until
    ``close()``, all from one zeroconf instance."""

    def __init__(self, announcements: Sequence[Announcement]) -> None:
        if not announcements:
            raise ValueError("nothing to announce")
        self.announcements = tuple(announcements)
        self._zeroconf: Zeroconf | None = None
        self._infos: list[ServiceInfo] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @staticmethod
    def _service_info(a: Announcement) -> ServiceInfo:
        return ServiceInfo(
            a.service_type,
            a.instance,
            port=a.port,
            priority=a.priority,
            properties=encode_txt(label=a.label, ca_fingerprint=a.ca_fingerprint, kind=a.kind),
            server=f"{a.host.rstrip('.')}.",
            parsed_addresses=list(a.addresses),
        )

    def _register(self) -> None:
        first = self.announcements[0]
        try:
            # Only the interfaces of the announced addresses: a node on 127.0.0.1 multicasts
            # on the loopback interface alone.
            self._zeroconf = Zeroconf(interfaces=list(first.addresses), ip_version=IPVersion.V4Only)
            for a in self.announcements:
                info = self._service_info(a)
                # The name is ours alone (host and port): no renaming on a conflict.
                self._zeroconf.register_service(info, allow_name_change=False)
                self._infos.append(info)
        except Exception as exc:  # zeroconf's errors carry no secret; the node keeps serving
            self._error = exc
            log.warning("cannot announce the node by mDNS: %s", exc)
            return
        log.info(
            "announcing %s at %s:%d (%s) by mDNS",
            ", ".join(a.service_type for a in self.announcements),
            first.host,
            first.port,
            ", ".join(first.addresses),
        )

    def start(self) -> None:
        """Announce, without blocking the caller (probing takes about a second)."""
        self._thread = threading.Thread(target=self._register, name="ztpki-announce", daemon=True)
        self._thread.start()

    def wait_started(self, timeout: float = 30.0) -> bool:
        """True once announced (False if announcing failed or took longer than ``timeout``)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return len(self._infos) == len(self.announcements) and self._error is None

    def close(self) -> None:
        """Withdraw the announcements (goodbye packets) and stop zeroconf."""
        if self._thread is not None:
            self._thread.join(30)
        zc, infos = self._zeroconf, self._infos
        self._zeroconf, self._infos = None, []
        if zc is None:
            return
        try:
            for info in infos:
                zc.unregister_service(info)
                log.info("withdrew the mDNS announcement of %s", info.name)
        finally:
            zc.close()
