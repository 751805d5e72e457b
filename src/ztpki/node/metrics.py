"""Request counters and latency histograms, exposed in the Prometheus text format (0.0.4).

The format is a few lines of text per series, so it is written here by hand. Counters live
in one process and reset when the node restarts, as Prometheus expects. With several workers
(`node serve --workers N`) each worker counts its own requests and a scrape adds up every
worker's ``snapshot()`` (ztpki.node.fleet_metrics).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: an enrollment on loopback takes milliseconds; a loaded CA system, seconds.
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


# (engine, {figure: count}), from ztpki.store.counters.DatabaseCounters.
DatabaseFigures = tuple[str, Mapping[str, int]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


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


def _histogram_data(histogram: Histogram) -> dict[str, Any]:
    return {"counts": list(histogram.counts), "total": histogram.total, "count": histogram.count}


def _histogram_from(data: Mapping[str, Any]) -> Histogram:
    counts = [int(c) for c in data["counts"]]
    if len(counts) != len(LATENCY_BUCKETS):
        raise ValueError("a histogram with other buckets")
    return Histogram(counts=counts, total=float(data["total"]), count=int(data["count"]))


class NodeMetrics:
    """What the node counts: requests by endpoint and outcome, and enrollment latency."""

    def __init__(self, database: Callable[[], DatabaseFigures] | None = None) -> None:
        # The store's counters, read at each scrape (the database object keeps them).
        self._database = database
        # Other workers' database figures, added up by a scrape (see add_database).
        self._database_added: dict[tuple[str, str], int] = {}
        self._requests: dict[tuple[str, str], int] = {}
        self._enrollment: dict[str, Histogram] = {}
        self._ca_system: dict[str, Histogram] = {}
        self._unauthenticated: dict[str, int] = {}

    def count_request(self, endpoint: str, outcome: str) -> None:
        key = (endpoint, outcome)
        self._requests[key] = self._requests.get(key, 0) + 1

    def count_unauthenticated(self, reason: str) -> None:
        """A refusal before any identity was authenticated (never audited; see strangers)."""
        self._unauthenticated[reason] = self._unauthenticated.get(reason, 0) + 1

    def unauthenticated(self) -> dict[str, int]:
        return dict(self._unauthenticated)

    def observe_enrollment(self, endpoint: str, seconds: float) -> None:
        """Whole request, from the first byte read to the answer, for issued certificates."""
        self._enrollment.setdefault(endpoint, Histogram()).observe(seconds)

    def observe_ca_system(self, outcome: str, seconds: float) -> None:
        """One exchange with the customer CA system."""
        self._ca_system.setdefault(outcome, Histogram()).observe(seconds)

    def requests(self) -> dict[tuple[str, str], int]:
        return dict(self._requests)

    def database(self) -> dict[tuple[str, str], int]:
        """(engine, figure) -> count: this process's store plus what ``add_database`` added."""
        figures = dict(self._database_added)
        if self._database is not None:
            engine, counts = self._database()
            for name, value in counts.items():
                figures[(engine, name)] = figures.get((engine, name), 0) + value
        return figures

    def add_database(self, figures: Mapping[tuple[str, str], int]) -> None:
        """Add another worker's ``database()`` figures."""
        for key, value in figures.items():
            self._database_added[key] = self._database_added.get(key, 0) + value

    def snapshot(self) -> dict[str, Any]:
        """Every figure as JSON-ready data, for another worker to add up (``add``)."""
        return {
            "requests": [[e, o, n] for (e, o), n in self._requests.items()],
            "unauthenticated": dict(self._unauthenticated),
            "enrollment": {k: _histogram_data(h) for k, h in self._enrollment.items()},
            "ca_system": {k: _histogram_data(h) for k, h in self._ca_system.items()},
            "database": [[e, name, n] for (e, name), n in self.database().items()],
        }

    def add(self, snapshot: Mapping[str, Any]) -> None:
        """Add another worker's ``snapshot()`` to these figures; ValueError (nothing added)
        when it is not one."""
        try:
            requests = [(str(e), str(o), int(n)) for e, o, n in snapshot["requests"]]
            strangers = {str(k): int(n) for k, n in snapshot["unauthenticated"].items()}
            series = {
                name: {str(k): _histogram_from(v) for k, v in snapshot[name].items()}
                for name in ("enrollment", "ca_system")
            }
            database = {(str(e), str(k)): int(n) for e, k, n in snapshot.get("database", [])}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a metrics snapshot: {exc!r}") from None
        for endpoint, outcome, value in requests:
            key = (endpoint, outcome)
            self._requests[key] = self._requests.get(key, 0) + value
        for reason, value in strangers.items():
            self._unauthenticated[reason] = self._unauthenticated.get(reason, 0) + value
        for name, into in (("enrollment", self._enrollment), ("ca_system", self._ca_system)):
            for series_key, histogram in series[name].items():
                into.setdefault(series_key, Histogram()).add(histogram)
        self.add_database(database)

    def exposition(
        self, *, devices: Mapping[str, int] | None = None, workers: int | None = None
    ) -> str:
        lines = [
            "# HELP ztpki_node_requests_total EST and metrics requests by endpoint and outcome.",
            "# TYPE ztpki_node_requests_total counter",
        ]
        for (endpoint, outcome), value in sorted(self._requests.items()):
            series = _labels([("endpoint", endpoint), ("outcome", outcome)])
            lines.append(f"ztpki_node_requests_total{series} {value}")
        lines += [
            "# HELP ztpki_node_unauthenticated_refusals_total TLS handshakes and requests "
            "refused before any client identity was authenticated (not audited), by reason.",
            "# TYPE ztpki_node_unauthenticated_refusals_total counter",
        ]
        for reason, value in sorted(self._unauthenticated.items()):
            series = _labels([("reason", reason)])
            lines.append(f"ztpki_node_unauthenticated_refusals_total{series} {value}")
        lines += _histogram(
            "ztpki_node_enrollment_seconds",
            "Time to answer an enrollment that issued a certificate.",
            "endpoint",
            self._enrollment,
        )
        lines += _histogram(
            "ztpki_node_ca_system_seconds",
            "Time of one exchange with the customer CA system, by outcome.",
            "outcome",
            self._ca_system,
        )
        lines += _database_lines(self.database())
        if devices is not None:
            lines += [
                "# HELP ztpki_node_devices Devices in the access-control register by state.",
                "# TYPE ztpki_node_devices gauge",
            ]
            for state, value in sorted(devices.items()):
                lines.append(f"ztpki_node_devices{_labels([('state', state)])} {value}")
        if workers is not None:
            lines += [
                "# HELP ztpki_node_workers Worker processes whose figures this scrape adds up.",
                "# TYPE ztpki_node_workers gauge",
                f"ztpki_node_workers {workers}",
            ]
        return "\n".join(lines) + "\n"


def database_figures(store: object) -> Callable[[], DatabaseFigures] | None:
    """What reads the counters of ``store``'s database (None: a store given by a test, without
    a database)."""
    counters = getattr(getattr(store, "database", None), "counters", None)
    if counters is None:
        return None
    return lambda: (counters.engine, counters.snapshot())


def _database_lines(figures: Mapping[tuple[str, str], int]) -> list[str]:
    lines = [
        "# HELP ztpki_database_round_trips_total Requests to the node's database and their "
        "answers: round trips to the server (PostgreSQL), statements run (SQLite).",
        "# TYPE ztpki_database_round_trips_total counter",
    ]
    for (engine, name), value in sorted(figures.items()):
        if name == "round_trips":
            lines.append(f"ztpki_database_round_trips_total{_labels([('engine', engine)])} {value}")
    lines += [
        "# HELP ztpki_database_commits_total Transactions of the node's database committed, "
        "by kind (write, read).",
        "# TYPE ztpki_database_commits_total counter",
    ]
    for (engine, name), value in sorted(figures.items()):
        if name.startswith("commits_"):
            series = _labels([("engine", engine), ("kind", name.removeprefix("commits_"))])
            lines.append(f"ztpki_database_commits_total{series} {value}")
    return lines


def _histogram(name: str, help_text: str, label: str, series: Mapping[str, Histogram]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for key, histogram in sorted(series.items()):
        cumulative = 0
        for bound, count in zip(histogram.buckets, histogram.counts, strict=True):
            cumulative += count
            lines.append(
                f"{name}_bucket{_labels([(label, key), ('le', _number(bound))])} {cumulative}"
            )
        lines.append(f"{name}_bucket{_labels([(label, key), ('le', '+Inf')])} {histogram.count}")
        lines.append(f"{name}_sum{_labels([(label, key)])} {_number(histogram.total)}")
        lines.append(f"{name}_count{_labels([(label, key)])} {histogram.count}")
    return lines
