"""The demo site's DNS: part of the fleet finds the node by DNS-SD, with nobody typing an address.

A tiny authoritative DNS server on 127.0.0.1 (dnspython messages over UDP, in a thread)
holds what a site operator publishes for routed networks: the SRV and TXT records of
``_ztpki-est._tcp.SITE`` pointing at the node's host name, and that name's address. The demo
multicasts nothing: mDNS is the tests' (inside network namespaces of their own).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ztpki.device.discovery import DiscoverySettings
from ztpki.protocol.dnssd import encode_txt, service_name

__all__ = ["SITE_DOMAIN", "SiteDNS"]

SITE_DOMAIN = "demo.ztpki.test"
TTL = 60


@dataclass
class SiteDNS:
    """Serves the SRV/TXT/A records of one node at ``host``:``port`` until ``stop()``."""

    host: str
    port: int
    address: str = "127.0.0.1"
    questions: int = 0
    _socket: socket.socket | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)

    def records(self) -> dict[tuple[str, int], list[str]]:
        service = service_name("est", SITE_DOMAIN)
        txt = " ".join(f'"{k}={v}"' for k, v in encode_txt(label=None, ca_fingerprint=None).items())
        return {
            (service, dns.rdatatype.SRV): [f"0 0 {self.port} {self.host}."],
            (service, dns.rdatatype.TXT): [txt],
            (f"{self.host}.", dns.rdatatype.A): [self.address],
        }

    def start(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)  # how soon stop() is noticed
        self._thread = threading.Thread(target=self._serve, name="demo-site-dns", daemon=True)
        self._thread.start()

    @property
    def server(self) -> tuple[str, int]:
        assert self._socket is not None
        return "127.0.0.1", int(self._socket.getsockname()[1])

    def settings(self) -> DiscoverySettings:
        """What a device of the site is told by its network: the search domain and DNS."""
        return DiscoverySettings(
            mdns=False, search_domains=(SITE_DOMAIN,), dns_servers=(self.server,)
        )

    def _answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # anything that is not a DNS query is dropped, as servers do
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        known = self.records()
        for question in query.question:
            texts = known.get((question.name.to_text(), question.rdtype))
            if texts:
                reply.answer.append(
                    dns.rrset.from_text_list(
                        question.name, TTL, dns.rdataclass.IN, question.rdtype, texts
                    )
                )
            elif not any(name == question.name.to_text() for name, _ in known):
                reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply.to_wire()

    def _serve(self) -> None:
        sock = self._socket
        assert sock is not None
        while not self._stopping.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.questions += 1
            answer = self._answer(wire)
            if answer is not None:
                sock.sendto(answer, peer)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._socket is not None:
            self._socket.close()
