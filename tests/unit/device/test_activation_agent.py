"""Agent mode driven by a fake clock: no test waits for real time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.unit.device.fake_node import FakeNode, Pki, serving

from ztpki.device import Agent, AgentEvent, AgentStopped, Backoff, DeviceMemory, Phase
from ztpki.device.communication import NodeAddress


class Stop(Exception):
    """Raised from the fake clock to end an agent that would run forever."""


class FakeClock:
    """``sleep`` returns at once and moves ``now`` forward; ``on_sleep`` runs after it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.at = start or datetime.now(UTC)
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[int], Awaitable[None]] | None = None

    def now(self) -> datetime:
        return self.at

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.at += timedelta(seconds=seconds)
        if self.on_sleep is not None:
            await self.on_sleep(len(self.sleeps))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture
def memory(pki: Pki, tmp_path: Path) -> DeviceMemory:
    return pki.manufacture(tmp_path / "dev", "ACME-0001")


def agent(memory: DeviceMemory, clock: FakeClock, events: list[AgentEvent], **kw: object) -> Agent:
    return Agent(
        memory,
        clock=clock,
        report=events.append,
        jitter=lambda: 0.0,
        backoff=Backoff(base=1.0, cap=8.0),
        poll_interval=0.25,
        timeout=5,
        **kw,  # type: ignore[arg-type]
    )


def test_ok_agent_waits_for_an_address_written_while_it_runs(
    pki: Pki, memory: DeviceMemory
) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as node:

            async def installer(count: int) -> None:
                assert node.calls == []  # nothing happens without an address
                if count == 3:
                    memory.update_config(node_url=node.url)

            clock.on_sleep = installer
            result = await agent(memory, clock, events).run(once=True)
            assert result is not None and result.action == "activated"
            assert node.registers["ACME-0001"].state == "customized"

    asyncio.run(scenario())
    assert clock.sleeps == [0.25, 0.25, 0.25]
    assert [e.kind for e in events].count("wait") == 1
    assert memory.phase is Phase.CUSTOMIZED


def test_ok_agent_reports_an_unusable_address_and_keeps_waiting(
    pki: Pki, memory: DeviceMemory
) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as node:

            async def installer(count: int) -> None:
                if count == 1:
                    memory.update_config(node_url="http://plain-http")
                if count == 2:
                    memory.update_config(node_url=node.url)

            clock.on_sleep = installer
            await agent(memory, clock, events).run(once=True)

    asyncio.run(scenario())
    assert any("unusable" in e.message for e in events)
    assert memory.phase is Phase.CUSTOMIZED


def test_ok_agent_retries_5xx_honouring_retry_after(pki: Pki, memory: DeviceMemory) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> FakeNode:
        async with serving(pki) as node:
            node.queued += [(503, {"Retry-After": "30"}, b"busy")] * 2
            node.queued.append((500, {}, b"oops"))
            address = NodeAddress.parse(node.url)
            result = await agent(memory, clock, events, node=address).run(once=True)
            assert result is not None and result.action == "activated"
            return node

    asyncio.run(scenario())
    # Retry-After wins over the short backoff; without it, the backoff (attempt 2: 2 s).
    assert clock.sleeps == [30, 30, 2.0]
    assert [e.kind for e in events].count("retry") == 3


def test_ok_agent_backs_off_exponentially_while_the_node_is_down(
    pki: Pki, memory: DeviceMemory
) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def down_port() -> int:
        async with serving(pki) as node:
            return node.port

    port = asyncio.run(down_port())

    async def give_up(count: int) -> None:
        if count == 6:
            raise Stop

    clock.on_sleep = give_up
    with pytest.raises(Stop):
        asyncio.run(
            agent(memory, clock, events, node=NodeAddress("127.0.0.1", port)).run(once=True)
        )
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert memory.phase is Phase.TEMPORARY


def test_fail_agent_stops_on_refusal(pki: Pki, memory: DeviceMemory) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as node:
            node.register("ACME-0001").state = "blocked"
            address = NodeAddress.parse(node.url)
            with pytest.raises(AgentStopped) as info:
                await agent(memory, clock, events, node=address).run()
            assert info.value.exit_code == 3
            assert "blocked in the customer register" in info.value.message

    asyncio.run(scenario())
    assert clock.sleeps == []
    assert events[-1].kind == "stop"


def test_ok_agent_renews_once_two_thirds_of_the_validity_passed(
    pki: Pki, memory: DeviceMemory
) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as node:
            memory.update_config(node_url=node.url)
            first = await agent(memory, clock, events).run(once=True)
            assert first is not None
            cert = memory.identity().certificate
            assert cert is not None
            start, life = (
                cert.not_valid_before_utc,
                cert.not_valid_after_utc - cert.not_valid_before_utc,
            )
            clock.at = start + life * 0.6  # control: not yet due
            assert await agent(memory, clock, events).run(once=True) is None
            assert "simplereenroll" not in [c[0] for c in node.calls]
            clock.at = start + life * 0.7
            renewed = await agent(memory, clock, events).run(once=True)
            assert renewed is not None and renewed.action == "renewed"
            assert renewed.serial != first.serial
            assert node.calls[-2] == ("simplereenroll", "ACME-0001", first.serial)
            assert node.registers["ACME-0001"].live == {renewed.serial}

    asyncio.run(scenario())


def test_ok_agent_sleeps_until_renewal_is_due(pki: Pki, memory: DeviceMemory) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as node:

            async def stop_after_renewal(count: int) -> None:
                if [e.kind for e in events].count("done") >= 2:
                    raise Stop

            clock.on_sleep = stop_after_renewal
            runner = agent(memory, clock, events, node=NodeAddress.parse(node.url))
            with pytest.raises(Stop):
                await runner.run()
            assert [c[0] for c in node.calls].count("simplereenroll") == 1

    asyncio.run(scenario())
    kinds = [e.kind for e in events]
    assert kinds.index("schedule") < kinds.index("done", kinds.index("schedule"))
    # It slept in chunks of at most an hour until two thirds of ten days had passed.
    assert max(clock.sleeps) <= 3600
    assert sum(clock.sleeps) >= timedelta(days=10).total_seconds() * 2 / 3 - 600


def test_ok_agent_retries_a_garbage_answer_slowly_instead_of_stopping(
    pki: Pki, memory: DeviceMemory
) -> None:
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as node:
            node.tamper = "garbage"

            async def node_fixed(count: int) -> None:
                node.tamper = None

            clock.on_sleep = node_fixed
            slow = Backoff(base=2.0, cap=60.0)
            runner = agent(
                memory, clock, events, node=NodeAddress.parse(node.url), slow_backoff=slow
            )
            result = await runner.run(once=True)
            assert result is not None and result.action == "activated"

    asyncio.run(scenario())
    # Slow backoff, attempt 0, no jitter: 1 s, waited in polls of the configuration.
    assert clock.sleeps == [0.25, 0.25, 0.25, 0.25]
    retry = next(e.message for e in events if e.kind == "retry")
    assert "not EST" in retry or "unusable" in retry
    assert "needs attention" in retry
    assert memory.phase is Phase.CUSTOMIZED


def test_ok_slow_backoff_starts_afresh_after_a_run_of_network_errors(
    pki: Pki, memory: DeviceMemory
) -> None:
    """Four 503s, then a 404 (wrong label), then success: the first slow wait is the slow
    backoff's first step, not its fifth (the fast attempts are not counted against it)."""
    clock, events = FakeClock(), list[AgentEvent]()

    async def scenario() -> None:
        async with serving(pki) as node:
            node.queued.extend([(503, {"Retry-After": "0"}, b"busy")] * 4)
            node.queued.append((404, {}, b"no such label"))
            slow = Backoff(base=2.0, cap=64.0)
            runner = agent(
                memory, clock, events, node=NodeAddress.parse(node.url), slow_backoff=slow
            )
            result = await runner.run(once=True)
            assert result is not None and result.action == "activated"

    asyncio.run(scenario())
    # Fast backoff 0.5, 1, 2, 4 s (no jitter: half the ceiling); then the slow one's first
    # step, 1 s, in polls of 0.25 s (counted on from the fast attempts it would be 16 s).
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 0.25, 0.25, 0.25, 0.25]
    assert memory.phase is Phase.CUSTOMIZED


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_fail_agent_refuses_a_poll_interval_that_would_never_end_a_wait(
    interval: float, tmp_path: Path
) -> None:
    memory = DeviceMemory.create(tmp_path / "d", device_id="poll-0")
    with pytest.raises(ValueError, match="poll_interval"):
        Agent(memory, poll_interval=interval)
