"""Protocol attacks on the customer node's EST server: malformed and oversized bodies, wrong
media types, oversized request heads, old TLS, slow clients and a flood of idle connections.

After each case: the answer, the register and audit trail (a refusal of an identified device is
audited; nothing changes), nothing issued, and a fresh device customizing itself (during the
attack, for the slow and flooding clients).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
import time
from typing import Any

import pytest
from tests.attacks.attack_deployment import NODE_LIMITS, Deployment, DeviceUnderTest
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import (
    Observed,
    RawTLS,
    https_context,
    legacy_tls_context,
    tls_handshake,
)

from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.protocol.est import build_csr, encode_csr

pytestmark = pytest.mark.timeout(240)

CATEGORY = "protocol"
KEEPALIVE = NODE_LIMITS["keepalive_timeout"]
BODY_TIMEOUT = NODE_LIMITS["body_timeout"]
ENROLL = "/.well-known/est/simpleenroll"


def _csr(device: DeviceUnderTest) -> bytes:
    return encode_csr(build_csr(generate_private_key(KeySpec.EC_P256), device_id=device.device_id))


def _record(report: AttackReport, case: str, attack: str, observed: str, verdict: str) -> None:
    report.record(
        case=f"{CATEGORY}/node-{case}",
        category=CATEGORY,
        attack=f"node: {attack}",
        observed=observed,
        verdict=verdict,
    )


def _device_tls(d: Deployment, device: DeviceUnderTest) -> ssl.SSLContext:
    return https_context(key=device.key, chain=[device.certificate], anchors=d.node_anchors)


def _anonymous_tls(d: Deployment) -> ssl.SSLContext:
    return https_context(key=None, chain=[], anchors=d.node_anchors)


def _expect(obs: Observed, status: int, phrase: str) -> str:
    assert obs.status == status, obs.summary()
    assert phrase.lower() in obs.text.lower(), (phrase, obs.text)
    return obs.summary()


# --- bodies of an authenticated device --------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "attack", "body", "headers", "status", "phrase"),
    [
        pytest.param(
            "malformed-base64",
            "simpleenroll whose body is not base64",
            b"!!!! this is not base64 ****\n",
            {},
            400,
            "base64",
            id="fail-malformed-base64",
        ),
        pytest.param(
            "malformed-der",
            "simpleenroll whose base64 body decodes to bytes that are not DER",
            base64.b64encode(b"\x30\x82\x7f\xff" + b"\x00" * 64),
            {},
            400,
            "not a DER PKCS#10",
            id="fail-malformed-der",
        ),
        pytest.param(
            "wrong-content-type",
            "simpleenroll with Content-Type application/json",
            b'{"csr": "x"}',
            {"Content-Type": "application/json"},
            415,
            "application/pkcs10",
            id="fail-content-type",
        ),
        pytest.param(
            "missing-content-type",
            "simpleenroll without a Content-Type",
            None,
            {"Content-Type": ""},
            415,
            "application/pkcs10",
            id="fail-no-content-type",
        ),
        pytest.param(
            "unknown-transfer-encoding",
            "simpleenroll with Content-Transfer-Encoding: quoted-printable",
            None,
            {"Content-Transfer-Encoding": "quoted-printable"},
            400,
            "transfer",
            id="fail-transfer-encoding",
        ),
    ],
)
def test_fail_malformed_body(
    deployment: Deployment,
    attack_report: AttackReport,
    case: str,
    attack: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    phrase: str,
) -> None:
    d = deployment
    device = d.take_device()
    before = d.snapshot()
    obs = d.est(
        "simpleenroll",
        key=device.key,
        chain=[device.certificate],
        body=body if body is not None else _csr(device),
        headers=headers,
    )
    answer = _expect(obs, status, phrase)
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "")])
    _record(attack_report, case, attack, f"{answer}; {checked}; {d.serve_next_device()}", "refused")


def _post_head(length: int | None, *, chunked: bool = False) -> bytes:
    head = f"POST {ENROLL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/pkcs10\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    else:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


def test_fail_oversized_body_announced(deployment: Deployment, attack_report: AttackReport) -> None:
    """Content-Length of 100 MiB: refused from the head, before the body is read."""
    d = deployment
    device = d.take_device()
    before = d.snapshot()
    with RawTLS(d.node_address, _device_tls(d, device)) as conn:
        conn.send(_post_head(100 * 1024 * 1024) + b"A" * 4096)
        obs = conn.read_response()
    d.transcript.add("oversized body", obs.summary())
    answer = _expect(obs, 413, "over the limit")
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "limit")])
    _record(
        attack_report,
        "oversized-body",
        "simpleenroll announcing a 100 MiB body (Content-Length), then sending 4 KiB of it",
        f"{answer} (answered from the head, without reading the body); {checked}; "
        + d.serve_next_device(),
        "refused",
    )


def test_fail_oversized_chunked_body(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    before = d.snapshot()
    chunk = b"%x\r\n%s\r\n" % (8192, b"A" * 8192)
    with RawTLS(d.node_address, _device_tls(d, device)) as conn:
        conn.send(_post_head(None, chunked=True))
        with contextlib.suppress(OSError):
            for _ in range(16):  # 128 KiB, twice the limit, with no length announced
                conn.send(chunk)
        obs = conn.read_response()
    d.transcript.add("oversized chunked body", obs.summary())
    answer = _expect(obs, 413, "limit")
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "limit")])
    _record(
        attack_report,
        "oversized-chunked-body",
        "simpleenroll with a chunked body of 128 KiB (twice the 64 KiB limit, no length given)",
        f"{answer}; {checked}; {d.serve_next_device()}",
        "refused",
    )


# --- oversized request heads (refused before any routing: no identity, no audit entry) -------


HEADS = [
    pytest.param(
        "oversized-header",
        "a request with one 64 KiB header line",
        b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n",
        id="fail-big-header",
    ),
    pytest.param(
        "too-many-headers",
        "a request with 500 header lines",
        b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
        + b"\r\n",
        id="fail-many-headers",
    ),
    pytest.param(
        "oversized-request-line",
        "a request line of 20 KB (a path of 20,000 characters)",
        b"GET /.well-known/est/" + b"a" * 20000 + b"/cacerts HTTP/1.1\r\nHost: x\r\n\r\n",
        id="fail-long-request-line",
    ),
]


@pytest.mark.parametrize(("case", "attack", "request_bytes"), HEADS)
def test_fail_oversized_head(
    deployment: Deployment,
    attack_report: AttackReport,
    case: str,
    attack: str,
    request_bytes: bytes,
) -> None:
    d = deployment
    before = d.snapshot()
    with RawTLS(d.node_address, _anonymous_tls(d)) as conn:
        with contextlib.suppress(OSError):
            conn.send(request_bytes)
        obs = conn.read_response()
    d.transcript.add(case, obs.summary())
    assert obs.status in (400, 413, 414, 431) or obs.tls_refused, obs.summary()
    if obs.status is not None:
        assert obs.status != 200
    checked = d.check_unchanged(
        before, unaudited_because="refused while reading the request head, before any identity"
    )
    _record(
        attack_report,
        case,
        attack,
        f"{obs.summary()}; {checked}; {d.serve_next_device()}",
        "refused",
    )


def test_fail_request_paths(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    before = d.snapshot()
    unknown = d.est(
        "simpleenroll",
        key=device.key,
        chain=[device.certificate],
        body=_csr(device),
        label="no-such-ca",
    )
    traversal = d.est(
        "simpleenroll",
        key=device.key,
        chain=[device.certificate],
        body=_csr(device),
        label="..%2F..%2Fetc%2Fpasswd",
    )
    put = d.est(
        "simpleenroll", key=device.key, chain=[device.certificate], body=_csr(device), method="PUT"
    )
    assert unknown.status == 404 and "no EST label" in unknown.text, unknown.summary()
    assert traversal.status == 404, traversal.summary()
    assert put.status == 405, put.summary()
    checked = d.check_unchanged(before, unaudited_because="refused by routing")
    _record(
        attack_report,
        "unknown-label-traversal-method",
        "simpleenroll under an unknown EST label, under a label '../../etc/passwd' "
        "(percent-encoded), and with method PUT",
        f"{unknown.summary()}; traversal: HTTP {traversal.status}; PUT: HTTP {put.status}; "
        f"{checked}; {d.serve_next_device()}",
        "refused",
    )


def test_fail_no_client_certificate(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    before = d.snapshot()
    obs = d.est("simpleenroll", key=None, chain=[], body=_csr(device))
    answer = _expect(obs, 401, "needs a TLS client certificate")
    checked = d.check_unchanged(
        before,
        unaudited_because="an anonymous request names no device and is not audited, so "
        "strangers cannot grow the audit trail",
    )
    _record(
        attack_report,
        "no-client-certificate",
        "simpleenroll over TLS without a client certificate (an anonymous caller)",
        f"{answer}; {checked}; {d.serve_next_device()}",
        "refused",
    )


def test_fail_legacy_tls(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    before = d.snapshot()
    mark = d.log_mark()
    refused = tls_handshake(d.node_address, legacy_tls_context(d.node_anchors))
    assert refused is not None, "the node completed a TLS 1.0/1.1 handshake"
    logged = d.tls_refusal(mark)
    assert "unsupported protocol" in logged, logged
    checked = d.check_unchanged(before, unaudited_because="refused in the TLS handshake")
    _record(
        attack_report,
        "tls-1.0-1.1",
        "a client offering only TLS 1.0 and TLS 1.1",
        f"TLS handshake refused, no session; the node logged 'TLS handshake failed: "
        f"{logged}'; {checked}; {d.serve_next_device()}",
        "refused",
    )


# --- slow and flooding clients ------------------------------------------------------------------


def _trickle(conn: RawTLS, data: bytes, stop: threading.Event, every: float) -> threading.Thread:
    def run() -> None:
        for byte in data:
            if stop.wait(every):
                return
            try:
                conn.send(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_contained_slow_headers(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    d.reserve(1)  # the device served during the attack
    before = d.snapshot()
    stop = threading.Event()
    with RawTLS(d.node_address, _anonymous_tls(d)) as slow:
        started = time.monotonic()
        slow.send(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sender = _trickle(slow, b"X-Slow: " + b"a" * 400, stop, 0.2)
        served = d.serve_next_device()  # while the slow client holds its connection
        closed = slow.closed_within(KEEPALIVE + 10)
        lasted = time.monotonic() - started
        stop.set()
        sender.join(timeout=5)
    assert closed is not None, "the node never closed the slow client"
    assert KEEPALIVE - 0.5 <= lasted <= KEEPALIVE + 10, lasted
    checked = d.check_unchanged_except_served(before)
    _record(
        attack_report,
        "slow-headers",
        "a request head sent one byte every 0.2 s, never finished (slowloris)",
        f"connection closed by the node after its {KEEPALIVE:.0f} s header timeout "
        f"(keepalive_timeout), within the bound; {served} during the attack; {checked}",
        "contained",
    )


def test_contained_slow_body(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    body = _csr(device)
    before = d.snapshot()
    stop = threading.Event()
    with RawTLS(d.node_address, _device_tls(d, device)) as slow:
        started = time.monotonic()
        slow.send(_post_head(len(body)))
        sender = _trickle(slow, body, stop, 0.2)
        obs = slow.read_response()
        lasted = time.monotonic() - started
        stop.set()
        sender.join(timeout=5)
    d.transcript.add("slow body", obs.summary())
    answer = _expect(obs, 408, "did not arrive")
    assert BODY_TIMEOUT - 0.5 <= lasted <= BODY_TIMEOUT + 10, lasted
    checked = d.check_unchanged(before, audited=[(device.device_id, "refused", "did not arrive")])
    _record(
        attack_report,
        "slow-body",
        "simpleenroll whose body (a valid CSR) is sent one byte every 0.2 s",
        f"{answer} (the body timeout); {checked}; " + d.serve_next_device(),
        "contained",
    )


def _flood(
    address: tuple[str, int],
    context: ssl.SSLContext,
    count: int,
    opened: threading.Event,
    results: dict[str, Any],
    wait: float,
) -> None:
    async def main() -> None:
        slots = asyncio.Semaphore(50)

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            async with slots:
                return await asyncio.open_connection(
                    *address, ssl=context, server_hostname=address[0]
                )

        connections = await asyncio.gather(
            *(connect() for _ in range(count)), return_exceptions=True
        )
        held = [c for c in connections if not isinstance(c, BaseException)]
        results["opened"] = len(held)
        results["errors"] = [repr(c) for c in connections if isinstance(c, BaseException)][:3]
        opened.set()

        async def closed_by_server(reader: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(reader.read(), wait) == b""
            except TimeoutError:
                return False
            except (ssl.SSLError, OSError):
                return True

        results["closed"] = sum(await asyncio.gather(*(closed_by_server(r) for r, _ in held)))
        results["seconds"] = time.monotonic() - results["start"]
        for _, writer in held:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    results["start"] = time.monotonic()
    asyncio.run(main())


def test_contained_many_idle_connections(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    d.reserve(1)  # the device served during the attack
    before = d.snapshot()
    opened = threading.Event()
    results: dict[str, Any] = {}
    flood = threading.Thread(
        target=_flood,
        args=(d.node_address, _anonymous_tls(d), 300, opened, results, KEEPALIVE + 20),
        daemon=True,
    )
    flood.start()
    assert opened.wait(60), "could not open the connections"
    served = d.serve_next_device()  # while the connections are held
    flood.join(timeout=60)
    assert results["opened"] == 300, results
    assert results["closed"] == 300, results
    checked = d.check_unchanged_except_served(before)
    _record(
        attack_report,
        "many-idle-connections",
        "300 TLS connections (no client certificate) opened at once and held idle",
        f"all 300 accepted; {served} while they were held; the node closed every one of them "
        f"after its {KEEPALIVE:.0f} s idle timeout; {checked}",
        "contained",
    )
