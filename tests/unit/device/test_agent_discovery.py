"""The agent with no node address: it asks its finder, backs off between rounds that find
nothing, lets an address set meanwhile win, and leaves out a discovered node that refused it.

The finder here stands for DNS-SD (tested end to end in tests/e2e/test_device_discovery.py);
the nodes and the clock are the unit suite's fakes, so nothing waits for real time.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.unit.device.fake_node import Pki, serving
from tests.unit.device.test_activation_agent import FakeClock, Stop, agent, memory, pki

from ztpki.device import AgentEvent, Backoff, DeviceMemory, Phase
from ztpki.device.communication import NodeAddress
from ztpki.device.customer_node import NodePin

__all__ = ["memory", "pki"]  # the fixtures, shared with the agent's other tests


class ScriptedFinder:
    """Answers each round with the next of ``rounds`` (None: nothing verified)."""

    def __init__(self, *rounds: NodeAddress | None) -> None:
        self.rounds = list(rounds)
        self.asked = 0
        self.left_out: list[NodeAddress] = []

    async def choose(
        self, memory: DeviceMemory, pin: NodePin | None, *, now: object, timeout: float
    ) -> NodeAddress | None:
        self.asked += 1
        found = self.rounds.pop(0) if self.rounds else None
        return None if found in self.left_out else found

    def refused(self, node: NodeAddress, why: str) -> None:
        self.left_out.append(node)


def discovering(memory: DeviceMemory, clock: FakeClock, events: list[AgentEvent], finder: object):  # type: ignore[no-untyped-def]
    return agent(memory, clock, events, finder=finder, discovery_backoff=Backoff(base=4, cap=64))


def test_ok_rounds_without_a_node_back_off_then_the_found_node_customizes(
    pki: Pki, memory: DeviceMemory
) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as node:
            finder = ScriptedFinder(None, None, None, NodeAddress.parse(node.url))
            start = clock.now()
            result = await discovering(memory, clock, events, finder).run(once=True)
            assert result is not None and result.action == "activated"
            assert finder.asked == 4
            # Rounds 1-3 found nothing: the next came after 2, 4 and 8 s (equal jitter 0).
            waited = (clock.now() - start).total_seconds()
            assert waited >= 2 + 4 + 8
            assert max(clock.sleeps) <= 0.25  # the agent kept watching the configuration
            assert node.registers["ACME-0001"].state == "customized"

    asyncio.run(scenario())
    waits = [e.message for e in events if e.kind == "wait"]
    assert [w.split(" in ")[1].split(" s")[0] for w in waits] == ["2", "4", "8"]
    # Found, not configured: the configuration names no node, a renewal discovers again.
    assert "node_url" not in memory.config()
    assert memory.phase is Phase.CUSTOMIZED


def test_ok_an_address_set_while_discovering_wins(pki: Pki, memory: DeviceMemory) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as node, serving(pki) as other:
            finder = ScriptedFinder(None, NodeAddress.parse(other.url))

            async def installer(count: int) -> None:
                if count == 2:
                    memory.update_config(node_url=node.url)

            clock.on_sleep = installer
            result = await discovering(memory, clock, events, finder).run(once=True)
            assert result is not None
            assert finder.asked == 1
            assert other.calls == []
            assert node.registers["ACME-0001"].state == "customized"

    asyncio.run(scenario())
    assert memory.config()["node_url"].startswith("https://127.0.0.1:")


def test_ok_a_discovered_node_that_refuses_is_left_out(pki: Pki, memory: DeviceMemory) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as foreign, serving(pki) as ours:
            foreign.register("ACME-0001").state = "blocked"  # another customer's register
            first, second = NodeAddress.parse(foreign.url), NodeAddress.parse(ours.url)
            finder = ScriptedFinder(first, first, second)
            result = await discovering(memory, clock, events, finder).run(once=True)
            assert result is not None and result.action == "activated"
            assert finder.left_out == [first]
            # One enrollment there, never a second.
            assert [c[0] for c in foreign.calls] == ["cacerts", "serverkeygen"]
            assert ours.registers["ACME-0001"].state == "customized"

    asyncio.run(scenario())
    assert any(e.kind == "discover" and "refused the device" in e.message for e in events)
    assert not any(e.kind == "stop" for e in events)


def test_fail_without_a_finder_the_agent_only_waits(pki: Pki, memory: DeviceMemory) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def stop_after(count: int) -> None:
        if count == 20:
            raise Stop

    clock.on_sleep = stop_after
    with pytest.raises(Stop):
        asyncio.run(agent(memory, clock, events).run(once=True))
    assert not any(e.kind == "discover" for e in events)
    assert memory.phase is Phase.TEMPORARY
