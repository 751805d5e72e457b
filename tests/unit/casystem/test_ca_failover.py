"""Failing over between CA-system instances: which address first, back-off, coming back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from ztpki.casystem.failover import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    AddressHealth,
    FailoverCAClient,
    parse_addresses,
)
from ztpki.errors import ConfigurationError, MalformedInput, Unavailable, ZtpkiError
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest
from ztpki.protocol.revocation import RevocationAnswer, RevocationRequest

REQUEST = EnrollmentRequest(request_id="r-1", device_id="d-1")


def test_ok_healthy_addresses_keep_their_configured_order() -> None:
    health = AddressHealth(3)
    assert health.order(0.0) == [0, 1, 2]
    health.failed(0, 10.0)
    assert health.order(10.0) == [1, 2, 0]  # the failed one is tried last, not dropped
    assert health.backing_off(0, 10.5) and not health.backing_off(1, 10.5)
    # After its back-off it is the first choice again.
    assert health.order(10.0 + BACKOFF_FIRST) == [0, 1, 2]


def test_ok_backoff_doubles_to_a_maximum_and_success_resets_it() -> None:
    health = AddressHealth(2)
    now, delays = 0.0, []
    for _ in range(8):  # each failure once the previous back-off has passed
        delay = health.failed(0, now)
        assert delay is not None
        delays.append(delay)
        now += delay
    assert delays[:3] == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST]
    assert max(delays) == BACKOFF_MAX and delays[-1] == BACKOFF_MAX
    health.succeeded(0)
    assert health.failed(0, now) == BACKOFF_FIRST


def test_ok_failures_while_backing_off_count_once() -> None:
    # Eight requests in flight when the address went down fail together: one failure.
    health = AddressHealth(2)
    assert health.failed(0, 0.0) == BACKOFF_FIRST
    assert [health.failed(0, 0.1) for _ in range(7)] == [None] * 7
    assert health.order(BACKOFF_FIRST) == [0, 1]  # back after the first back-off only
    assert health.failed(0, BACKOFF_FIRST) == 2 * BACKOFF_FIRST  # the next one doubles


def test_ok_all_backing_off_are_still_tried_soonest_first() -> None:
    health = AddressHealth(3)
    health.failed(0, 0.0)
    health.failed(0, 1.0)  # retry at 3
    health.failed(2, 0.0)  # retry at 1
    health.failed(1, 0.5)  # retry at 1.5
    assert health.order(0.6) == [2, 1, 0]


@pytest.mark.parametrize(
    ("count", "first", "maximum"),
    [(0, 1.0, 2.0), (1, 0.0, 1.0), (1, 3.0, 2.0)],
    ids=["fail-no-address", "fail-zero-backoff", "fail-first-over-maximum"],
)
def test_fail_bad_health_settings(count: int, first: float, maximum: float) -> None:
    with pytest.raises(ValueError):
        AddressHealth(count, first=first, maximum=maximum)


def test_ok_addresses_parse_in_order() -> None:
    assert parse_addresses("a:1") == (("a", 1),)
    assert parse_addresses(["b:2", "[::1]:3"]) == (("b", 2), ("::1", 3))


@pytest.mark.parametrize(
    "given",
    [[], ["a:1", "a:1"], ["a:1", "nohost"], ["a:0"]],
    ids=["fail-none", "fail-twice", "fail-not-host-port", "fail-port-zero"],
)
def test_fail_bad_addresses(given: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        parse_addresses(given)


@dataclass
class FakeInstance:
    """A CA-system instance that answers, or fails with the error it is given."""

    address: str
    error: ZtpkiError | None = None
    seen: list[str] = field(default_factory=list)
    closed: bool = False

    async def enroll(self, request: EnrollmentRequest) -> EnrollmentAnswer:
        self.seen.append(request.request_id)
        if self.error is not None:
            raise self.error
        return EnrollmentAnswer(request_id=request.request_id, certificate_der=b"\x30\x00")

    async def revoke(self, request: RevocationRequest) -> RevocationAnswer:
        raise AssertionError("not used")

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ok_fails_over_with_the_same_request_then_prefers_the_first_again() -> None:
    a = FakeInstance("a:1", Unavailable("cannot reach CA system a:1: refused"))
    b = FakeInstance("b:1")
    clock = Clock()
    client = FailoverCAClient([a, b], clock=clock)
    answer = asyncio.run(client.enroll(REQUEST))
    assert answer.request_id == "r-1"
    assert a.seen == ["r-1"] and b.seen == ["r-1"]  # one request id on both
    # a is avoided while it backs off: b alone is asked.
    asyncio.run(client.enroll(REQUEST))
    assert a.seen == ["r-1"] and b.seen == ["r-1", "r-1"]
    # a is back: after its back-off it is asked first again.
    a.error = None
    clock.now += BACKOFF_FIRST
    asyncio.run(client.enroll(REQUEST))
    assert a.seen == ["r-1", "r-1"] and b.seen == ["r-1", "r-1"]
    asyncio.run(client.close())
    assert a.closed and b.closed


def test_fail_every_address_down_names_each() -> None:
    a = FakeInstance("a:1", Unavailable("cannot reach CA system a:1"))
    b = FakeInstance("b:1", Unavailable("CA system b:1 did not answer within 10 s"))
    client = FailoverCAClient([a, b], clock=Clock())
    with pytest.raises(Unavailable) as failed:
        asyncio.run(client.enroll(REQUEST))
    assert "none of the 2" in failed.value.message
    assert "a:1" in failed.value.message and "b:1" in failed.value.message
    # Both back off; the next request still tries both (never fails untried).
    with pytest.raises(Unavailable):
        asyncio.run(client.enroll(REQUEST))
    assert len(a.seen) == len(b.seen) == 2


def test_fail_a_refusal_is_not_failed_over() -> None:
    # A typed answer (bad request, not entitled...) would be the same at every instance.
    a = FakeInstance("a:1", MalformedInput("CA system refused request r-1: malformed"))
    b = FakeInstance("b:1")
    client = FailoverCAClient([a, b], clock=Clock())
    with pytest.raises(MalformedInput):
        asyncio.run(client.enroll(REQUEST))
    assert b.seen == [] and not client.health.backing_off(0, 100.0)
