"""What the node counts, exposed in the Prometheus text format (0.0.4) by prometheus-client.

The figures live in plain per-process structures, not in prometheus-client's global
registry: with several workers (`node serve --workers N`) each worker counts its own
requests, and a scrape adds up every worker's ``snapshot()`` (ztpki.node.fleet_metrics)
before prometheus-client writes the sums. Counters reset when the node restarts, as
Prometheus expects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from ztpki.prometheus import (
    CONTENT_TYPE,
    DatabaseFigures,
    Histogram,
    add_counts,
    counter,
    database_families,
    database_figures,
    exposition,
    gauge,
    histogram,
)

__all__ = ["CONTENT_TYPE", "DatabaseFigures", "Gauges", "NodeMetrics", "database_figures"]


# The counters a snapshot carries: name in the snapshot -> attribute.
_COUNTERS = ("unauthenticated", "issued", "handshakes")
_HISTOGRAMS = ("enrollment", "ca_system", "durations")


@dataclass(frozen=True)
class Gauges:
    """What a scrape reads at the moment it is made (not added up from workers' counts)."""

    devices: Mapping[str, int] | None = None
    revocations: Mapping[str, int] | None = None
    in_flight: int | None = None
    workers: int | None = None


class NodeMetrics:
    """What the node counts: requests by endpoint and outcome, their latency, certificates
    issued per EST label, TLS handshakes refused by reason, CA-system exchanges."""

    def __init__(self, database: Callable[[], DatabaseFigures] | None = None) -> None:
        # The store's counters, read at each scrape (the database object keeps them).
        self._database = database
        # Requests this process is answering now (set by the HTTP application), and other
        # workers' at the moment they answered a scrape.
        self._in_flight: Callable[[], int] = lambda: 0
        self._in_flight_added = 0
        # Other workers' database figures, added up by a scrape (see add_database).
        self._database_added: dict[tuple[str, str], int] = {}
        self._requests: dict[tuple[str, str], int] = {}
        self._enrollment: dict[str, Histogram] = {}
        self._ca_system: dict[str, Histogram] = {}
        self._durations: dict[str, Histogram] = {}
        self._unauthenticated: dict[str, int] = {}
        self._issued: dict[str, int] = {}
        self._handshakes: dict[str, int] = {}

    def count_request(self, endpoint: str, outcome: str) -> None:
        key = (endpoint, outcome)
        self._requests[key] = self._requests.get(key, 0) + 1

    def count_unauthenticated(self, reason: str) -> None:
        """A refusal before any identity was authenticated (never audited; see strangers)."""
        self._unauthenticated[reason] = self._unauthenticated.get(reason, 0) + 1

    def count_handshake_failure(self, reason: str) -> None:
        """A TLS handshake the node refused; ``reason`` is one of OpenSSL's fixed reasons."""
        self._handshakes[reason] = self._handshakes.get(reason, 0) + 1

    def count_issued(self, label: str) -> None:
        """A certificate the customer CA system issued through this EST label."""
        self._issued[label] = self._issued.get(label, 0) + 1

    def watch_in_flight(self, count: Callable[[], int]) -> None:
        self._in_flight = count

    def in_flight(self) -> int:
        return self._in_flight() + self._in_flight_added

    def unauthenticated(self) -> dict[str, int]:
        return dict(self._unauthenticated)

    def observe_request(self, endpoint: str, seconds: float) -> None:
        """Any request to ``endpoint``, whatever its outcome."""
        self._durations.setdefault(endpoint, Histogram()).observe(seconds)

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
        data: dict[str, Any] = {
            "requests": [[e, o, n] for (e, o), n in self._requests.items()],
            "database": [[e, name, n] for (e, name), n in self.database().items()],
            "in_flight": self.in_flight(),
        }
        for name in _COUNTERS:
            data[name] = dict(getattr(self, f"_{name}"))
        for name in _HISTOGRAMS:
            data[name] = {k: h.data() for k, h in getattr(self, f"_{name}").items()}
        return data

    def add(self, snapshot: Mapping[str, Any]) -> None:
        """Add another worker's ``snapshot()`` to these figures; ValueError (nothing added)
        when it is not one."""
        try:
            requests = [(str(e), str(o), int(n)) for e, o, n in snapshot["requests"]]
            counters = {
                name: {str(k): int(n) for k, n in snapshot[name].items()} for name in _COUNTERS
            }
            series = {
                name: {str(k): Histogram.from_data(v) for k, v in snapshot[name].items()}
                for name in _HISTOGRAMS
            }
            database = {(str(e), str(k)): int(n) for e, k, n in snapshot.get("database", [])}
            in_flight = int(snapshot.get("in_flight", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a metrics snapshot: {exc!r}") from None
        for endpoint, outcome, value in requests:
            key = (endpoint, outcome)
            self._requests[key] = self._requests.get(key, 0) + value
        for name, values in counters.items():
            add_counts(getattr(self, f"_{name}"), values)
        for name, histograms in series.items():
            into_h: dict[str, Histogram] = getattr(self, f"_{name}")
            for series_key, figures in histograms.items():
                into_h.setdefault(series_key, Histogram()).add(figures)
        self.add_database(database)
        self._in_flight_added += in_flight

    def exposition(self, gauges: Gauges | None = None) -> str:
        return exposition(self.families(gauges or Gauges()))

    def families(self, gauges: Gauges) -> Iterator[Metric]:
        yield counter(
            "ztpki_node_requests",
            "EST and metrics requests by endpoint and outcome.",
            ("endpoint", "outcome"),
            {(e, o): n for (e, o), n in self._requests.items()},
        )
        yield counter(
            "ztpki_node_unauthenticated_refusals",
            "TLS handshakes and requests refused before any client identity was "
            "authenticated (not audited), by reason.",
            ("reason",),
            {(k,): n for k, n in self._unauthenticated.items()},
        )
        yield counter(
            "ztpki_node_tls_handshake_failures",
            "TLS handshakes the node refused, by OpenSSL's reason.",
            ("reason",),
            {(k,): n for k, n in self._handshakes.items()},
        )
        yield counter(
            "ztpki_node_certificates_issued",
            "Certificates the customer CA system issued through the node, by EST label.",
            ("label",),
            {(k,): n for k, n in self._issued.items()},
        )
        yield histogram(
            "ztpki_node_request_duration_seconds",
            "Time to answer a request, by endpoint, whatever the outcome.",
            "endpoint",
            self._durations,
        )
        yield histogram(
            "ztpki_node_enrollment_seconds",
            "Time to answer an enrollment that issued a certificate.",
            "endpoint",
            self._enrollment,
        )
        yield histogram(
            "ztpki_node_ca_system_seconds",
            "Time of one exchange with the customer CA system, by outcome.",
            "outcome",
            self._ca_system,
        )
        yield from database_families(self.database())
        yield from _gauge_families(gauges)


def _gauge_families(gauges: Gauges) -> Iterator[GaugeMetricFamily]:
    if gauges.devices is not None:
        yield gauge(
            "ztpki_node_devices",
            "Devices in the access-control register by state.",
            "state",
            gauges.devices,
        )
    if gauges.revocations is not None:
        yield gauge(
            "ztpki_node_revocation_queue",
            "Revocation orders not yet delivered to the customer CA system, by status "
            "(waiting: for its grace period; pending: due, or retrying).",
            "status",
            gauges.revocations,
        )
    if gauges.in_flight is not None:
        yield gauge(
            "ztpki_node_requests_in_flight",
            "Requests being answered now, over every worker.",
            None,
            gauges.in_flight,
        )
    if gauges.workers is not None:
        yield gauge(
            "ztpki_node_workers",
            "Worker processes whose figures this scrape adds up.",
            None,
            gauges.workers,
        )
