"""Automatic revocation by the node, end to end: real `ztpki ca serve` and `ztpki node serve`.

The node revokes at the customer CA system every certificate its register retires: the
unconfirmed ones a retry supersedes, a renewal's predecessor once the renewed one is used,
a blocked device's (on hold, released by unblock) and a retired device's (for good). What the
CA system recorded is read with `ztpki ca status`, in its own process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from node_fixtures import Device, NodeWorld, build_world, cli, ztpki
from tests.attacks.attack_deployment import wait_until

from ztpki.pki.keys import KeySpec, PrivateKey, decode_pkcs8, generate_private_key
from ztpki.pki.pem import serial_hex
from ztpki.protocol.est import decode_certs_only, decode_serverkeygen

# The sender looks at the queue often and retries a CA system that is down within a second.
SETTINGS = {
    "revocation": {"poll_seconds": 0.2, "retry_max_seconds": 1.0},
    # Renewals under "meters" keep the previous certificate an hour after the new one is used.
    "ca": {"meters": {"superseded_grace_seconds": 3600}},
}
WAIT = 60.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    built = build_world(tmp_path_factory.mktemp("revocation"), settings=SETTINGS)
    try:
        yield built
    finally:
        built.stop()


def ca_status(world: NodeWorld, serial: str, *, ca: str = "operational") -> dict[str, Any]:
    result = ztpki(
        "ca", "status", "--dir", str(world.customer_dir), "--name", ca, "--serial", serial, "--json"
    )
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def reason_at_ca(world: NodeWorld, serial: str, *, ca: str = "operational") -> str | None:
    """None while the CA system calls the certificate good; its reason once revoked."""
    status = ca_status(world, serial, ca=ca)
    return None if status["status"] == "good" else str(status["reason"])


def wait_for_reason(
    world: NodeWorld, serial: str, expected: str | None, *, ca: str = "operational"
) -> None:
    assert wait_until(lambda: reason_at_ca(world, serial, ca=ca) == expected, timeout=WAIT), (
        f"{serial} at CA {ca}: {ca_status(world, serial, ca=ca)}, expected {expected}"
    )


def devices_json(world: NodeWorld) -> dict[str, dict[str, Any]]:
    rows = json.loads(cli("node", "devices", "--dir", str(world.node_dir), "--json"))
    return {row["device_id"]: row for row in rows}


def decisions(world: NodeWorld, device_id: str) -> list[tuple[str, str | None]]:
    return [(e["decision"], e["serial"]) for e in world.audit(device_id)]


def serverkeygen(world: NodeWorld, device: Device) -> tuple[x509.Certificate, PrivateKey]:
    answer = world.post_csr(device, "serverkeygen", device.csr())
    assert answer.status == 200, answer.text
    parsed = decode_serverkeygen(answer.headers["Content-Type"], answer.body)
    return parsed.certificates[0], decode_pkcs8(parsed.private_key_der, passphrase=None)


def customized(world: NodeWorld, device: Device) -> tuple[x509.Certificate, PrivateKey]:
    """An enrolled and confirmed device: its operational certificate and key."""
    certificate, key = serverkeygen(world, device)
    confirm = world.request("GET", world.url("cacerts"), context=world.context(certificate, key))
    assert confirm.status == 200
    assert world.state(device.device_id) == "customized"
    return certificate, key


def test_ok_three_serverkeygen_answers_leave_one_valid_certificate(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    serials = [serial_hex(serverkeygen(world, device)[0]) for _ in range(3)]
    first, second, live = serials
    wait_for_reason(world, first, "superseded")
    wait_for_reason(world, second, "superseded")
    assert reason_at_ca(world, live) is None  # negative control: the live one stays good
    trail = decisions(world, device.device_id)
    for serial in (first, second):
        assert ("revocation-requested", serial) in trail
        assert ("revoked", serial) in trail
    assert not any(serial == live for _, serial in trail if _.startswith("revo"))
    assert devices_json(world)[device.device_id]["revocations"] == []


def test_ok_block_holds_and_unblock_releases(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    certificate, key = customized(world, device)
    serial = serial_hex(certificate)
    cli("node", "block", "--dir", str(world.node_dir), device.device_id)
    wait_for_reason(world, serial, "certificateHold")
    refused = world.request("GET", world.url("csrattrs"), context=world.context(certificate, key))
    assert refused.status == 403
    cli("node", "unblock", "--dir", str(world.node_dir), device.device_id)
    wait_for_reason(world, serial, None)
    assert ("released", serial) in decisions(world, device.device_id)
    again = world.request("GET", world.url("csrattrs"), context=world.context(certificate, key))
    assert again.status == 200, again.text


def test_ok_retire_revokes_for_good_and_refuses_the_device(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    certificate, key = customized(world, device)
    serial = serial_hex(certificate)
    node_dir = str(world.node_dir)
    cli("node", "retire", "--dir", node_dir, device.device_id, "--reason", "keyCompromise")
    wait_for_reason(world, serial, "keyCompromise")
    assert devices_json(world)[device.device_id]["state"] == "retired"
    operational = world.request(
        "GET", world.url("csrattrs"), context=world.context(certificate, key)
    )
    assert operational.status == 403 and "retired" in operational.text
    temporary = world.post_csr(device, "serverkeygen", device.csr())
    assert temporary.status == 403 and "retired" in temporary.text
    # Nothing was issued after the retirement, and the device cannot be blocked back to life.
    assert world.active(device.device_id) == []
    blocked = ztpki("node", "block", "--dir", node_dir, device.device_id, check=False)
    assert blocked.returncode != 0 and "retired" in blocked.stderr + blocked.stdout
    assert world.state(device.device_id) == "retired"


def test_ok_hold_queued_while_ca_system_is_down_is_sent_when_it_is_back(
    world: NodeWorld,
) -> None:
    (device,) = world.make_devices(1)
    certificate, _ = customized(world, device)
    serial = serial_hex(certificate)
    world.customer.stop()
    try:
        cli("node", "block", "--dir", str(world.node_dir), device.device_id)

        def deferred() -> bool:
            orders = devices_json(world)[device.device_id]["revocations"]
            return bool(orders) and orders[0]["attempts"] >= 1

        assert wait_until(deferred, timeout=WAIT)
        (order,) = devices_json(world)[device.device_id]["revocations"]
        assert order["status"] == "pending" and order["reason"] == "certificateHold"
        assert order["serial"] == serial and order["last_error"]
        table = cli("node", "devices", "--dir", str(world.node_dir))
        assert "certificateHold" in table and "pending" in table
    finally:
        world.restart_customer()
    wait_for_reason(world, serial, "certificateHold")
    assert wait_until(
        lambda: devices_json(world)[device.device_id]["revocations"] == [], timeout=WAIT
    )
    trail = [d for d, s in decisions(world, device.device_id) if s == serial]
    assert trail.index("revocation-requested") < trail.index("revocation-deferred")
    assert trail[-1] == "revoked"
    verify = cli("node", "audit", "--dir", str(world.node_dir), "--verify")
    assert "audit trail OK" in verify


def renew(
    world: NodeWorld,
    device: Device,
    certificate: x509.Certificate,
    key: PrivateKey,
    *,
    label: str | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    new_key = generate_private_key(KeySpec.EC_P256)
    answer = world.post_csr(
        device,
        "simplereenroll",
        device.csr(new_key),
        label=label,
        context=world.context(certificate, key),
    )
    assert answer.status == 200, answer.text
    (renewed,) = decode_certs_only(answer.body)
    return renewed, new_key


def test_ok_renewal_revokes_the_previous_certificate_once_the_new_one_is_used(
    world: NodeWorld,
) -> None:
    (device,) = world.make_devices(1)
    old, old_key = customized(world, device)
    renewed, new_key = renew(world, device, old, old_key)
    # Not before the device used the renewed certificate: its answer may still be lost.
    assert reason_at_ca(world, serial_hex(old)) is None
    (order,) = devices_json(world)[device.device_id]["revocations"]
    assert order["status"] == "waiting" and order["serial"] == serial_hex(old)
    used = world.request("GET", world.url("csrattrs"), context=world.context(renewed, new_key))
    assert used.status == 200
    wait_for_reason(world, serial_hex(old), "superseded")  # grace 0 (node-wide default)
    assert reason_at_ca(world, serial_hex(renewed)) is None
    assert ("renewal-confirmed", serial_hex(renewed)) in decisions(world, device.device_id)


def test_ok_label_grace_keeps_the_previous_certificate_valid(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    answer = world.post_csr(device, "serverkeygen", device.csr(), label="meters")
    assert answer.status == 200, answer.text
    parsed = decode_serverkeygen(answer.headers["Content-Type"], answer.body)
    old = parsed.certificates[0]
    old_key = decode_pkcs8(parsed.private_key_der, passphrase=None)
    context = world.context(old, old_key)
    assert world.request("GET", world.url("cacerts", "meters"), context=context).status == 200
    renewed, new_key = renew(world, device, old, old_key, label="meters")
    used = world.request(
        "GET", world.url("csrattrs", "meters"), context=world.context(renewed, new_key)
    )
    assert used.status == 200
    (order,) = devices_json(world)[device.device_id]["revocations"]
    assert order["status"] == "pending" and order["serial"] == serial_hex(old)
    assert order["due_at"] > order["created_at"]
    assert reason_at_ca(world, serial_hex(old), ca="meters") is None  # within its hour


def test_ok_hold_and_release_queued_while_down_reach_the_ca_system_in_order(
    world: NodeWorld,
) -> None:
    (device,) = world.make_devices(1)
    certificate, key = customized(world, device)
    serial = serial_hex(certificate)
    node_dir = str(world.node_dir)
    world.customer.stop()
    try:
        cli("node", "block", "--dir", node_dir, device.device_id)
        cli("node", "unblock", "--dir", node_dir, device.device_id)
        orders = devices_json(world)[device.device_id]["revocations"]
        assert [(o["action"], o["status"]) for o in orders] == [
            ("revoke", "pending"),
            ("release", "pending"),
        ]
    finally:
        world.restart_customer()
    assert wait_until(
        lambda: devices_json(world)[device.device_id]["revocations"] == [], timeout=WAIT
    )
    assert reason_at_ca(world, serial) is None  # held, then released: good again
    done = [
        d
        for d, s in decisions(world, device.device_id)
        if s == serial and d in ("revoked", "released")
    ]
    assert done == ["revoked", "released"]
    used = world.request("GET", world.url("csrattrs"), context=world.context(certificate, key))
    assert used.status == 200, used.text
