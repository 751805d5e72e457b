"""A DNS server on 127.0.0.1 for tests and the demo's fleet: dnslib answering from a zone
given as text (RFC 1035 master-file lines), UDP and TCP on one free port."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from dnslib import QTYPE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """Answers what the zone holds for the name and type asked, NXDOMAIN for unknown names,
    and records every question (so a test can tell the device asked)."""

    def __init__(self, zone: str) -> None:
        self.records = RR.fromZone(zone)
        self.questions: list[tuple[str, str]] = []

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname, qtype = request.q.qname, QTYPE[request.q.qtype]
        self.questions.append((str(qname), qtype))
        known = False
        for record in self.records:
            if record.rname == qname:
                known = True
                if QTYPE[record.rtype] == qtype or qtype == "ANY":
                    reply.add_answer(record)
        if not known:
            reply.header.rcode = 3  # NXDOMAIN
        return reply


@dataclass
class RunningDNS:
    port: int
    resolver: ZoneResolver
    servers: list[DNSServer] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _free_port() -> int:
    # One port free for both UDP and TCP: bind UDP first, then check TCP.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def dns_server(zone: str) -> Iterator[RunningDNS]:
    """Serve ``zone`` on 127.0.0.1 (UDP and TCP) until the block ends."""
    resolver = ZoneResolver(zone)
    port = _free_port()
    running = RunningDNS(port, resolver)
    for tcp in (False, True):
        server = DNSServer(resolver, port=port, address="127.0.0.1", tcp=tcp, logger=_Quiet())
        server.start_thread()
        running.servers.append(server)
    try:
        yield running
    finally:
        for server in running.servers:
            server.stop()


class _Quiet:
    """dnslib's logger interface, saying nothing (tests read ``questions`` instead)."""

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None
