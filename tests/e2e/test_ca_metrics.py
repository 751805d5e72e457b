"""`GET /metrics` on `ztpki ca serve --http-listen`: what a CA system did, read with curl
and parsed by prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.casystem_fixtures import CASystemUnderTest, enroll_all, leaf_of
from tests.support.ocsp import http_address, post_ocsp, request_der

from ztpki.casystem.client import CAClient
from ztpki.credentials import client_context
from ztpki.errors import NotAuthorized
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import serial_hex
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest
from ztpki.protocol.revocation import RevocationRequest
from ztpki.store.records import RevocationReason

pytestmark = pytest.mark.timeout(300)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def curl(*args: str) -> str:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class World:
    def __init__(self, system: CASystemUnderTest, http: tuple[str, int]) -> None:
        self.system, self.http = system, http
        self._n = 0

    def new_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{os.getpid()}-{self._n}"

    def scrape(self) -> tuple[str, Samples]:
        text = curl("--fail", f"http://{self.http[0]}:{self.http[1]}/metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        return text, samples

    def issue(self, count: int) -> list[x509.Certificate]:
        requests = [EnrollmentRequest(self.new_id("r"), self.new_id("d")) for _ in range(count)]
        answers = asyncio.run(enroll_all(self.system, requests))
        leaves = []
        for answer in answers:
            assert isinstance(answer, EnrollmentAnswer), answer
            leaves.append(leaf_of(answer))
        return leaves

    def revoke(self, leaf: x509.Certificate, reason: str) -> None:
        async def run() -> None:
            client = CAClient(self.system.address, self.system.credential("line1"))
            try:
                await client.revoke(
                    RevocationRequest(
                        self.new_id("v"),
                        "factory",
                        serial_hex(leaf),
                        None,
                        RevocationReason(reason),
                    )
                )
            finally:
                await client.close()

        asyncio.run(run())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("ca-metrics")
    (base / "logs").mkdir()
    system = CASystemUnderTest(base / "system", base / "logs")
    system.init_ca("factory", "--default")
    system.add_client("line1")
    service = system.start("--http-listen", "127.0.0.1:0", "--key-workers", "1")
    try:
        yield World(system, http_address(service))
    finally:
        system.stop()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_issuance_revocation_ocsp_and_crl_are_counted(world: World) -> None:
    _, before = world.scrape()
    leaf, other = world.issue(2)
    world.revoke(leaf, "keyCompromise")
    issuer = world.system.ca_certificate("factory")
    assert post_ocsp(world.http, request_der(other, issuer)).status == 200
    assert post_ocsp(world.http, request_der(other, issuer, nonce=os.urandom(16))).status == 200
    text, after = world.scrape()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("ztpki_ca_certificates_issued_total", ca="factory") == 2
    assert grew("ztpki_ca_requests_total", kind="enroll", outcome="answered") == 2
    assert grew("ztpki_ca_requests_total", kind="revoke", outcome="answered") == 1
    revoked = {"ca": "factory", "reason": "keyCompromise"}
    assert grew("ztpki_ca_certificates_revoked_total", **revoked) == 1
    assert grew("ztpki_ca_ocsp_responses_total", kind="cacheable") == 1
    assert grew("ztpki_ca_ocsp_responses_total", kind="nonce") == 1
    assert grew("ztpki_ca_http_requests_total", endpoint="ocsp", status="200") == 2
    assert grew("ztpki_ca_request_duration_seconds_count", kind="enroll") == 2
    # The revocation re-signed the CRL at once: a newer number, and a nextUpdate ahead.
    assert value(after, "ztpki_ca_crl_number", ca="factory") > value(
        before, "ztpki_ca_crl_number", ca="factory"
    )
    next_update = value(after, "ztpki_ca_crl_next_update_timestamp_seconds", ca="factory")
    assert time.time() < next_update <= time.time() + 25 * 3600
    assert value(after, "ztpki_ca_connections") >= 0
    assert "# TYPE ztpki_database_commits_total counter" in text
    assert serial_hex(leaf) not in text and "keyCompromise" in text


def test_a_refusal_is_counted_by_its_code(world: World) -> None:
    _, before = world.scrape()
    with pytest.raises(NotAuthorized, match="may not use CA 'nosuch'"):
        world.system.enroll(EnrollmentRequest(world.new_id("r"), world.new_id("d"), ca="nosuch"))
    _, after = world.scrape()
    outcome = {"kind": "enroll", "outcome": "refused-not-authorized"}
    assert value(after, "ztpki_ca_requests_total", **outcome) == (
        value(before, "ztpki_ca_requests_total", **outcome) + 1
    )


def test_a_refused_tls_handshake_is_counted_by_openssls_reason(world: World) -> None:
    _, before = world.scrape()
    key = generate_private_key(KeySpec.EC_P256)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(9)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip
    anchors = world.system.credential("line1").trust_anchors
    context = client_context(key=key, chain=[cert], server_anchors=anchors)
    context.check_hostname = False
    with (
        socket.create_connection(world.system.address, timeout=30) as raw,
        context.wrap_socket(raw) as tls,
        # TLS 1.3: the server judges the client certificate after the client finished.
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
    ):
        tls.sendall(b"\x00\x00\x00\x01x")
        if not tls.recv(1):
            raise ConnectionError("closed")
    _, after = world.scrape()
    key_name = ("reason", "self-signed certificate")
    grown = value(after, "ztpki_ca_tls_handshake_failures_total", reason=key_name[1]) - value(
        before, "ztpki_ca_tls_handshake_failures_total", reason=key_name[1]
    )
    assert grown == 1


def test_paths_become_a_fixed_endpoint_label(world: World) -> None:
    probe = f"/nothing-{os.urandom(4).hex()}"
    base = f"http://{world.http[0]}:{world.http[1]}"
    curl("-o", "/dev/null", base + probe)
    post = curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", base + "/metrics")
    assert post.strip() == "405"
    text, samples = world.scrape()
    assert probe not in text
    assert value(samples, "ztpki_ca_http_requests_total", endpoint="other", status="404") >= 1
    assert value(samples, "ztpki_ca_http_requests_total", endpoint="metrics", status="405") >= 1
