"""The node's metric series beyond requests: latency of every request, certificates issued
per label, refused TLS handshakes by reason, in-flight requests and the revocation queue."""

from __future__ import annotations

import json
import ssl

from prometheus_client.parser import text_string_to_metric_families

from ztpki.credentials import handshake_reason
from ztpki.node.metrics import Gauges, NodeMetrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, parsed by prometheus-client's own parser (so the text is well formed)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_request_is_timed_whatever_its_outcome() -> None:
    metrics = NodeMetrics()
    metrics.observe_request("simpleenroll", 0.004)
    metrics.observe_request("simpleenroll", 0.2)
    found = samples(metrics.exposition())
    bucket = "ztpki_node_request_duration_seconds_bucket"
    assert found[(bucket, (("endpoint", "simpleenroll"), ("le", "0.005")))] == 1
    assert found[(bucket, (("endpoint", "simpleenroll"), ("le", "+Inf")))] == 2
    total = found[("ztpki_node_request_duration_seconds_sum", (("endpoint", "simpleenroll"),))]
    assert abs(total - 0.204) < 1e-9


def test_issued_and_handshakes_add_up_across_workers() -> None:
    one, two = NodeMetrics(), NodeMetrics()
    one.count_issued("default")
    two.count_issued("default")
    two.count_issued("meters")
    one.count_handshake_failure("certificate has expired")
    total = NodeMetrics()
    for worker in (one, two):
        total.add(json.loads(json.dumps(worker.snapshot())))
    found = samples(total.exposition())
    assert found[("ztpki_node_certificates_issued_total", (("label", "default"),))] == 2
    assert found[("ztpki_node_certificates_issued_total", (("label", "meters"),))] == 1
    reason = (("reason", "certificate has expired"),)
    assert found[("ztpki_node_tls_handshake_failures_total", reason)] == 1


def test_in_flight_is_this_worker_now_plus_the_others_at_their_answer() -> None:
    busy = [3]
    here, there = NodeMetrics(), NodeMetrics()
    here.watch_in_flight(lambda: busy[0])
    there.watch_in_flight(lambda: 2)
    total = NodeMetrics()
    total.add(here.snapshot())
    total.add(there.snapshot())
    busy[0] = 0  # later changes are not the scrape's
    text = total.exposition(Gauges(in_flight=total.in_flight(), workers=2))
    assert samples(text)[("ztpki_node_requests_in_flight", ())] == 5
    assert samples(text)[("ztpki_node_workers", ())] == 2


def test_the_revocation_queue_and_devices_are_gauges() -> None:
    text = NodeMetrics().exposition(
        Gauges(devices={"listed": 4}, revocations={"waiting": 1, "pending": 2})
    )
    found = samples(text)
    assert found[("ztpki_node_revocation_queue", (("status", "pending"),))] == 2
    assert found[("ztpki_node_devices", (("state", "listed"),))] == 4
    assert "# TYPE ztpki_node_revocation_queue gauge" in text


def test_a_snapshot_without_the_new_series_is_refused_whole() -> None:
    old_worker = {"requests": [["cacerts", "served", 1]], "unauthenticated": {}}
    total = NodeMetrics()
    try:
        total.add(old_worker)
    except ValueError as exc:
        assert "not a metrics snapshot" in str(exc)
    else:
        raise AssertionError("a partial snapshot was added")
    assert total.requests() == {}


def test_handshake_reasons_come_from_openssl_not_from_the_peer() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "Certificate Has Expired"
    assert handshake_reason(verify) == "certificate has expired"
    other = ssl.SSLError(1, "x")
    other.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert handshake_reason(other) == "peer_did_not_return_a_certificate"
    assert handshake_reason(ssl.SSLError()) == "sslerror"
