"""ztpki.throttle.LogThrottle: a stranger's repeated events reach the log at a bounded rate."""

from __future__ import annotations

import logging

import pytest

from ztpki.throttle import LogThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _throttle(clock: Clock, name: str) -> LogThrottle:
    return LogThrottle(logging.getLogger(name), burst=3, interval=30.0, clock=clock)


def test_ok_burst_then_one_pause_line_then_the_count(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    throttle = _throttle(clock, "t.burst")
    caplog.set_level(logging.INFO, "t.burst")
    logged = [throttle.info("no-cert", "refused request %d", n) for n in range(100)]
    assert logged == [True] * 3 + [False] * 97
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["refused request 0", "refused request 1", "refused request 2"]
    assert len(lines) == 4 and "suppressed" in lines[3] and "no-cert" in lines[3]
    clock.now += 10.0  # one token back (3 per 30 s)
    assert throttle.info("no-cert", "refused request %d", 100)
    assert caplog.records[-1].getMessage() == (
        "refused request 100 (97 similar line(s) suppressed before this one)"
    )
    assert not throttle.info("no-cert", "refused request %d", 101)
    # Suppressed again: one more pause line, no more.
    assert sum("are suppressed" in r.getMessage() for r in caplog.records) == 2


def test_ok_kinds_have_their_own_buckets(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    throttle = _throttle(clock, "t.kinds")
    caplog.set_level(logging.INFO, "t.kinds")
    for _ in range(10):
        throttle.info("flood", "flood")
    assert throttle.info("rare", "a different reason is still logged")


def test_ok_a_long_flood_logs_at_the_refill_rate(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    throttle = _throttle(clock, "t.rate")
    caplog.set_level(logging.INFO, "t.rate")
    for _ in range(6000):  # 100 per second for a minute
        throttle.warning("flood", "flood")
        clock.now += 0.01
    # 3 at once, then 3 per 30 s for 60 s, plus one pause line per suppressed streak.
    assert len(caplog.records) <= 3 + 6 + 7


def test_fail_bad_rate() -> None:
    with pytest.raises(ValueError, match="burst"):
        LogThrottle(logging.getLogger("t"), burst=0)
