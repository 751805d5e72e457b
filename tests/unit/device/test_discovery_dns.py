"""Unicast DNS-SD lookups against a real DNS server on loopback (dnslib): what becomes a
candidate, in which order, and what is skipped with a note."""

from __future__ import annotations

import asyncio

from tests.support.dns_server import dns_server

from ztpki.device.discovery import DiscoverySettings, find_candidates

NAME = "_ztpki-est._tcp.site.example."


def settings(port: int, *domains: str) -> DiscoverySettings:
    return DiscoverySettings(
        mdns=False, search_domains=domains or ("site.example",), dns_servers=(("127.0.0.1", port),)
    )


def test_ok_srv_records_in_priority_order_with_txt_and_addresses() -> None:
    zone = f"""
{NAME} 60 IN SRV 20 0 8443 backup.site.example.
{NAME} 60 IN SRV 10 0 8443 est.site.example.
{NAME} 60 IN SRV 30 0 8443 nowhere.site.example.
{NAME} 60 IN TXT "txtvers=1" "path=/.well-known/est/fleet" "ca=sha256:{"ab" * 32}"
est.site.example. 60 IN A 10.0.0.7
backup.site.example. 60 IN A 10.0.0.8
backup.site.example. 60 IN AAAA 2001:db8::8
"""
    with dns_server(zone) as dns:
        finding = asyncio.run(find_candidates(settings(dns.port)))
    nodes = [c.node for c in finding.candidates]
    assert [(n.host, n.label) for n in nodes] == [
        ("est.site.example", "fleet"),
        ("backup.site.example", "fleet"),
    ]
    assert nodes[0].addresses == ("10.0.0.7",)
    assert nodes[1].addresses == ("10.0.0.8", "2001:db8::8")
    assert finding.candidates[0].record.ca_hint == "ab" * 32
    # A target without an address is no candidate, and says so.
    assert finding.problems == ["DNS: nowhere.site.example has no address record"]


def test_ok_no_service_in_a_domain_and_a_dot_target_give_nothing() -> None:
    zone = f"""
{NAME} 60 IN SRV 0 0 0 .
_ztpki-est._tcp.other.example. 60 IN TXT "txtvers=1"
"""
    with dns_server(zone) as dns:
        finding = asyncio.run(find_candidates(settings(dns.port, "site.example", "none.example")))
        asked = list(dns.resolver.questions)
    assert finding.candidates == [] and finding.problems == []
    assert (NAME, "SRV") in asked and ("_ztpki-est._tcp.none.example.", "SRV") in asked


def test_fail_bad_txt_skips_the_domain_with_a_note() -> None:
    zone = f"""
{NAME} 60 IN SRV 0 0 8443 est.site.example.
{NAME} 60 IN TXT "txtvers=1" "path=/cgi-bin/est"
est.site.example. 60 IN A 10.0.0.7
"""
    with dns_server(zone) as dns:
        finding = asyncio.run(find_candidates(settings(dns.port)))
    assert finding.candidates == []
    assert finding.problems == [
        f"DNS: skipped {NAME}: TXT path '/cgi-bin/est' is not under /.well-known/est"
    ]


def test_fail_unreachable_dns_server_is_a_note_not_a_crash() -> None:
    with dns_server("") as dns:
        port = dns.port
    unreachable = DiscoverySettings(
        mdns=False, search_domains=("site.example",), dns_servers=(("127.0.0.1", port),),
        timeout=1.0,
    )  # fmt: skip
    finding = asyncio.run(find_candidates(unreachable))
    assert finding.candidates == []
    assert len(finding.problems) == 1 and finding.problems[0].startswith("DNS: cannot look up")
