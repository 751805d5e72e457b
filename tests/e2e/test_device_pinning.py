"""Pinning the node's CA, end to end: real CA systems, real nodes, the real CLI, real TLS.

Node NL is made by `ztpki node init` with a server certificate from the customer's own
``services`` CA (outside the factory's) and given as the leaf alone: it never sends its CA.
A device pinning that CA by fingerprint alone cannot check it; given the CA certificate
(--node-ca FILE) it can. Node N (the factory's ``servers`` CA, whole chain) stands for a node
of another CA under the same pin.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.device_fixtures import World, take_device, world, ztpki

from ztpki.device import DeviceMemory, Phase
from ztpki.pki.pem import certificate_pem, fingerprint_sha256, load_certificates_pem

__all__ = ["world"]  # the session fixture, shared with the other device modules

STEPS = ["load", "connect", "cacerts", "request", "verify", "replace", "confirm"]


@dataclass(frozen=True)
class LeafOnlyNode:
    url: str
    ca_file: Path  # the services CA certificate, as the node's operator hands it out
    fingerprint: str  # sha256:HEX of it


@pytest.fixture(scope="module")
def leaf_node(world: World) -> LeafOnlyNode:
    source, target = world.path("service-cert"), world.path("leaf-only-cert")
    target.mkdir()
    chain = load_certificates_pem((source / "cert.pem").read_bytes())
    (target / "cert.pem").write_bytes(certificate_pem(chain[0]))
    shutil.copy(source / "key.pem", target / "key.pem")
    service = world.init_node("NL", "leaf-only-cert")
    services_ca = world.path("C", "cas", "services", "ca.pem")
    ca = load_certificates_pem(services_ca.read_bytes())[0]
    assert chain[0].issuer == ca.subject
    return LeafOnlyNode(
        f"https://{service.address}", services_ca, f"sha256:{fingerprint_sha256(ca)}"
    )


def device_cmd(
    command: str, device_id: str, world: World, *args: str
) -> subprocess.CompletedProcess[str]:
    return ztpki(  # type: ignore[no-any-return]
        "device", command, "--device", str(world.device(device_id)), *args, check=False
    )


def flat(text: str) -> str:
    return " ".join(text.split())


def steps_of(output: str) -> list[str]:
    return [line[1 : line.index("]")] for line in output.splitlines() if line.startswith("[")]


def assert_untouched(world: World, device_id: str, node: str) -> None:
    """The device kept its temporary identity; the node and its CA system did nothing."""
    assert DeviceMemory.open(world.device(device_id)).phase is Phase.TEMPORARY
    assert world.register(node)[device_id]["state"] == "listed"
    assert world.issued(device_id) == []


def test_ok_node_init_warns_about_a_leaf_only_server_chain(
    world: World, leaf_node: LeafOnlyNode
) -> None:
    said = flat(world.init_output["NL"])
    assert "warning:" in said
    assert "without the CA certificate that issued it (CN=services,O=Customer)" in said
    assert "ztpki device set-node --node-ca FILE" in said
    assert f"{world.path('NL', 'server', 'cert.pem')}" in said
    # Control: node N's chain is whole and chains to the factory bundle: no warning about it
    # (its manufacturer's missing CRL source is warned about, for both nodes alike).
    control = flat(world.init_output["N"])
    assert "server" not in control and "set-node" not in control and "issued it" not in control
    assert control.count("warning:") == 1 and "checked for revocation" in control


def test_leaf_only_node_needs_the_ca_certificate(world: World, leaf_node: LeafOnlyNode) -> None:
    device_id = take_device(world)
    node = ["--node", leaf_node.url]

    plain = device_cmd("activate", device_id, world, *node)
    assert plain.returncode == 1, plain.stderr
    assert "--node-ca FILE" in flat(plain.stderr)

    pinned = device_cmd("activate", device_id, world, *node, "--node-ca-fingerprint",
                        leaf_node.fingerprint)  # fmt: skip
    assert pinned.returncode == 1, pinned.stderr
    message = flat(pinned.stderr)
    assert "step connect failed" in message
    assert f"did not send the pinned CA {leaf_node.fingerprint}" in message
    assert "ends at its own certificate, issued by CN=services,O=Customer" in message
    assert "--node-ca FILE" in message and "stale" not in message
    assert_untouched(world, device_id, "NL")

    done = device_cmd("activate", device_id, world, *node, "--node-ca", str(leaf_node.ca_file))

    assert done.returncode == 0, done.stderr
    assert list(dict.fromkeys(steps_of(done.stdout))) == STEPS  # connect: probe, then TLS
    assert "chains to the pinned CA CN=services,O=Customer" in done.stdout
    shown = json.loads(device_cmd("show", device_id, world, "--json").stdout)
    assert shown["phase"] == "customized"
    assert shown["pinned_node_ca"]["fingerprint"] == leaf_node.fingerprint
    assert shown["pinned_node_ca"]["certificate"]["subject"] == "CN=services,O=Customer"
    assert world.register("NL")[device_id]["state"] == "customized"
    assert world.active(device_id) == [shown["certificate"]["serial"]]


def test_fail_node_ca_and_fingerprint_that_disagree_store_nothing(
    world: World, leaf_node: LeafOnlyNode
) -> None:
    device_id = take_device(world)
    config = world.device(device_id) / "config.json"
    before = config.read_bytes()
    root = load_certificates_pem(world.path("C", "cas", "root", "ca.pem").read_bytes())[0]
    wrong = ["--node-ca", str(leaf_node.ca_file), "--node-ca-fingerprint", fingerprint_sha256(root)]

    for command, node in (("set-node", [leaf_node.url]), ("activate", ["--node", leaf_node.url])):
        result = device_cmd(command, device_id, world, *node, *wrong)
        assert result.returncode == 2, result.stderr
        message = flat(result.stderr)
        assert "--node-ca and --node-ca-fingerprint" in message
        assert f"not the pinned sha256:{fingerprint_sha256(root)}" in message
        assert config.read_bytes() == before
    assert_untouched(world, device_id, "NL")


def test_fail_node_of_another_ca_under_the_pin(world: World, leaf_node: LeafOnlyNode) -> None:
    """Node N's certificate (the factory's servers CA, whole chain) under a device that pins
    the services CA by its certificate: refused as a stale pin, nothing sent or issued. The
    agent then reads the pin that set-node stored and customizes the device at NL."""
    device_id = take_device(world)
    ca = ["--node-ca", str(leaf_node.ca_file)]

    refused = device_cmd("activate", device_id, world, "--node", world.node_url, *ca)

    assert refused.returncode == 1, refused.stderr
    message = flat(refused.stderr)
    assert "does not match the pin: its certificate chains to CN=root,O=Acme" in message
    assert "not to the pinned CA CN=services,O=Customer" in message
    assert "the pin is stale" in message
    assert_untouched(world, device_id, "N")

    stored = device_cmd("set-node", device_id, world, leaf_node.url, *ca)
    assert stored.returncode == 0, stored.stderr
    agent = device_cmd("agent", device_id, world, "--once", "--timeout", "60")
    assert agent.returncode == 0, agent.stderr
    assert "chains to the pinned CA CN=services,O=Customer" in agent.stdout
    assert world.register("NL")[device_id]["state"] == "customized"
    assert world.register("N")[device_id]["state"] == "listed"
    assert len(world.active(device_id)) == 1
