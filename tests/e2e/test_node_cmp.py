"""CMP (RFC 9483) through the customer node with `openssl cmp` (OpenSSL 3.0) as the device.

Real processes on loopback: factory CA system, customer CA system, `ztpki node serve`, over
TLS. The device's temporary certificate and key protect its ir; the node answers signed with
its TLS server certificate, which openssl verifies against the factory root.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from node_fixtures import Device, NodeWorld, build_world
from tests.support.shell import sh

from ztpki.pki.pem import load_certificates_pem, serial_hex


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    w = build_world(tmp_path_factory.mktemp("node-cmp"))
    try:
        yield w
    finally:
        w.stop()


def cmp_prelude(world: NodeWorld, path: str = ".well-known/cmp") -> str:
    """The options every `openssl cmp` call here shares: the node over TLS, trusted by the
    factory root (for TLS and for the node's CMP signature alike)."""
    return (
        f"CA={world.factory_anchor}\n"
        f'CMP="openssl cmp -server {world.node.address} -path {path} -tls_used '
        f'-tls_trusted $CA -trusted $CA"\n'
    )


def enroll_ir(world: NodeWorld, device: Device, cwd: Path, *extra: str) -> str:
    """ir + certConf with the temporary certificate and key; the new certificate in new.pem."""
    script = (
        cmp_prelude(world)
        + f"""
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out new.key
$CMP -cmd ir -cert {device.cert_path} -key {device.key_path} -newkey new.key \\
  -subject "/CN={device.device_id}/serialNumber={device.device_id}" -certout new.pem {" ".join(extra)}
"""
    )
    result = sh(script, cwd)
    return result.stdout + result.stderr


def test_ok_openssl_ir_and_certconf_customize_the_device(world: NodeWorld, tmp_path: Path) -> None:
    (device,) = world.make_devices(1)
    log = enroll_ir(world, device, tmp_path)
    assert "received IP" in log and "received PKICONF" in log, log
    issued = load_certificates_pem((tmp_path / "new.pem").read_bytes())[0]
    assert issued.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == (
        device.device_id
    )
    assert world.state(device.device_id) == "customized"
    assert [r["serial"] for r in world.active(device.device_id)] == [serial_hex(issued)]
    decisions = [e["decision"] for e in world.audit(device.device_id)]
    assert "issued" in decisions and "confirmed" in decisions
