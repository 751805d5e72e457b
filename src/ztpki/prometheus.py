"""The Prometheus exposition every ztpki service shares: histograms that several worker
processes can add up, and the metric families prometheus-client writes.

A service keeps its figures in plain structures (a snapshot of them is JSON, so that workers
can add each other's up) and hands prometheus-client one family per series at each scrape;
the text format itself is prometheus-client's.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# The classic text format, which every Prometheus and agent reads (prometheus-client 0.22+
# would announce its own escaping scheme, version 1.0.0, for the same bytes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: an answer on loopback takes milliseconds; a loaded CA system, seconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        # Stored per bucket; exposition makes them cumulative.
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def add(self, other: Histogram) -> None:
        if other.buckets != self.buckets:
            raise ValueError("histograms with different buckets cannot be added")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total
        self.count += other.count

    def cumulative(self) -> list[tuple[str, float]]:
        """prometheus-client's bucket list: (le, cumulative count), +Inf last."""
        buckets, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            buckets.append((repr(float(bound)), float(running)))  # "30.0", as Go writes it
        buckets.append(("+Inf", float(self.count)))
        return buckets

    def data(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "total": self.total, "count": self.count}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Histogram:
        counts = [int(c) for c in data["counts"]]
        if len(counts) != len(LATENCY_BUCKETS):
            raise ValueError("a histogram with other buckets")
        return cls(counts=counts, total=float(data["total"]), count=int(data["count"]))


def exposition(families: Iterable[Metric]) -> str:
    """The text format of ``families``, written by prometheus-client."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families)))
    return generate_latest(registry).decode()


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


LabelValues = TypeVar("LabelValues", bound=tuple[str, ...])


def counter(
    name: str, help_text: str, labels: tuple[str, ...], values: Mapping[LabelValues, float]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family


def histogram(
    name: str, help_text: str, label: str, series: Mapping[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=(label,))
    for key, value in sorted(series.items()):
        family.add_metric((key,), value.cumulative(), sum_value=value.total)
    return family


def gauge(
    name: str, help_text: str, label: str | None, values: Mapping[str, float] | float
) -> GaugeMetricFamily:
    if not isinstance(values, Mapping):
        return GaugeMetricFamily(name, help_text, value=values)
    family = GaugeMetricFamily(name, help_text, labels=(label,) if label else ())
    for key, value in sorted(values.items()):
        family.add_metric((key,), value)
    return family


def add_counts(into: dict[str, int], values: Mapping[str, int]) -> None:
    for key, value in values.items():
        into[key] = into.get(key, 0) + value


# (engine, {figure: count}), from ztpki.store.counters.DatabaseCounters.
DatabaseFigures = tuple[str, Mapping[str, int]]


def database_figures(store: object) -> Callable[[], DatabaseFigures] | None:
    """What reads the counters of ``store``'s database (None: a store given by a test, without
    a database)."""
    counters = getattr(getattr(store, "database", None), "counters", None)
    if counters is None:
        return None
    return lambda: (counters.engine, counters.snapshot())


def database_families(figures: Mapping[tuple[str, str], int]) -> Iterator[CounterMetricFamily]:
    yield counter(
        "ztpki_database_round_trips",
        "Requests to the store's database and their answers: round trips to the server "
        "(PostgreSQL), statements run (SQLite).",
        ("engine",),
        {(engine,): n for (engine, name), n in figures.items() if name == "round_trips"},
    )
    yield counter(
        "ztpki_database_commits",
        "Transactions of the store's database committed, by kind (write, read).",
        ("engine", "kind"),
        {
            (engine, name.removeprefix("commits_")): n
            for (engine, name), n in figures.items()
            if name.startswith("commits_")
        },
    )
