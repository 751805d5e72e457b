"""Using the new identity: a service that trusts only the customer CA, before and after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.e2e.device_fixtures import tls_service
from tests.unit.device.fake_node import Pki, issue, serving

from ztpki.device import (
    ActivatingClient,
    DeviceMemory,
    NodeAddress,
    connect,
    identity_ssl_context,
    operational_ssl_context,
)
from ztpki.errors import DeviceMemoryError, NotAuthenticated
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.profiles import CertificateProfile


def test_customer_service_accepts_only_the_customized_device(tmp_path: Path) -> None:
    pki = Pki()
    memory = pki.manufacture(tmp_path / "dev", "ACME-0001")
    server_key = generate_private_key(KeySpec.EC_P256)
    server_cert = issue(
        pki.customer,
        server_key.public_key(),
        "service",
        profile=CertificateProfile.SERVER,
        ip="127.0.0.1",
    )
    customer_root = pki.customer_root.certificate
    with tls_service(server_key, [server_cert, pki.customer.certificate], [customer_root]) as url:
        # Before: the temporary identity is refused by the service.
        with pytest.raises(DeviceMemoryError, match="not customized"):
            operational_ssl_context(memory)
        before = identity_ssl_context(memory, server_anchors=[customer_root])
        with pytest.raises(NotAuthenticated):
            connect(url, before, timeout=10)

        async def customize() -> None:
            async with serving(pki) as node:
                await ActivatingClient(memory, NodeAddress.parse(node.url), timeout=10).activate()

        asyncio.run(customize())
        # After: the operational identity, trusting the customer CA it came with.
        response = connect(url, operational_ssl_context(DeviceMemory.open(memory.path)))
        assert (response.status, response.body) == (200, b"hello ACME-0001\n")
