"""Attacks on the revocation publisher (`ca serve --http-listen`): hostile OCSP requests,
oversized and slow bodies, foreign issuers, nonce replay, paths that try to leave cas/.

The target is the deployment's factory CA system, served with --http-listen by one more
`ztpki ca serve` on the same directory (the deployment's own service keeps its XML port).
After each case: the answer, the factory store unchanged (nothing issued, nothing revoked),
and a legitimate OCSP query still answered "good" and verified.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from tests.attacks.attack_deployment import Deployment
from tests.attacks.attack_report import AttackReport
from tests.support.ocsp import HTTPAnswer, exchange, http_address, post_ocsp, request_der
from tests.support.services import Service, start

from ztpki.casystem.publisher import PublisherLimits
from ztpki.pki.ocsp import MAX_REQUEST_SIZE
from ztpki.protocol.enrollment import EnrollmentAnswer

pytestmark = pytest.mark.timeout(240)

CATEGORY = "revocation"
BODY_TIMEOUT = PublisherLimits().body_timeout


@dataclass
class Target:
    d: Deployment
    service: Service
    http: tuple[str, int]
    leaf: x509.Certificate  # a certificate the factory CA issued: its answer is "good"
    issuer: x509.Certificate

    def state(self) -> tuple[int, int]:
        """(certificates issued, revocations recorded) by the factory CA system."""
        store = self.d.root / "factory" / "store.sqlite"
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30) as db:
            revoked = db.execute("SELECT count(*) FROM revocation").fetchone()[0]
        return self.d.issued_count("factory"), int(revoked)

    def control(self, before: tuple[int, int]) -> str:
        assert self.state() == before, "the attack changed the factory store"
        answer = post_ocsp(self.http, request_der(self.leaf, self.issuer)).ocsp()
        assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        answer.certificates[0].verify_directly_issued_by(self.issuer)
        return "store unchanged; a legitimate OCSP query still answered good"


@pytest.fixture(scope="module")
def target(deployment: Deployment) -> Iterator[Target]:
    d = deployment
    log = d.logs / f"factory-http-{os.urandom(3).hex()}.log"
    service = start(
        ["ca", "serve", "--dir", str(d.factory_dir), "--listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0", "--key-workers", "1"],
        log_path=log,
        env=d.ca_env("factory"),
    )  # fmt: skip
    try:
        answer = d.enroll_factory(f"ctl-ocsp-{time.monotonic_ns()}")
        assert isinstance(answer, EnrollmentAnswer)
        leaf = x509.load_der_x509_certificate(answer.certificate_der)
        issuer = x509.load_der_x509_certificate(answer.ca_certificates_der[0])
        yield Target(d, service, http_address(service), leaf, issuer)
    finally:
        service.stop()


def _status(answer: HTTPAnswer) -> ocsp.OCSPResponseStatus:
    return answer.ocsp().response_status


def test_fail_garbage_bodies(target: Target, attack_report: AttackReport) -> None:
    before = target.state()
    seen = []
    for body in (
        b"",
        b"\x00" * 64,
        os.urandom(512),
        b"\x30\x84\xff\xff\xff\xff",
        b"GET / HTTP/1.1",
    ):
        answer = post_ocsp(target.http, body)
        assert _status(answer) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        assert answer.headers["cache-control"] == "no-store"
        seen.append(answer.status)
    attack_report.record(
        case=f"{CATEGORY}/ocsp-garbage-request",
        category=CATEGORY,
        attack="OCSP POSTs of an empty body, zeros, random bytes, a DER length of 4 GiB, text",
        observed=f"HTTP {sorted(set(seen))} with OCSP malformedRequest each; "
        + target.control(before),
        verdict="refused",
    )


def test_fail_several_certificates_and_bad_nonces(
    target: Target, attack_report: AttackReport
) -> None:
    before = target.state()
    # cryptography builds one certificate per request: the second Request is added in DER.
    doubled = _two_requests(request_der(target.leaf, target.issuer))
    answers = {
        "two certificates": post_ocsp(target.http, doubled),
        "a 33-octet nonce": post_ocsp(
            target.http, request_der(target.leaf, target.issuer, nonce=b"n" * 33)
        ),
    }
    for answer in answers.values():
        assert _status(answer) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    attack_report.record(
        case=f"{CATEGORY}/ocsp-several-certificates-or-oversized-nonce",
        category=CATEGORY,
        attack="an OCSP request listing two certificates; one with a 33-octet nonce (RFC 8954 "
        "allows 32)",
        observed="OCSP malformedRequest for both; " + target.control(before),
        verdict="refused",
    )


def test_fail_oversized_bodies(target: Target, attack_report: AttackReport) -> None:
    before = target.state()
    declared = exchange(
        target.http, "POST", "/ocsp", b"\x30" * (MAX_REQUEST_SIZE + 1),
        {"Content-Type": "application/ocsp-request"},
    )  # fmt: skip
    assert declared.status == 413, declared
    chunked = _raw(
        target.http,
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"1000\r\n" + b"\x30" * 0x1000 + b"\r\n" for _ in range(64))
        + b"0\r\n\r\n",
    )
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:80]
    long_get = exchange(target.http, "GET", "/ocsp/" + "A" * 20_000)
    assert 400 <= long_get.status < 500, long_get.status
    attack_report.record(
        case=f"{CATEGORY}/ocsp-oversized-request",
        category=CATEGORY,
        attack=f"a {MAX_REQUEST_SIZE + 1}-octet OCSP POST, a 256 KiB chunked one with no "
        "length, a 20,000-character GET path",
        observed=f"HTTP 413, 413, {long_get.status}; " + target.control(before),
        verdict="refused",
    )


def test_fail_slow_body_is_cut_off(target: Target, attack_report: AttackReport) -> None:
    before = target.state()
    started = time.monotonic()
    answer = _raw(
        target.http,
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
        b"Content-Length: 100\r\n\r\n\x30",
        timeout=BODY_TIMEOUT + 30,
    )
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert waited < BODY_TIMEOUT + 10
    attack_report.record(
        case=f"{CATEGORY}/ocsp-slow-body",
        category=CATEGORY,
        attack="an OCSP POST announcing 100 octets that sends one and then nothing",
        observed=f"HTTP 408 after {BODY_TIMEOUT:.0f} s; " + target.control(before),
        verdict="refused",
    )


def test_fail_foreign_issuer_is_unauthorized(target: Target, attack_report: AttackReport) -> None:
    before = target.state()
    customer = target.d.certificates("customer/cas/devices/ca.pem")[0]
    # A CertID of another CA system's CA, with the serial of a certificate this one issued.
    answer = post_ocsp(target.http, request_der(target.leaf, customer))
    assert _status(answer) is ocsp.OCSPResponseStatus.UNAUTHORIZED
    attack_report.record(
        case=f"{CATEGORY}/ocsp-foreign-issuer",
        category=CATEGORY,
        attack="an OCSP request naming the customer CA as issuer (a CA this system does not "
        "hold) with the serial of a certificate the factory CA did issue",
        observed="OCSP unauthorized (no status said for a CA not served); "
        + target.control(before),
        verdict="refused",
    )


def test_fail_nonce_replay_of_a_cached_answer(target: Target, attack_report: AttackReport) -> None:
    """A pre-signed (cached) answer is never served to a request with a nonce: a replayed
    answer could not carry the client's fresh nonce, and the responder signs anew."""
    before = target.state()
    cached = post_ocsp(target.http, request_der(target.leaf, target.issuer))
    assert cached.headers["cache-control"].startswith("max-age=")
    nonces = [os.urandom(16), os.urandom(16)]
    answers = [
        post_ocsp(target.http, request_der(target.leaf, target.issuer, nonce=n)) for n in nonces
    ]
    for nonce, answer in zip(nonces, answers, strict=True):
        assert answer.body != cached.body
        echoed = answer.ocsp().extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        assert echoed == nonce
        assert answer.headers["cache-control"] == "no-store"
    assert answers[0].body != answers[1].body
    attack_report.record(
        case=f"{CATEGORY}/ocsp-nonce-replay",
        category=CATEGORY,
        attack="fetch the cached (pre-signed) answer, then ask again with two fresh nonces, as "
        "a client that would accept a replayed answer",
        observed="each nonce echoed in its own freshly signed answer (no-store), never the "
        "cached bytes; " + target.control(before),
        verdict="refused",
    )


def test_fail_wrong_method_content_type_and_paths(
    target: Target, attack_report: AttackReport
) -> None:
    before = target.state()
    der = request_der(target.leaf, target.issuer)
    found = {
        "PUT /ocsp": exchange(target.http, "PUT", "/ocsp", der).status,
        "POST text/plain": exchange(
            target.http, "POST", "/ocsp", der, {"Content-Type": "text/plain"}
        ).status,
        "GET /crl/../store": exchange(target.http, "GET", "/crl/../store.sqlite").status,
        "GET /crl/%2e%2e%2fstore": exchange(target.http, "GET", "/crl/%2e%2e%2fstore.crl").status,
        "GET /crl/service.crl": exchange(target.http, "GET", "/crl/service.crl").status,
        "GET /ocsp/not-base64": exchange(target.http, "GET", "/ocsp/%00%01!!").status,
    }
    assert found["PUT /ocsp"] == 405 and found["POST text/plain"] == 415
    assert found["GET /crl/../store"] == 404 and found["GET /crl/%2e%2e%2fstore"] == 404
    assert found["GET /crl/service.crl"] == 404
    bad_get = exchange(target.http, "GET", "/ocsp/%00%01!!")
    assert _status(bad_get) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    attack_report.record(
        case=f"{CATEGORY}/publisher-methods-and-paths",
        category=CATEGORY,
        attack="PUT /ocsp; POST with text/plain; CRL paths that climb out of cas/ (plain and "
        "percent-encoded) or name the service CA; a GET whose path is not base64",
        observed=", ".join(f"{k}: HTTP {v}" for k, v in found.items())
        + " (malformedRequest); "
        + target.control(before),
        verdict="refused",
    )


# --- helpers -----------------------------------------------------------------------------


def _two_requests(single: bytes) -> bytes:
    """The OCSPRequest with its one Request repeated (requestList of two)."""
    from pyasn1_alt_modules import rfc6960

    from ztpki.pki.asn1 import decode_der, encode_der

    request = decode_der(single, rfc6960.OCSPRequest(), what="OCSP request")
    requests = request["tbsRequest"]["requestList"]
    requests.append(requests[0])
    return encode_der(request)


def _raw(address: tuple[str, int], data: bytes, *, timeout: float = 30) -> bytes:
    with socket.create_connection(address, timeout=timeout) as conn:
        # The server may answer and close before taking the whole body.
        with contextlib.suppress(OSError):
            conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received:
                break
        return received
