"""Discovery attacks: whoever can publish a DNS-SD record (an announcer on the link, a DNS
entry) can make a device look at a node; only a node that passes the device's own
verification ever sees the temporary certificate.

Records are served by a DNS server on loopback (dnslib; unicast DNS-SD, so nothing is
multicast). The rogue node is a TLS server with a certificate for the same host name from
a CA of the attacker's, which records every TLS handshake: how it ended, and whether the
client presented a certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from tests.attacks.attack_deployment import Deployment, DeviceUnderTest, now
from tests.attacks.attack_report import AttackReport
from tests.support.dns_server import dns_server
from tests.support.threaded_server import threaded_tls_server

from ztpki.credentials import server_context
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import fingerprint_sha256, serial_hex
from ztpki.pki.profiles import CertificateProfile

pytestmark = pytest.mark.timeout(240)

CATEGORY = "discovery"
HOST = "localhost"  # the real node's certificate names it
DOMAIN = "site.attack.test"


@dataclass
class RogueAnnouncer:
    port: int = 0
    handshakes: list[list[Any]] = field(default_factory=list)  # [outcome, client cert]
    requests: list[str] = field(default_factory=list)

    def summary(self) -> str:
        shown = "; ".join(
            f"{outcome} ({'with' if cert else 'without'} a client certificate)"
            for outcome, cert in self.handshakes
        )
        return f"the rogue saw {len(self.handshakes)} handshake(s): {shown or 'none'}"


@contextlib.contextmanager
def rogue_announcer() -> Iterator[RogueAnnouncer]:
    """A TLS server for ``localhost`` with a certificate of the attacker's own CA."""
    subject = build_subject("Rogue Node CA", SubjectFields(), serial_number=None)
    ca_key = generate_private_key(KeySpec.EC_P256)
    ca_cert = create_self_signed_ca(ca_key, subject, now=now(), validity=timedelta(days=30))
    ca = CertificateAuthority("rogue", ca_key, ca_cert)
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject(HOST, SubjectFields(), serial_number=None),
        profile=CertificateProfile.SERVER,
        not_before=now() - timedelta(minutes=1),
        not_after=now() + timedelta(days=7),
        dns_names=(HOST,),
        ip_addresses=("127.0.0.1",),
    )
    leaf = ca.issue(key.public_key(), grant)
    # It asks for a client certificate and accepts any: it wants the device's.
    context = server_context(key, [leaf, ca_cert], client_anchors=[ca_cert],
                             require_client_cert=False)  # fmt: skip
    rogue = RogueAnnouncer()

    class Recording(ssl.SSLObject):
        """Each handshake's fate: one left "unfinished" got no further than the rogue's own
        flight (a client certificate would have come with the client's last one)."""

        def do_handshake(self) -> None:
            if not hasattr(self, "entry"):
                self.entry = ["unfinished", False]
                rogue.handshakes.append(self.entry)
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                self.entry[:] = [f"aborted: {exc.reason}", bool(self._cert())]
                raise
            self.entry[:] = ["completed", bool(self._cert())]

        def _cert(self) -> bytes | None:
            with contextlib.suppress(ValueError, ssl.SSLError):
                return self.getpeercert(binary_form=True)
            return None

    context.sslobject_class = Recording

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ssl.SSLError, ConnectionError):
            head = await reader.readuntil(b"\r\n\r\n")
            rogue.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
            writer.write(b"HTTP/1.1 500 Rogue\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    with threaded_tls_server(answer, context) as port:
        rogue.port = port
        yield rogue


def _zone(srv: list[tuple[int, int]], txt: str) -> str:
    """SRV records (priority, port) for ``localhost`` under DOMAIN, one TXT record."""
    name = f"_ztpki-est._tcp.{DOMAIN}."
    lines = [f"{name} 60 IN SRV {priority} 0 {port} {HOST}." for priority, port in srv]
    lines += [f"{name} 60 IN TXT {txt}", f"{HOST}. 60 IN A 127.0.0.1"]
    return "\n".join(lines) + "\n"


def _discovering(d: Deployment, device: DeviceUnderTest, command: str, dns: str) -> tuple[int, str]:
    result = d.cli("device", command, "--device", str(device.path), "--no-mdns",
                   "--search-domain", DOMAIN, "--dns-server", dns, "--timeout", "30",
                   *(["--once"] if command == "agent" else []), check=False)  # fmt: skip
    return result.status, result.out + result.err


def test_fail_rogue_announcer_first_in_srv_order(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """The rogue's SRV record has the better priority: the device tries it first, aborts the
    handshake at its certificate, and customizes at the real node."""
    d = deployment
    device = d.take_device()
    node_port = int(d.node.address.rsplit(":", 1)[1])
    with rogue_announcer() as rogue:
        zone = _zone([(0, rogue.port), (10, node_port)], '"txtvers=1" "path=/.well-known/est"')
        with dns_server(zone) as dns:
            status, said = _discovering(d, device, "agent", dns.address)
    assert status == 0, said
    assert f"skipped https://{HOST}:{rogue.port}" in said
    assert f"chose https://{HOST}:{node_port}" in said
    assert said.index(f"skipped https://{HOST}:{rogue.port}") < said.index("chose")
    # The device looked at the rogue once, without its certificate, and stopped at the
    # rogue's certificate: not one HTTP request, not one client certificate.
    assert rogue.handshakes and all(not cert for _, cert in rogue.handshakes), rogue.handshakes
    assert all(outcome != "completed" for outcome, _ in rogue.handshakes)
    assert rogue.requests == []
    assert d.live_serials("customer", device.device_id) == [serial_hex(device.certificate)]
    d.served.append(device.device_id)
    attack_report.record(
        case=f"{CATEGORY}/rogue-announcer-first-in-srv-order",
        category=CATEGORY,
        attack="a DNS-SD SRV record with the best priority points the device's agent (no node "
        "address given) at a rogue TLS server for the same host name, whose certificate comes "
        "from the attacker's CA; a worse-priority record points at the real node",
        observed=f"the agent skipped the rogue ('does not verify'), {rogue.summary()}, no HTTP "
        "request; it chose the real node and customized there (one live certificate)",
        verdict="refused",
    )


def test_fail_rogue_txt_claims_the_devices_own_ca(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """The TXT record names the factory CA the device trusts: a hint, not a trust."""
    d = deployment
    device = d.take_device()
    claimed = fingerprint_sha256(d.node_anchors[0])
    before = d.snapshot()
    with rogue_announcer() as rogue:
        zone = _zone(
            [(0, rogue.port)], f'"txtvers=1" "path=/.well-known/est" "ca=sha256:{claimed}"'
        )
        with dns_server(zone) as dns:
            status, said = _discovering(d, device, "discover", dns.address)
    assert status == 1, said
    assert "does not verify" in said and "cannot verify" in said
    assert all(not cert for _, cert in rogue.handshakes) and rogue.requests == []
    assert device.memory().phase.value == "temporary"
    checked = d.check_unchanged(before, unaudited_because="the device never reached a node")
    attack_report.record(
        case=f"{CATEGORY}/txt-hint-claims-the-factory-ca",
        category=CATEGORY,
        attack="the only DNS-SD record points at a rogue node, its TXT record giving the "
        "fingerprint of the device's own factory CA (ca=sha256:...)",
        observed=f"`ztpki device discover` reports it as not verifying and exits 1; "
        f"{rogue.summary()}; {checked}",
        verdict="refused",
    )


def test_fail_malformed_dns_sd_records(deployment: Deployment, attack_report: AttackReport) -> None:
    """A TXT path outside /.well-known/est, or a txtvers the device does not know, makes the
    record unusable: skipped with a note, nothing sent anywhere."""
    d = deployment
    device = d.take_device()
    node_port = int(d.node.address.rsplit(":", 1)[1])
    before = d.snapshot()
    notes = []
    for txt in ('"txtvers=1" "path=/admin/../../etc"', '"txtvers=9" "path=/.well-known/est"'):
        with dns_server(_zone([(0, node_port)], txt)) as dns:
            status, said = _discovering(d, device, "discover", dns.address)
        assert status == 1, said
        assert f"skipped _ztpki-est._tcp.{DOMAIN}." in said, said
        notes.append(said.split("skipped", 1)[1].split("\n", 1)[0].strip())
    checked = d.check_unchanged(before, unaudited_because="no record was usable")
    attack_report.record(
        case=f"{CATEGORY}/malformed-dns-sd-records",
        category=CATEGORY,
        attack="DNS-SD records for the real node whose TXT gives path=/admin/../../etc, or "
        "txtvers=9",
        observed="each record skipped: " + "; ".join(notes) + f"; no candidate tried; {checked}",
        verdict="refused",
    )
