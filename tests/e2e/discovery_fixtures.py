"""A world where devices find their node by themselves, built inside a private network
namespace (only loopback, multicast on it), so mDNS never leaves the test.

Besides node N (factory ``servers`` CA, IP name only) it has:

* ``G``, the genuine node: a certificate from the factory ``servers`` CA for
  ``genuine.ztpki.test``, announced with ``--announce``;
* ``R``, the rogue: a real node that lists the same devices and would customize them, but
  whose certificate (for ``rogue.ztpki.test``) comes from the customer's ``services`` CA,
  outside the factory's; announced as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.device_fixtures import World, build_world, ztpki
from tests.support.netns import NetworkNamespace

from ztpki.device import DeviceMemory

GENUINE_HOST = "genuine.ztpki.test"
ROGUE_HOST = "rogue.ztpki.test"


@dataclass
class DiscoveryWorld:
    world: World
    ns: NetworkNamespace

    def device(self, device_id: str) -> str:
        return str(self.world.device(device_id))

    def temporary_serial(self, device_id: str) -> str:
        memory = DeviceMemory.open(self.world.device(device_id))
        cert = memory.identity().certificate
        assert cert is not None
        return format(cert.serial_number, "x")


def _server_cert(world: World, ca: str, client: str, ca_name: str, host: str, out: str) -> None:
    root = world.root
    ztpki("ca", "add-client", "--dir", str(root / ca), "--name", client,
          "--out", str(root / client), "--ca", ca_name, "--dns", "*.ztpki.test",
          "--ip", "127.0.0.1")  # fmt: skip
    ztpki("node", "request-server-cert", "--ca", world.services[ca].address,
          "--client-cred", str(root / client), "--ca-name", ca_name, "--dns", host,
          "--ip", "127.0.0.1", "--out", str(root / out))  # fmt: skip


def build_discovery_world(root: Path, ns: NetworkNamespace, *, devices: int) -> DiscoveryWorld:
    with ns:
        world = build_world(root, devices=devices)
        try:
            _server_cert(world, "F", "F-genuine", "servers", GENUINE_HOST, "genuine-cert")
            _server_cert(world, "C", "C-rogue", "services", ROGUE_HOST, "rogue-cert")
            world.init_node(
                "G",
                "genuine-cert",
                serve=["--announce", "--announce-priority", "5", "--workers", "2"],
            )
            world.init_node("R", "rogue-cert", serve=["--announce", "--workers", "1"])
        except BaseException:
            world.stop()
            raise
    return DiscoveryWorld(world, ns)


@pytest.fixture(scope="module")
def discovery_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiscoveryWorld]:
    ns = NetworkNamespace()
    built = build_discovery_world(tmp_path_factory.mktemp("discovery"), ns, devices=12)
    try:
        yield built
    finally:
        with ns:
            built.world.stop()
        ns.close()
