"""Discovery, end to end: devices find their node by mDNS and by DNS-SD SRV records, real
nodes announce themselves (`node serve --announce`), a rogue announcer is skipped.

Everything runs inside a private network namespace (tests/support/netns.py): the
multicast stays on its loopback interface. The rogue node R lists the devices and would
customize them; its certificate does not chain to the factory CA, and it announces itself
with a better priority than the genuine node G, so the device tries it first.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from typing import Any

from tests.e2e.device_fixtures import ENV, ztpki
from tests.e2e.discovery_fixtures import (
    GENUINE_HOST,
    ROGUE_HOST,
    DiscoveryWorld,
    discovery_world,
)
from tests.e2e.test_device import ShiftedClock
from tests.support.dns_server import dns_server
from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

from ztpki.demo.processes import ztpki_argv
from ztpki.device import Agent, AgentEvent, DeviceMemory, Phase
from ztpki.device.discovery import DiscoverySettings
from ztpki.device.node_finder import NodeFinder

__all__ = ["discovery_world"]

MDNS_ONLY = ("--no-dns-sd", "--mdns-interface", "127.0.0.1")
DNS_ONLY = ("--no-mdns",)


def agent(dw: DiscoveryWorld, device_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    with dw.ns:
        return ztpki(  # type: ignore[no-any-return]
            "device", "agent", "--device", dw.device(device_id), "--once", "--timeout", "30",
            *args, check=False,
        )  # fmt: skip


def take(dw: DiscoveryWorld, used: set[str] = set()) -> str:
    free = [d for d in dw.world.device_ids if d not in used]
    assert free, "the discovery world has too few devices: raise devices= in its fixture"
    used.add(free[0])
    return free[0]


def untouched_at(dw: DiscoveryWorld, node: str, device_id: str) -> None:
    """The node never saw a request from the device: nothing in its audit, still listed."""
    assert dw.world.audit(device_id, node) == []
    assert dw.world.register(node)[device_id]["state"] == "listed"


def customized_at(dw: DiscoveryWorld, node: str, device_id: str) -> None:
    memory = DeviceMemory.open(dw.world.device(device_id))
    assert memory.phase is Phase.CUSTOMIZED
    assert dw.world.register(node)[device_id]["state"] == "customized"


def test_ok_agent_customizes_by_mdns_with_no_address_and_skips_the_rogue(
    discovery_world: DiscoveryWorld,
) -> None:
    dw, device_id = discovery_world, take(discovery_world)
    result = agent(dw, device_id, *MDNS_ONLY)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    skipped = [x for x in lines if x.startswith("[discover] skipped") and ROGUE_HOST in x]
    chose = [x for x in lines if x.startswith("[discover] chose") and GENUINE_HOST in x]
    assert skipped and "cannot verify" in skipped[0]
    assert chose and lines.index(skipped[0]) < lines.index(chose[0])  # the rogue came first
    customized_at(dw, "G", device_id)
    untouched_at(dw, "R", device_id)
    assert device_id not in dw.world.services["R"].log()  # no request of the device's there
    # A discovered node is not written down: a renewal discovers again.
    assert "node_url" not in DeviceMemory.open(dw.world.device(device_id)).config()


def test_ok_cmp_agent_customizes_at_the_discovered_node(discovery_world: DiscoveryWorld) -> None:
    """The CMP front end sits on the announced listener: a CMP device finds it the same way,
    and connects to the address it was found at."""
    dw, device_id = discovery_world, take(discovery_world)
    result = agent(dw, device_id, *MDNS_ONLY, "--protocol", "cmp")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"[discover] chose https://{GENUINE_HOST}" in result.stdout
    customized_at(dw, "G", device_id)
    untouched_at(dw, "R", device_id)


def test_ok_device_discover_lists_both_and_only_the_genuine_verifies(
    discovery_world: DiscoveryWorld,
) -> None:
    dw, device_id = discovery_world, take(discovery_world)
    with dw.ns:
        result = ztpki("device", "discover", "--device", dw.device(device_id), *MDNS_ONLY,
                       "--json")  # fmt: skip
    found = json.loads(result.stdout)["candidates"]
    by_host = {c["node"].split("//")[1].split(":")[0]: c for c in found}
    assert set(by_host) == {GENUINE_HOST, ROGUE_HOST}
    assert by_host[GENUINE_HOST]["verified"] is True
    assert by_host[ROGUE_HOST]["verified"] is False
    assert by_host[ROGUE_HOST]["priority"] < by_host[GENUINE_HOST]["priority"]
    assert found[0]["node"] == by_host[ROGUE_HOST]["node"]  # priority order
    assert by_host[GENUINE_HOST]["ca_hint"].startswith("sha256:")
    # Looking sent nothing of the device's: neither node heard of it.
    untouched_at(dw, "G", device_id)
    untouched_at(dw, "R", device_id)


def test_ok_agent_customizes_by_dns_sd_srv_records(discovery_world: DiscoveryWorld) -> None:
    dw, device_id = discovery_world, take(discovery_world)
    g, r = (dw.world.services[n].address.rsplit(":", 1)[1] for n in ("G", "R"))
    zone = f"""
_ztpki-est._tcp.site.ztpki.test. 60 IN SRV 0 0 {r} {ROGUE_HOST}.
_ztpki-est._tcp.site.ztpki.test. 60 IN SRV 5 0 {g} {GENUINE_HOST}.
_ztpki-est._tcp.site.ztpki.test. 60 IN TXT "txtvers=1" "path=/.well-known/est"
{ROGUE_HOST}. 60 IN A 127.0.0.1
{GENUINE_HOST}. 60 IN A 127.0.0.1
"""
    with dw.ns, dns_server(zone) as dns:
        result = agent(dw, device_id, *DNS_ONLY, "--search-domain", "site.ztpki.test",
                       "--dns-server", dns.address)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("_ztpki-est._tcp.site.ztpki.test.", "SRV") in dns.resolver.questions
    assert f"[discover] skipped https://{ROGUE_HOST}:{r}" in result.stdout
    assert f"[discover] chose https://{GENUINE_HOST}:{g}" in result.stdout
    customized_at(dw, "G", device_id)
    untouched_at(dw, "R", device_id)


def test_ok_explicit_node_overrides_discovery(discovery_world: DiscoveryWorld) -> None:
    dw, device_id = discovery_world, take(discovery_world)
    result = agent(dw, device_id, "--node", dw.world.node_url, *MDNS_ONLY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[discover]" not in result.stdout
    customized_at(dw, "N", device_id)
    untouched_at(dw, "G", device_id)
    untouched_at(dw, "R", device_id)


def test_ok_set_node_address_overrides_discovery(discovery_world: DiscoveryWorld) -> None:
    dw, device_id = discovery_world, take(discovery_world)
    ztpki("device", "set-node", "--device", dw.device(device_id), dw.world.node_url)
    result = agent(dw, device_id, *MDNS_ONLY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[discover]" not in result.stdout
    customized_at(dw, "N", device_id)
    untouched_at(dw, "G", device_id)


def test_fail_nothing_verifies_the_agent_waits_and_sends_nothing(
    discovery_world: DiscoveryWorld,
) -> None:
    """Under a pin neither node matches: the agent keeps looking, slowly, and neither node
    hears from the device."""
    dw, device_id = discovery_world, take(discovery_world)
    with dw.ns:
        process = subprocess.Popen(
            [*_argv("device", "agent", "--device", dw.device(device_id), *MDNS_ONLY,
                    "--node-ca-fingerprint", "ab" * 32)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("[wait] no customer node verified"):
                break
    finally:
        process.terminate()
        process.communicate(timeout=60)
    skipped = [x for x in lines if x.startswith("[discover] skipped")]
    assert len(skipped) == 2 and all("pin" in x for x in skipped), lines
    delay = float(lines[-1].split("discovering again in ")[1].split(" s")[0])
    assert delay >= 2  # a backoff, never a tight loop
    untouched_at(dw, "G", device_id)
    untouched_at(dw, "R", device_id)
    assert DeviceMemory.open(dw.world.device(device_id)).phase is Phase.TEMPORARY


def test_ok_announcement_withdrawn_when_the_node_stops(discovery_world: DiscoveryWorld) -> None:
    dw = discovery_world
    seen = threading.Condition()
    events: list[tuple[str, ServiceStateChange]] = []

    def changed(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        with seen:
            events.append((name, state_change))
            seen.notify_all()

    def wait_for(port: str, change: ServiceStateChange) -> None:
        """Until both services of the node on ``port`` (EST and CMP) saw ``change``."""

        def both() -> bool:
            return {n.split(".", 1)[1] for n, c in events if f" {port}." in n and c is change} == {
                "_ztpki-est._tcp.local.",
                "_ztpki-cmp._tcp.local.",
            }

        with seen:
            assert seen.wait_for(both, timeout=30), events

    with dw.ns:
        zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            types = ["_ztpki-est._tcp.local.", "_ztpki-cmp._tcp.local."]
            browser = ServiceBrowser(zc, types, handlers=[changed])
            service = dw.world.start(
                "X", "node", "serve", "--dir", str(dw.world.path("G")), "--listen",
                "127.0.0.1:0", "--workers", "1", "--announce",
            )  # fmt: skip
            port = service.address.rsplit(":", 1)[1]
            wait_for(port, ServiceStateChange.Added)
            dw.world.stop("X")
            wait_for(port, ServiceStateChange.Removed)  # the goodbye, not a cache expiry
            browser.cancel()
        finally:
            zc.close()
    # The genuine node G runs two workers and is announced once.
    g_port = dw.world.services["G"].address.rsplit(":", 1)[1]
    instance = f"ztpki node {GENUINE_HOST.replace('.', '-')} {g_port}"
    assert {n for n, _ in events if f" {g_port}." in n} == {
        f"{instance}._ztpki-est._tcp.local.",
        f"{instance}._ztpki-cmp._tcp.local.",
    }


def _argv(*args: str) -> list[str]:
    return ztpki_argv(*args)


def _env() -> dict[str, Any]:
    return {**os.environ, **ENV}


def test_ok_renewal_discovers_the_node_again(discovery_world: DiscoveryWorld) -> None:
    """Nothing was written down at customization: the renewal due later finds the node anew
    (skipping the rogue again) and renews there."""
    dw, device_id = discovery_world, take(discovery_world)
    memory = DeviceMemory.open(dw.world.device(device_id))
    events: list[AgentEvent] = []
    settings = DiscoverySettings(unicast=False, mdns_interfaces=("127.0.0.1",))

    def finder() -> NodeFinder:
        return NodeFinder(settings, report=lambda text: events.append(AgentEvent("d", text)))

    with dw.ns:
        first = asyncio.run(Agent(memory, finder=finder(), timeout=30).run(once=True))
        assert first is not None and first.action == "activated"
        cert = memory.identity().certificate
        assert cert is not None
        due = (
            cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) * 0.7
        )
        events.clear()
        later = Agent(memory, clock=ShiftedClock(due), finder=finder(), timeout=30)
        renewed = asyncio.run(later.run(once=True))
    assert renewed is not None and renewed.action == "renewed"
    assert any(e.message.startswith(f"skipped https://{ROGUE_HOST}") for e in events)
    assert any(e.message.startswith(f"chose https://{GENUINE_HOST}") for e in events)
    assert dw.world.active(device_id) == [renewed.serial]
    assert "node_url" not in memory.config()
    untouched_at(dw, "R", device_id)
