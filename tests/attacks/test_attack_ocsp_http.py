"""Attacks on the publisher's own HTTP/1.1 server (casystem.ocsp_http, `ca serve
--http-listen`): request smuggling, header floods, pipelined floods that never read.

Same target as test_attack_ocsp.py (the factory CA system served with --http-listen by one
more `ztpki ca serve`); after each case the factory store is unchanged and a legitimate OCSP
query is still answered "good" and verified.
"""

from __future__ import annotations

import socket

import pytest
from tests.attacks.attack_report import AttackReport
from tests.attacks.test_attack_ocsp import CATEGORY, Target, _raw
from tests.attacks.test_attack_ocsp import target as target  # the module's fixture, shared
from tests.support.ocsp import request_der

from ztpki.casystem.ocsp_http import PublisherLimits

pytestmark = pytest.mark.timeout(240)

LIMITS = PublisherLimits()


def _post(der: bytes, *extra: bytes) -> bytes:
    return (
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
        + b"".join(extra) + b"Content-Length: %d\r\n\r\n" % len(der) + der
    )  # fmt: skip


def test_fail_request_smuggling(target: Target, attack_report: AttackReport) -> None:
    """Content-Length and chunked at once, a chunked body hiding a second request: a proxy
    and the publisher reading the framing differently is how a request is smuggled."""
    before = target.state()
    hidden = b"PUT /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    smuggled = (
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden
    )
    answer = _raw(target.http, smuggled)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert answer.count(b"HTTP/1.1") == 1  # the hidden request was never answered
    gzip = _raw(target.http, _post(b"0", b"Transfer-Encoding: gzip\r\n"))
    assert gzip.startswith(b"HTTP/1.1 400") or gzip.startswith(b"HTTP/1.1 501"), gzip[:80]
    attack_report.record(
        case=f"{CATEGORY}/http-request-smuggling",
        category=CATEGORY,
        attack="a POST with both Content-Length and Transfer-Encoding: chunked whose body "
        "hides a second request; a POST with Transfer-Encoding: gzip",
        observed="HTTP 400 and the connection closed (the hidden request never answered); "
        f"{gzip[9:12].decode()} for gzip; " + target.control(before),
        verdict="refused",
    )


def test_fail_header_floods(target: Target, attack_report: AttackReport) -> None:
    before = target.state()
    der = request_der(target.leaf, target.issuer)
    many = _raw(target.http, _post(der, *(b"X-%d: y\r\n" % n for n in range(LIMITS.max_headers))))
    long = _raw(target.http, _post(der, b"X-Long: " + b"y" * LIMITS.max_field_size + b"\r\n"))
    line = _raw(target.http, b"GET /ocsp/" + b"A" * LIMITS.max_line_size + b" HTTP/1.1\r\n\r\n")
    found = [r[9:12].decode() for r in (many, long, line)]
    assert found == ["431", "431", "414"], found
    attack_report.record(
        case=f"{CATEGORY}/http-header-flood",
        category=CATEGORY,
        attack=f"an OCSP POST with {LIMITS.max_headers + 3} header fields, one with a "
        f"{LIMITS.max_field_size}-octet field, a GET whose request line is over "
        f"{LIMITS.max_line_size} octets",
        observed=f"HTTP {', '.join(found)}, each connection closed; " + target.control(before),
        verdict="refused",
    )


def test_fail_pipelined_flood_that_never_reads(target: Target, attack_report: AttackReport) -> None:
    """Thousands of pipelined requests from a client that reads no answer: the publisher
    stops reading that connection when its answers back up, and keeps serving others."""
    before = target.state()
    # ~100 MB: more than the kernel's buffers on both sides can hold (tcp_rmem and
    # tcp_wmem allow 32 and 4 MB here), so a sender can only get it all out if the
    # publisher keeps reading (and buffering answers) for a client that reads none.
    flood = _post(request_der(target.leaf, target.issuer)) * 500_000
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        conn.settimeout(5)
        conn.connect(target.http)
        sent = 0
        try:
            while sent < len(flood):
                sent += conn.send(flood[sent : sent + 65536])
        except TimeoutError:
            pass  # the server stopped reading: what is being checked
        # While the flooding connection is held open, unread, others are served.
        observed = target.control(before)
    assert sent < len(flood), "the publisher read every pipelined request of a non-reader"
    attack_report.record(
        case=f"{CATEGORY}/http-pipelined-flood",
        category=CATEGORY,
        attack=f"{len(flood) // 2**20} MiB of pipelined OCSP POSTs on one connection that "
        "never reads an answer",
        observed=f"the publisher stopped reading that connection after {sent // 2**20} MiB "
        "(its answers unread, nothing more parsed); " + observed,
        verdict="refused",
    )
