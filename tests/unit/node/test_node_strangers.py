"""Refusals before authentication: counted exactly, logged at a bounded rate, exposed at
/metrics; the TLS layer reports each refused handshake to the node's hook."""

from __future__ import annotations

import logging
import ssl

import pytest
from node_pki import PKI, leaf

from ztpki.credentials import client_context, server_context
from ztpki.node.metrics import NodeMetrics
from ztpki.node.strangers import StrangerRefusals, UnauthenticatedReason
from ztpki.pki.profiles import CertificateProfile
from ztpki.throttle import LogThrottle


def test_ok_counted_exactly_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    metrics = NodeMetrics()
    logger = logging.getLogger("test.strangers")
    throttle = LogThrottle(logger, burst=3, interval=60.0, clock=lambda: 0.0)
    strangers = StrangerRefusals(metrics, throttle=throttle)
    caplog.set_level(logging.INFO, "test.strangers")
    for _ in range(25):
        strangers.request(
            UnauthenticatedReason.NO_CERTIFICATE,
            "est/default/simpleenroll",
            "simpleenroll needs a TLS client certificate",
            peer="192.0.2.7",
        )
    strangers.request(
        UnauthenticatedReason.CERTIFICATE_REFUSED, "est/default/csrattrs", "no", peer=None
    )
    assert metrics.unauthenticated() == {"no-client-certificate": 25, "certificate-refused": 1}
    # 3 of the flood, one line saying more are suppressed, and the other reason's own line.
    assert len(caplog.records) == 5
    assert "192.0.2.7" in caplog.records[0].getMessage()
    exposition = metrics.exposition()
    assert "# TYPE ztpki_node_unauthenticated_refusals_total counter" in exposition
    series = 'ztpki_node_unauthenticated_refusals_total{reason="no-client-certificate"}'
    assert f"{series} 25.0" in exposition


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLError | None:
    """A whole handshake over memory BIOs; the server's error, if it refused."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname="node.example")
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    server_done = client_done = False
    for _ in range(20):
        if not client_done:
            try:
                tls_client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return None  # the client gave up: not the server's refusal
        s_in.write(c_out.read())
        if not server_done:
            try:
                tls_server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                return exc
        c_in.write(s_out.read())
        if server_done and client_done:
            return None
    raise AssertionError("the handshake neither finished nor failed")


@pytest.mark.parametrize("with_certificate", [False, True], ids=["fail-no-cert", "ok-device"])
def test_tls_refusals_reach_the_hook(with_certificate: bool) -> None:
    pki = PKI.create()
    server_key, server_cert = leaf(
        pki.factory_root, "node.example", profile=CertificateProfile.SERVER
    )
    refused: list[ssl.SSLError] = []
    server = server_context(
        server_key,
        [server_cert],
        client_anchors=[pki.factory_root.certificate],
        require_client_cert=True,
        on_refusal=refused.append,
    )
    key, cert = pki.temporary("ACME-1")
    client = client_context(
        key=key if with_certificate else None,
        chain=[cert, pki.factory_ca.certificate] if with_certificate else [],
        server_anchors=[pki.factory_root.certificate],
        check_hostname=False,
    )
    error = _handshake(server, client)
    if with_certificate:
        assert error is None and refused == []  # the negative control
    else:
        assert error is not None and refused == [error]
