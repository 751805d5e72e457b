"""Agent mode: the activating client (33) runs by itself for the device's whole life.

The agent waits until the device has a customer-node address (given on the command line, or
written into the device configuration as ``node_url`` by an installer or another unit at any
moment), customizes the device, and renews the operational certificate with
``simplereenroll`` once ``renew_fraction`` (two thirds) of its validity has passed (and
never sooner than ``min_renewal_interval`` after the previous success).
Network errors and "later" answers (202, 429, 5xx) are retried with exponential backoff and
jitter, never sooner than the node's Retry-After. Only a refusal (403, or a device
certificate the node does not accept) stops the agent, with :class:`AgentStopped`. Other
failures need an operator but not a restart (a wrong address or label: 404; a node
certificate that does not verify, e.g. under a stale pin; an answer that is not EST or fails
verification; a device memory that cannot be written): they are logged as warnings and
retried with a slow backoff (``slow_backoff``: minutes up to an hour), and at once when the
device configuration changes (``ztpki device set-node``).

Without an address from either, an agent given a :class:`NodeFinder` discovers one
(DNS-SD over mDNS, then unicast SRV; ``ztpki.device.node_finder``): the first candidate
that verifies with the device's own anchors is used, and is not written into the
configuration, so a renewal looks again. A round that finds no node is followed by another
after ``discovery_backoff`` (seconds up to minutes), or at once when an address is set. A
discovered node that refuses the device is left out, not a reason to stop.

The node's CA pin given to the agent wins; without one, the configuration's current pin
(``node_ca_fingerprint``, with the CA certificate ``node_ca_certificate`` when the installer
gave it) applies, so changing or removing it with ``set-node`` takes effect.

Time is read and waited for through a :class:`Clock`, so tests drive the agent without
waiting: a fake clock's ``sleep`` advances its ``now``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ztpki.device.activation import (
    ActivatingClient,
    ActivationError,
    ActivationEvent,
    ActivationResult,
    FaultInjector,
    KeyMode,
)
from ztpki.device.cmp_activation import EnrollmentProtocol, activating_client
from ztpki.device.customer_node import (
    NODE_URL_KEY,
    NodeAddress,
    NodePin,
    choose_pin,
    configured_node,
)
from ztpki.device.memory import CONFIG_FILE, DeviceMemory, Identity, Phase
from ztpki.device.node_finder import NodeFinder
from ztpki.errors import ZtpkiError

__all__ = ["Agent", "AgentEvent", "AgentStopped", "Backoff", "Clock", "SystemClock", "renewal_time"]

logger = logging.getLogger(__name__)

RENEW_FRACTION = 2 / 3


class Clock(Protocol):
    """Where the agent reads the time and waits."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with "equal jitter": attempt n waits between d/2 and d, where
    d = min(cap, base * 2**n), so a fleet that failed together does not retry together."""

    base: float = 1.0
    cap: float = 300.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError("backoff needs 0 < base <= cap")

    def delay(self, attempt: int, *, jitter: float) -> float:
        """Seconds to wait before retry ``attempt`` (0-based); ``jitter`` is in [0, 1)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt, 62))
        return ceiling / 2 + jitter * ceiling / 2


@dataclass(frozen=True)
class AgentEvent:
    """``kind`` is an activation step (load, connect, ...) or wait, retry, schedule, done."""

    kind: str
    message: str


class AgentStopped(ZtpkiError):
    """The agent gave up: the node refused the device, or an answer cannot be trusted."""

    code = "agent-stopped"

    def __init__(self, cause: ActivationError) -> None:
        super().__init__(cause.message)
        self.cause = cause

    @property
    def exit_code(self) -> int:
        return self.cause.exit_code


def renewal_time(identity: Identity, *, fraction: float = RENEW_FRACTION) -> datetime:
    """When the operational certificate should be renewed: after ``fraction`` of its life."""
    assert identity.certificate is not None
    start = identity.certificate.not_valid_before_utc
    life = identity.certificate.not_valid_after_utc - start
    return start + life * fraction


class Agent:
    """Customizes, then keeps renewing, one device. Build, then ``await agent.run()``."""

    def __init__(
        self,
        memory: DeviceMemory,
        *,
        node: NodeAddress | None = None,
        key_mode: KeyMode = KeyMode.SERVERKEYGEN,
        protocol: EnrollmentProtocol = EnrollmentProtocol.EST,
        pin: NodePin | None = None,
        report: Callable[[AgentEvent], None] | None = None,
        clock: Clock | None = None,
        backoff: Backoff = Backoff(),
        slow_backoff: Backoff = Backoff(base=60.0, cap=3600.0),
        jitter: Callable[[], float] = random.random,
        poll_interval: float = 1.0,
        renew_fraction: float = RENEW_FRACTION,
        max_sleep: float = 3600.0,
        min_renewal_interval: timedelta = timedelta(hours=1),
        timeout: float = 30.0,
        fault: FaultInjector | None = None,
        finder: NodeFinder | None = None,
        discovery_backoff: Backoff = Backoff(base=5.0, cap=300.0),
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        if not poll_interval > 0:
            # Every wait of the agent is cut into polls of this length: 0 would never end one.
            raise ValueError("poll_interval must be more than 0 seconds")
        self.memory = memory
        self.node = node
        self.key_mode = key_mode
        self.protocol = EnrollmentProtocol(protocol)
        self.pin = pin
        self.clock: Clock = clock or SystemClock()
        self.backoff = backoff
        self.slow_backoff = slow_backoff
        self.renew_fraction = renew_fraction
        self.min_renewal_interval = min_renewal_interval
        self._earliest_renewal: datetime | None = None
        self._report = report
        self._jitter = jitter
        self._poll_interval = poll_interval
        self._max_sleep = max_sleep
        self._timeout = timeout
        self._fault = fault
        self._config_seen: tuple[int, int, int] | None = None
        self._configured: tuple[NodeAddress | None, NodePin | None] | None = None
        self.finder = finder
        self.discovery_backoff = discovery_backoff
        self._discovered: NodeAddress | None = None

    async def run(self, *, once: bool = False) -> ActivationResult | None:
        """Work until stopped; with ``once``, return after the first activation or renewal
        (or at once, with None, when the device is customized and no renewal is due).

        ``once`` still retries failures as described in the module documentation: it ends
        with a result, a refusal (:class:`AgentStopped`), or cancellation."""
        # Attempts are counted per kind of failure: a first "needs attention" after a run of
        # network errors starts its slow backoff at the beginning, and the other way round.
        attempts = {True: 0, False: 0}  # keyed by ActivationError.retryable
        while True:
            identity = self.memory.identity()
            if identity.phase is Phase.BLANK:
                raise ZtpkiError(
                    f"device {self.memory.device_id} has no temporary identity; manufacture it"
                )
            # A pending key on a customized device: a renewal (or its clean-up) was cut off,
            # and the node may have superseded the installed certificate; activate() resumes
            # it now instead of waiting for the next renewal date.
            renewing = (
                identity.phase is Phase.CUSTOMIZED
                and self._confirmed()
                and not self.memory.has_pending_key()
            )
            if renewing:
                due = renewal_time(identity, fraction=self.renew_fraction)
                if self._earliest_renewal is not None:
                    # A certificate due as soon as it is issued (a CA near its own expiry
                    # clamps validity) must not make the agent renew in a tight loop.
                    due = max(due, self._earliest_renewal)
                if self.clock.now() < due:
                    if once:
                        return None
                    await self._sleep_until(due)
                    continue
            node, pin = await self._wait_for_node()
            client = self._client(node, pin)
            try:
                result = await (client.renew() if renewing else client.activate())
            except ActivationError as exc:
                if exc.refused and self.finder is not None and node == self._discovered:
                    # Another customer's node verifies too (same factory CA): look further.
                    self.finder.refused(node, exc.message)
                    self._emit("discover", f"{node} refused the device; it is left out")
                    continue
                if exc.refused:
                    self._emit("stop", exc.message)
                    raise AgentStopped(exc) from None
                await self._retry(exc, attempts[exc.retryable])
                attempts[exc.retryable] += 1
                attempts[not exc.retryable] = 0
                continue
            attempts = {True: 0, False: 0}
            self._earliest_renewal = self.clock.now() + self.min_renewal_interval
            self._emit(
                "done",
                f"{result.action}: serial {result.serial}, valid until "
                f"{result.not_after.isoformat(timespec='seconds')}",
            )
            if once:
                return result

    # -- pieces ------------------------------------------------------------------------------

    def _client(self, node: NodeAddress, pin: NodePin | None) -> ActivatingClient:
        return activating_client(
            self.protocol,
            self.memory,
            node,
            key_mode=self.key_mode,
            pin=pin,
            report=self._forward,
            now=self.clock.now,
            timeout=self._timeout,
            fault=self._fault,
            # A discovered node is looked for again next time, never written down.
            remember_node=node != self._discovered,
        )

    def _confirmed(self) -> bool:
        return self.memory.config().get("confirmed") is True

    async def _retry(self, exc: ActivationError, attempt: int) -> None:
        """Wait before retry ``attempt + 1``: briefly for "later", slowly for what needs an
        operator (then also until the configuration changes, whichever comes first)."""
        jitter = self._jitter()
        if exc.retryable:
            delay = max(float(exc.retry_after or 0), self.backoff.delay(attempt, jitter=jitter))
            self._emit("retry", f"{exc.message}; retry {attempt + 1} in {delay:.1f} s")
            await self.clock.sleep(delay)
            return
        delay = self.slow_backoff.delay(attempt, jitter=jitter)
        logger.warning(
            "device %s: needs attention, retry %d in %.0f s: %s",
            self.memory.device_id,
            attempt + 1,
            delay,
            exc.message,
        )
        self._emit(
            "retry",
            f"{exc.message}; this needs attention: retry {attempt + 1} in {delay:.0f} s, or as "
            "soon as the device configuration changes",
        )
        stamp = self._config_stamp()
        remaining = delay
        while remaining > 0:
            step = min(self._poll_interval, remaining)
            await self.clock.sleep(step)
            remaining -= step
            if self._config_stamp() != stamp:
                self._emit("retry", "the device configuration changed; retrying now")
                return

    def _config_stamp(self) -> tuple[int, int, int] | None:
        # Every write renames a new file into place, so the inode changes with each one.
        try:
            stat = (self.memory.path / CONFIG_FILE).stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    async def _sleep_until(self, due: datetime) -> None:
        self._emit("schedule", f"renewal due at {due.isoformat(timespec='seconds')}")
        remaining = (due - self.clock.now()).total_seconds()
        await self.clock.sleep(max(0.0, min(remaining, self._max_sleep)))

    async def _wait_for_node(self) -> tuple[NodeAddress, NodePin | None]:
        """The node address from the command line, else from the configuration once written;
        the pin given to the agent, else the configuration's."""
        self._discovered = None
        if self.node is not None and self.pin is not None:
            return self.node, self.pin
        announced = False
        rounds, next_round = 0, self.clock.now()
        while True:
            found = self._configured_node()
            if found is not None:
                address, pin = found
                address = self.node or address
                if address is not None:
                    return address, choose_pin(self.pin, pin)
                if self.finder is not None and self.clock.now() >= next_round:
                    chosen = await self._discover(choose_pin(self.pin, pin))
                    if chosen is not None:
                        return chosen, choose_pin(self.pin, pin)
                    delay = self.discovery_backoff.delay(rounds, jitter=self._jitter())
                    rounds += 1
                    next_round = self.clock.now() + timedelta(seconds=delay)
                    self._emit(
                        "wait",
                        f"no customer node verified; discovering again in {delay:.0f} s, or "
                        "at once when an address is set (ztpki device set-node)",
                    )
                    announced = True
            if not announced and self.node is None:  # else _configured_node said why
                self._emit(
                    "wait",
                    "waiting for a customer-node address (ztpki device set-node --device "
                    f"{self.memory.path} https://HOST:PORT)",
                )
                announced = True
            await self.clock.sleep(self._poll_interval)

    async def _discover(self, pin: NodePin | None) -> NodeAddress | None:
        assert self.finder is not None
        self._emit("discover", "no customer-node address is set: looking for one (DNS-SD)")
        chosen = await self.finder.choose(
            self.memory, pin, now=self.clock.now, timeout=self._timeout
        )
        self._discovered = chosen
        return chosen

    def _configured_node(self) -> tuple[NodeAddress | None, NodePin | None] | None:
        """(address, pin) from the configuration, None while it is unusable; re-read only
        when the file changed (a cheap file watch). The address is not read when the agent
        was given one."""
        seen = self._config_stamp()
        if seen is None:
            return None
        if seen == self._config_seen:
            return self._configured
        self._config_seen = seen
        self._configured = None
        try:
            config = self.memory.config()
            if self.node is not None:
                config.pop(NODE_URL_KEY, None)
            self._configured = configured_node(config)
        except ZtpkiError as exc:
            self._emit("wait", f"the configured node address is unusable: {exc.message}")
            return None
        return self._configured

    def _forward(self, event: ActivationEvent) -> None:
        self._emit(event.step.value, event.message)

    def _emit(self, kind: str, message: str) -> None:
        logger.debug("device %s agent: %s: %s", self.memory.device_id, kind, message)
        if self._report is not None:
            self._report(AgentEvent(kind, message))
