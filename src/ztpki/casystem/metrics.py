"""What a CA system counts, for `GET /metrics` on its HTTP listener (`ca serve --http-listen`).

The XML protocol's requests by kind and outcome and their latency, certificates issued and
revoked per CA, TLS handshakes refused by OpenSSL's reason, the HTTP listener's requests
(OCSP, CRLs) and their latency, OCSP answers by kind, and, read at each scrape, each CA's
CRL (number, thisUpdate, nextUpdate), open connections, requests in flight and the issuance
store's database work. Each CA-system instance counts its own; Prometheus adds instances up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from prometheus_client.core import Metric

from ztpki.prometheus import (
    DatabaseFigures,
    Histogram,
    counter,
    database_families,
    exposition,
    gauge,
    histogram,
)


@dataclass(frozen=True)
class CRLState:
    number: int
    this_update: float  # Unix seconds
    next_update: float | None


def crl_state(crl: x509.CertificateRevocationList) -> CRLState:
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = 0
    next_update = crl.next_update_utc
    return CRLState(
        number,
        crl.last_update_utc.timestamp(),
        None if next_update is None else next_update.timestamp(),
    )


@dataclass(frozen=True)
class CAGauges:
    """What a scrape reads at the moment it is made."""

    crls: Mapping[str, CRLState] = field(default_factory=dict)
    connections: int | None = None


class CASystemMetrics:
    def __init__(self, database: Callable[[], DatabaseFigures] | None = None) -> None:
        self._database = database
        self._requests: dict[tuple[str, str], int] = {}
        self._durations: dict[str, Histogram] = {}
        self._issued: dict[str, int] = {}
        self._revoked: dict[tuple[str, str], int] = {}
        self._released: dict[str, int] = {}
        self._handshakes: dict[str, int] = {}
        self._http: dict[tuple[str, str], int] = {}
        self._http_durations: dict[str, Histogram] = {}
        self._ocsp: dict[str, int] = {}
        self.in_flight = 0

    # --- the XML protocol -----------------------------------------------------------------
    def observe_request(self, kind: str, outcome: str, seconds: float) -> None:
        key = (kind, outcome)
        self._requests[key] = self._requests.get(key, 0) + 1
        self._durations.setdefault(kind, Histogram()).observe(seconds)

    def count_issued(self, ca: str) -> None:
        self._issued[ca] = self._issued.get(ca, 0) + 1

    def count_revoked(self, ca: str, reason: str) -> None:
        key = (ca, reason)
        self._revoked[key] = self._revoked.get(key, 0) + 1

    def count_released(self, ca: str) -> None:
        self._released[ca] = self._released.get(ca, 0) + 1

    def count_handshake_failure(self, reason: str) -> None:
        self._handshakes[reason] = self._handshakes.get(reason, 0) + 1

    # --- the HTTP listener ----------------------------------------------------------------
    def observe_http(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, str(status))
        self._http[key] = self._http.get(key, 0) + 1
        self._http_durations.setdefault(endpoint, Histogram()).observe(seconds)

    def count_ocsp(self, kind: str) -> None:
        self._ocsp[kind] = self._ocsp.get(kind, 0) + 1

    # --- exposition -----------------------------------------------------------------------
    def exposition(self, gauges: CAGauges | None = None) -> str:
        return exposition(self.families(gauges or CAGauges()))

    def families(self, gauges: CAGauges) -> Iterator[Metric]:
        yield counter(
            "ztpki_ca_requests",
            "XML-protocol requests from CA-clients, by kind (enroll, revoke) and outcome.",
            ("kind", "outcome"),
            self._requests,
        )
        yield histogram(
            "ztpki_ca_request_duration_seconds",
            "Time to answer an XML-protocol request, by kind, whatever the outcome.",
            "kind",
            self._durations,
        )
        yield counter(
            "ztpki_ca_certificates_issued",
            "Certificates issued by this instance, per CA.",
            ("ca",),
            {(k,): n for k, n in self._issued.items()},
        )
        yield counter(
            "ztpki_ca_certificates_revoked",
            "Revocation requests answered by this instance, per CA and RFC 5280 reason (a "
            "repeated request, answered with the first record, counts again).",
            ("ca", "reason"),
            self._revoked,
        )
        yield counter(
            "ztpki_ca_holds_released",
            "certificateHold revocations released by this instance, per CA.",
            ("ca",),
            {(k,): n for k, n in self._released.items()},
        )
        yield counter(
            "ztpki_ca_tls_handshake_failures",
            "TLS handshakes the XML listener refused, by OpenSSL's reason.",
            ("reason",),
            {(k,): n for k, n in self._handshakes.items()},
        )
        yield counter(
            "ztpki_ca_http_requests",
            "Requests to the HTTP listener (OCSP, CRLs, metrics), by endpoint and status.",
            ("endpoint", "status"),
            self._http,
        )
        yield histogram(
            "ztpki_ca_http_request_duration_seconds",
            "Time to answer a request on the HTTP listener, by endpoint.",
            "endpoint",
            self._http_durations,
        )
        yield counter(
            "ztpki_ca_ocsp_responses",
            "OCSP answers by kind: cacheable (no nonce), nonce (signed for one request), or "
            "the OCSP error sent (malformedRequest, unauthorized, tryLater, internalError).",
            ("kind",),
            {(k,): n for k, n in self._ocsp.items()},
        )
        yield from _crl_families(gauges.crls)
        yield gauge(
            "ztpki_ca_requests_in_flight",
            "XML-protocol requests being answered now.",
            None,
            self.in_flight,
        )
        if gauges.connections is not None:
            yield gauge(
                "ztpki_ca_connections",
                "Open CA-client connections on the XML listener.",
                None,
                gauges.connections,
            )
        if self._database is not None:
            engine, counts = self._database()
            yield from database_families({(engine, k): v for k, v in counts.items()})


def _crl_families(crls: Mapping[str, CRLState]) -> Iterator[Metric]:
    yield gauge(
        "ztpki_ca_crl_number",
        "The CRL number of each CA's published CRL.",
        "ca",
        {ca: state.number for ca, state in crls.items()},
    )
    yield gauge(
        "ztpki_ca_crl_this_update_timestamp_seconds",
        "thisUpdate of each CA's published CRL, in Unix seconds.",
        "ca",
        {ca: state.this_update for ca, state in crls.items()},
    )
    yield gauge(
        "ztpki_ca_crl_next_update_timestamp_seconds",
        "nextUpdate of each CA's published CRL, in Unix seconds: stale once in the past.",
        "ca",
        {ca: state.next_update for ca, state in crls.items() if state.next_update is not None},
    )
