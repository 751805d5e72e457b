"""Pinning the node's CA: the certificate itself (--node-ca) or its fingerprint alone.

Against an in-process EST node over real TLS on loopback, whose server certificate comes from
a CA outside the factory's and which may send that certificate alone (a leaf-only chain).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.unit.device.fake_node import Pki, issue, make_root, make_sub, serving

from ztpki.cli import cli
from ztpki.device import ActivatingClient, ActivationError, DeviceMemory, NodePin, Phase, Step
from ztpki.device.customer_node import (
    NODE_CA_CERT_KEY,
    NODE_CA_KEY,
    NODE_URL_KEY,
    NodeAddress,
    choose_pin,
    configured_node,
    node_changes,
)
from ztpki.device.node_trust import PinMismatch, PinNotPresented
from ztpki.errors import ConfigurationError
from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import certificate_pem, fingerprint_sha256

NODE = "https://127.0.0.1:28443"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def stranger() -> CertificateAuthority:
    """The root of the node's CA, outside the factory's."""
    return make_root("Stranger Root")


@pytest.fixture(scope="module")
def node_ca(stranger: CertificateAuthority) -> CertificateAuthority:
    """The CA that issues the node's server certificate, under ``stranger``."""
    return make_sub(stranger, "Stranger Node CA")


@pytest.fixture
def memory(pki: Pki, tmp_path: Path) -> DeviceMemory:
    return pki.manufacture(tmp_path / "dev", "ACME-0001")


def refused(
    pki: Pki,
    memory: DeviceMemory,
    pin: NodePin,
    server_ca: CertificateAuthority,
    *,
    leaf_only: bool = False,
) -> ActivationError:
    """Activate under ``pin`` at a node whose certificate ``server_ca`` issued: refused at
    connect, before the device presented its certificate, its identity unchanged."""

    async def scenario() -> tuple[ActivationError, list[tuple[str, str, str]]]:
        async with serving(pki, server_ca=server_ca, leaf_only=leaf_only) as node:
            with pytest.raises(ActivationError) as info:
                await ActivatingClient(
                    memory, NodeAddress.parse(node.url), pin=pin, timeout=10
                ).activate()
            return info.value, node.calls

    error, calls = asyncio.run(scenario())
    assert error.step is Step.CONNECT
    assert calls == []  # the device's certificate was never presented
    assert memory.phase is Phase.TEMPORARY
    return error


# -- the device against a node that sends its certificate alone ----------------------------


def test_ok_node_ca_file_verifies_a_leaf_only_node(
    pki: Pki, memory: DeviceMemory, node_ca: CertificateAuthority
) -> None:
    fingerprint = fingerprint_sha256(node_ca.certificate)
    # The fingerprint alone: the node never sends the CA, so it cannot be checked.
    error = refused(pki, memory, NodePin(fingerprint), node_ca, leaf_only=True)
    assert isinstance(error.cause, PinNotPresented)
    assert "did not send the pinned CA" in error.message
    assert "--node-ca FILE" in error.remedy and f"sha256:{fingerprint}" in error.remedy
    assert "stale" not in error.remedy

    async def scenario() -> None:
        async with serving(pki, server_ca=node_ca, leaf_only=True) as node:
            # The CA certificate itself: the node verifies with nothing more from it.
            pin = NodePin.given(fingerprint=None, certificate=node_ca.certificate)
            result = await ActivatingClient(
                memory, NodeAddress.parse(node.url), pin=pin, timeout=10
            ).activate()
            assert result.action == "activated"
            assert [c[0] for c in node.calls] == ["cacerts", "serverkeygen", "csrattrs"]

    asyncio.run(scenario())
    address, stored = configured_node(memory.config())
    assert stored is not None and stored.certificate == node_ca.certificate
    assert stored.fingerprint == fingerprint and address is not None


@pytest.mark.parametrize("leaf_only", [True, False], ids=["leaf-only", "whole-chain"])
def test_fail_pinned_ca_file_refuses_a_node_of_another_ca(
    pki: Pki, memory: DeviceMemory, node_ca: CertificateAuthority, leaf_only: bool
) -> None:
    """Under a pinned CA certificate, a node from another CA is refused whether it sends its
    certificate alone or its whole chain; the remedy is the stale pin's."""
    pin = NodePin.given(fingerprint=None, certificate=node_ca.certificate)
    assert pin is not None
    error = refused(pki, memory, pin, pki.rogue, leaf_only=leaf_only)
    assert isinstance(error.cause, PinMismatch)
    assert "the pinned CA CN=Stranger Node CA" in error.message
    assert ("its own certificate, issued by CN=Rogue Root" in error.message) is leaf_only
    assert "the pin is stale" in error.remedy and "--node-ca FILE" in error.remedy


def test_fail_fingerprint_of_another_complete_chain_is_a_mismatch(
    pki: Pki, memory: DeviceMemory, node_ca: CertificateAuthority, stranger: CertificateAuthority
) -> None:
    """The node sends its whole chain and the pinned CA is not in it: a stale pin."""
    error = refused(pki, memory, NodePin(fingerprint_sha256(pki.rogue.certificate)), node_ca)
    assert isinstance(error.cause, PinMismatch)
    assert "does not match the pin" in error.message
    assert f"sha256:{fingerprint_sha256(stranger.certificate)}" in error.message
    assert "the pin is stale" in error.remedy


def test_fail_root_pin_with_the_intermediate_left_out_names_what_is_missing(
    pki: Pki, memory: DeviceMemory, node_ca: CertificateAuthority, stranger: CertificateAuthority
) -> None:
    pin = NodePin(fingerprint_sha256(stranger.certificate))
    error = refused(pki, memory, pin, node_ca, leaf_only=True)
    assert isinstance(error.cause, PinNotPresented)
    assert "ends at its own certificate, issued by CN=Stranger Node CA" in error.message


# -- the pin as data -------------------------------------------------------------------------


def test_ok_pin_from_certificate_fingerprint_or_both(node_ca: CertificateAuthority) -> None:
    cert = node_ca.certificate
    fingerprint = fingerprint_sha256(cert)
    assert NodePin.given(fingerprint=None, certificate=None) is None
    from_cert = NodePin.given(fingerprint=None, certificate=cert)
    assert from_cert is not None and from_cert.fingerprint == fingerprint
    both = NodePin.given(fingerprint=fingerprint.upper(), certificate=cert)
    assert both == from_cert
    # A fingerprint given again alone keeps the stored certificate of the same pin.
    assert choose_pin(NodePin(fingerprint), from_cert) is from_cert
    other = NodePin("ab" * 32)
    assert choose_pin(other, from_cert) is other
    assert choose_pin(None, from_cert) is from_cert


@pytest.mark.parametrize("which", ["mismatch", "not-a-ca"])
def test_fail_pin_that_contradicts_itself(
    pki: Pki, node_ca: CertificateAuthority, which: str
) -> None:
    if which == "mismatch":
        args = {"fingerprint": "ab" * 32, "certificate": node_ca.certificate}
        expected = "not the pinned sha256:" + "ab" * 32
    else:
        leaf = issue(pki.rogue, generate_private_key(KeySpec.EC_P256).public_key(), "node")
        args = {"fingerprint": None, "certificate": leaf}
        expected = "is not a CA certificate"
    with pytest.raises(ConfigurationError, match=expected):
        NodePin.given(**args)  # type: ignore[arg-type]


def test_ok_stored_node_round_trips(node_ca: CertificateAuthority) -> None:
    address = NodeAddress.parse(f"{NODE}/fleet")
    pin = NodePin.given(fingerprint=None, certificate=node_ca.certificate)
    changes = node_changes(address, pin)
    assert configured_node(changes) == (address, pin)
    removed = node_changes(address, None)
    assert removed[NODE_CA_KEY] is None and removed[NODE_CA_CERT_KEY] is None
    assert configured_node({NODE_URL_KEY: str(address)}) == (address, None)
    tampered = {**changes, NODE_CA_KEY: "sha256:" + "ab" * 32}
    with pytest.raises(ConfigurationError, match="not the pinned"):
        configured_node(tampered)


# -- the commands ----------------------------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def write_pem(path: Path, ca: CertificateAuthority) -> Path:
    path.write_bytes(certificate_pem(ca.certificate))
    return path


def test_ok_set_node_stores_and_show_shows_the_pinned_ca(
    memory: DeviceMemory, node_ca: CertificateAuthority, tmp_path: Path
) -> None:
    ca_file = write_pem(tmp_path / "node-ca.pem", node_ca)
    fingerprint = fingerprint_sha256(node_ca.certificate)
    device = str(memory.path)

    result = run("device", "set-node", "--device", device, NODE, "--node-ca", str(ca_file))

    assert result.exit_code == 0, result.output
    assert "CN=Stranger Node CA" in result.output and f"sha256:{fingerprint}" in result.output
    config = memory.config()
    assert config[NODE_CA_KEY] == f"sha256:{fingerprint}"
    assert config[NODE_CA_CERT_KEY] == certificate_pem(node_ca.certificate).decode()
    shown = json.loads(run("device", "show", "--device", device, "--json").output)
    assert shown["pinned_node_ca"]["fingerprint"] == f"sha256:{fingerprint}"
    assert shown["pinned_node_ca"]["certificate"]["subject"] == "CN=Stranger Node CA,O=Test"
    assert NODE_CA_CERT_KEY not in shown["config"]
    table = " ".join(run("device", "show", "--device", device).output.split())
    assert "pinned node CA CN=Stranger Node CA,O=Test sha256:" in table  # the rest: cut to width

    # set-node without pin options states a node without a pin: both are removed.
    result = run("device", "set-node", "--device", device, NODE)
    assert result.exit_code == 0, result.output
    assert "removed the pinned node CA" in result.output
    assert NODE_CA_KEY not in memory.config() and NODE_CA_CERT_KEY not in memory.config()
    assert (
        json.loads(run("device", "show", "--device", device, "--json").output)["pinned_node_ca"]
        is None
    )


@pytest.mark.parametrize("command", ["set-node", "activate", "renew", "agent"])
def test_fail_node_ca_and_fingerprint_that_disagree_store_nothing(
    memory: DeviceMemory, node_ca: CertificateAuthority, tmp_path: Path, command: str
) -> None:
    ca_file = write_pem(tmp_path / "node-ca.pem", node_ca)
    before = (memory.path / "config.json").read_bytes()
    node = [NODE] if command == "set-node" else ["--node", NODE]
    result = run(
        "device", command, "--device", str(memory.path), *node,
        "--node-ca", str(ca_file), "--node-ca-fingerprint", "ab" * 32,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "--node-ca and --node-ca-fingerprint" in message
    assert f"sha256:{fingerprint_sha256(node_ca.certificate)}" in message
    assert (memory.path / "config.json").read_bytes() == before
    assert memory.phase is Phase.TEMPORARY


@pytest.mark.parametrize("content", ["garbage", "leaf", "two", "missing"])
def test_fail_unusable_node_ca_file_is_a_usage_error(
    pki: Pki, memory: DeviceMemory, node_ca: CertificateAuthority, tmp_path: Path, content: str
) -> None:
    ca_file = tmp_path / "node-ca.pem"
    leaf = issue(pki.rogue, generate_private_key(KeySpec.EC_P256).public_key(), "node")
    data = {
        "garbage": b"not a certificate",
        "leaf": certificate_pem(leaf),
        "two": certificate_pem(node_ca.certificate) + certificate_pem(pki.rogue.certificate),
    }
    if content in data:
        ca_file.write_bytes(data[content])
    before = (memory.path / "config.json").read_bytes()
    result = run(
        "device", "set-node", "--device", str(memory.path), NODE, "--node-ca", str(ca_file)
    )
    assert result.exit_code == 2, result.output
    assert "--node-ca" in result.stderr
    assert (memory.path / "config.json").read_bytes() == before
