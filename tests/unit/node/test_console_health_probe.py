"""The CA health probe against in-process TLS servers on 127.0.0.1:0: a server that accepts
the probe's client certificate is reachable; one that refuses it after the handshake (TLS 1.3
sends that refusal once the handshake is done) and one that hangs up are not, each with its
reason (asyncio reads a TLS 1.3 refusal and a hang-up alike)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztpki.credentials import client_context, server_context
from ztpki.node.console.health import HUNG_UP, probe_ca_system
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key

NOW = datetime.now(UTC)


def _certificate(
    name: str, key: PrivateKey, *, issuer: tuple[x509.Name, PrivateKey] | None = None
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(days=1))
    )
    if issuer is None:  # a CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), False
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
    return builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]


def _pki(name: str) -> tuple[x509.Certificate, x509.Certificate, PrivateKey]:
    """A CA, and a leaf of it for 127.0.0.1 (server and client) with its key."""
    ca_key, leaf_key = generate_private_key(KeySpec.EC_P256), generate_private_key(KeySpec.EC_P256)
    ca = _certificate(f"{name} CA", ca_key)
    return ca, _certificate(name, leaf_key, issuer=(ca.subject, ca_key)), leaf_key


async def _serve(
    client_anchors: list[x509.Certificate] | None,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    server: tuple[x509.Certificate, x509.Certificate, PrivateKey],
) -> asyncio.Server:
    context = server_context(
        server[2],
        [server[1]],
        client_anchors=client_anchors,
        require_client_cert=client_anchors is not None,
        on_refusal=lambda *_: None,
    )
    return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)


async def _wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # a CA system waiting for a request
    writer.close()


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


def _probe(
    anchors: list[x509.Certificate] | None,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[bool, float | None, str | None]:
    server_pki, node_pki = _pki("ca-system"), _pki("node")
    ours = client_context(key=node_pki[2], chain=[node_pki[1]], server_anchors=[server_pki[0]])

    async def run() -> tuple[bool, float | None, str | None]:
        server = await _serve([node_pki[0]] if anchors is None else anchors, handler, server_pki)
        async with server:
            port = server.sockets[0].getsockname()[1]
            probe = await probe_ca_system("127.0.0.1", port, ours)
        return probe.reachable, probe.latency_ms, probe.error

    return asyncio.run(run())


def test_ok_a_ca_system_accepting_the_node_is_reachable_with_its_latency() -> None:
    reachable, latency, error = _probe(None, _wait)
    assert reachable and latency is not None and latency > 0 and error is None


def test_fail_a_ca_system_refusing_the_nodes_certificate_is_named() -> None:
    reachable, latency, error = _probe([_pki("another")[0]], _wait)
    assert not reachable and latency is not None  # the handshake itself went through
    assert error is not None and "refuse" in error and "CA-client certificate" in error


def test_fail_a_ca_system_hanging_up_is_not_reachable() -> None:
    reachable, _, error = _probe(None, _hang_up)
    assert not reachable and error == HUNG_UP
