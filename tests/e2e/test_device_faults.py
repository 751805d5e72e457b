"""Faults on the device's side, end to end: a killed device process, an unexpected node.

The kill is a real SIGKILL the process sends itself at a chosen point
(ZTPKI_DEVICE_FAULT, test only), so the point is exact and the test deterministic.
"""

from __future__ import annotations

import signal
import subprocess

import pytest
from tests.e2e.device_fixtures import World, take_device, world, ztpki

from ztpki.device import DeviceMemory, Phase
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.pem import fingerprint_sha256, load_certificates_pem, serial_hex

__all__ = ["world"]  # the session fixture, shared with the other device modules


def activate(
    world: World,
    device_id: str,
    *extra: str,
    node: str | None = None,
    fault: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    return ztpki(  # type: ignore[no-any-return]
        "device", "activate", "--device", str(world.device(device_id)),
        "--node", node or world.node_url, *extra,
        env={"ZTPKI_DEVICE_FAULT": fault} if fault else None, check=check,
    )  # fmt: skip


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("point", "phase_after_kill", "node_state_after_kill"),
    [
        pytest.param(point, phase, state, id=f"ok-killed-{point}")
        for point, phase, state in [
            ("before-request", Phase.TEMPORARY, "listed"),
            ("after-answer", Phase.TEMPORARY, "issued"),  # the answer was lost on the way
            ("mid-replace", Phase.TEMPORARY, "issued"),
            ("after-replace", Phase.CUSTOMIZED, "issued"),  # not yet confirmed
        ]
    ],
)
@pytest.mark.parametrize("mode", [[], ["--key-on-device"]], ids=["serverkeygen", "simpleenroll"])
def test_killed_device_process_ends_customized_with_one_live_certificate(
    world: World,
    point: str,
    phase_after_kill: Phase,
    node_state_after_kill: str,
    mode: list[str],
) -> None:
    device_id = take_device(world)
    directory = world.device(device_id)

    killed = activate(world, device_id, *mode, fault=point, check=False)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if point == "mid-replace":  # the new identity was being written when the process died
        assert list(directory.glob("identity.json.*.tmp"))
    assert DeviceMemory.open(directory).phase is phase_after_kill
    assert world.register()[device_id]["state"] == node_state_after_kill

    again = activate(world, device_id, *mode)

    memory = DeviceMemory.open(directory)
    assert memory.phase is Phase.CUSTOMIZED and memory.config()["confirmed"] is True
    if point == "after-replace":
        assert "customized but not yet confirmed" in again.stdout
        assert "[request]" not in again.stdout
    cert = memory.identity().certificate
    assert cert is not None
    assert world.active(device_id) == [format(cert.serial_number, "x")]
    assert world.register()[device_id]["state"] == "customized"


@pytest.mark.parametrize("point", ["after-answer", "mid-replace"])
def test_ok_renewal_whose_answer_was_lost_is_retried_to_one_live_certificate(
    world: World, point: str
) -> None:
    device_id = take_device(world)
    directory = world.device(device_id)
    activate(world, device_id, "--key-on-device")
    before = DeviceMemory.open(directory).identity().certificate
    assert before is not None

    renew = ["device", "renew", "--device", str(directory)]
    killed = ztpki(*renew, env={"ZTPKI_DEVICE_FAULT": point}, check=False)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The node issued (and superseded the old certificate); the device still holds the old one.
    assert DeviceMemory.open(directory).identity().certificate == before
    assert (directory / "pending-key.pem").exists()

    ztpki(*renew)  # same pending key -> the node hands the same renewed certificate over again

    memory = DeviceMemory.open(directory)
    renewed = memory.identity().certificate
    assert renewed is not None and renewed.serial_number != before.serial_number
    assert world.active(device_id) == [format(renewed.serial_number, "x")]
    assert world.register()[device_id]["state"] == "customized"
    assert not (directory / "pending-key.pem").exists()


def test_fail_node_presenting_an_unexpected_certificate(world: World) -> None:
    """A node whose certificate is not from the factory's CAs is refused, unless pinned."""
    device_id = take_device(world)
    directory = world.device(device_id)
    before = DeviceMemory.open(directory).identity().certificate
    stranger = world.init_node("N2", "service-cert")  # TLS certificate from the customer's CA
    url = f"https://{stranger.address}"
    try:
        refused = activate(world, device_id, node=url, check=False)
        assert refused.returncode == 1
        message = flat(refused.stderr)
        assert "step connect failed" in message and "cannot verify" in message
        assert "--node-ca-fingerprint" in message
        assert world.register("N2")[device_id]["state"] == "listed"  # nothing was requested

        factory_root = load_certificates_pem(world.path("F", "cas", "root", "ca.pem").read_bytes())
        wrong = activate(
            world, device_id, "--node-ca-fingerprint",
            f"sha256:{fingerprint_sha256(factory_root[0])}", node=url, check=False,
        )  # fmt: skip
        assert wrong.returncode == 1 and "does not match the pin" in flat(wrong.stderr)
        assert DeviceMemory.open(directory).identity().certificate == before

        customer_root = load_certificates_pem(world.path("C", "cas", "root", "ca.pem").read_bytes())
        pin = f"sha256:{fingerprint_sha256(customer_root[0])}"
        pinned = activate(world, device_id, "--node-ca-fingerprint", pin, node=url)
        assert "chains to the pinned CA CN=root,O=Customer" in pinned.stdout
    finally:
        world.stop("N2")
    memory = DeviceMemory.open(directory)
    assert memory.phase is Phase.CUSTOMIZED
    assert memory.config()["node_ca_fingerprint"] == pin


def _resume(world: World, device_id: str, how: str) -> subprocess.CompletedProcess[str]:
    directory = str(world.device(device_id))
    if how == "agent-once":
        return ztpki("device", "agent", "--device", directory, "--once")  # type: ignore[no-any-return]
    return ztpki("device", "activate", "--device", directory)  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["activate", "agent-once"])
@pytest.mark.parametrize("point", ["after-answer", "mid-replace"])
def test_ok_interrupted_renewal_resumed_ends_with_the_live_certificate_on_the_device(
    world: World, point: str, how: str
) -> None:
    """The node issued a renewal the device never installed: resuming must not "confirm"
    the superseded certificate, but fetch the renewed one (same pending key, redelivered)."""
    device_id = take_device(world)
    directory = world.device(device_id)
    activate(world, device_id, "--key-on-device")
    before = DeviceMemory.open(directory).identity().certificate
    assert before is not None
    old = format(before.serial_number, "x")

    killed = ztpki(
        "device", "renew", "--device", str(directory),
        env={"ZTPKI_DEVICE_FAULT": point}, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert DeviceMemory.open(directory).identity().certificate == before
    assert old not in world.active(device_id)  # the node superseded the device's certificate

    resumed = _resume(world, device_id, how)

    memory = DeviceMemory.open(directory)
    held = memory.identity().certificate
    assert held is not None
    assert memory.phase is Phase.CUSTOMIZED and memory.config()["confirmed"] is True
    assert world.active(device_id) == [format(held.serial_number, "x")]
    assert world.register()[device_id]["issued_serial"] == format(held.serial_number, "x")
    assert held.serial_number != before.serial_number
    assert "redelivered" in {r["decision"] for r in world.audit(device_id)}
    assert "[confirm]" in resumed.stdout
    assert not (directory / "pending-key.pem").exists()


def test_ok_resumed_confirmation_retires_the_pending_key(world: World) -> None:
    """Killed after the swap of a device-side key: the confirm-only resume must drop the
    pending key, or the next renewal would ask for a certificate on the same key."""
    device_id = take_device(world)
    directory = world.device(device_id)
    killed = activate(world, device_id, "--key-on-device", fault="after-replace", check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (directory / "pending-key.pem").exists()  # control: the kill left it behind

    again = activate(world, device_id)
    assert "[request]" not in again.stdout
    assert not (directory / "pending-key.pem").exists()

    first = DeviceMemory.open(directory).identity().certificate
    ztpki("device", "renew", "--device", str(directory))
    renewed = DeviceMemory.open(directory).identity().certificate
    assert first is not None and renewed is not None
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key() != first.public_key()
    assert world.active(device_id) == [format(renewed.serial_number, "x")]


def test_ok_set_node_without_a_pin_removes_a_stale_pin(world: World) -> None:
    """A pin that no longer fits the node is reported as such, and `set-node` without
    --node-ca-fingerprint removes it: the device verifies the node with the factory CA again."""
    device_id = take_device(world)
    directory = str(world.device(device_id))
    customer_root = load_certificates_pem(world.path("C", "cas", "root", "ca.pem").read_bytes())
    stale = f"sha256:{fingerprint_sha256(customer_root[0])}"  # N's certificate is the factory's
    ztpki("device", "set-node", "--device", directory, world.node_url,
          "--node-ca-fingerprint", stale)  # fmt: skip

    refused = ztpki("device", "activate", "--device", directory, check=False)
    assert refused.returncode == 1
    message = flat(refused.stderr)
    assert "step connect failed" in message and "pinned CA" in message
    assert f"the device pins the node's CA {stale}" in message
    assert f"ztpki device set-node --device {directory} {world.node_url}" in message
    assert world.register()[device_id]["state"] == "listed"

    unpinned = ztpki("device", "set-node", "--device", directory, world.node_url)
    assert f"removed the pinned node CA {stale}" in flat(unpinned.stdout)
    assert "node_ca_fingerprint" not in DeviceMemory.open(world.device(device_id)).config()

    activate(world, device_id)
    assert DeviceMemory.open(world.device(device_id)).phase is Phase.CUSTOMIZED


def test_fail_confirmation_with_a_superseded_certificate_is_refused(world: World) -> None:
    """Negative control of the resume: without the pending key the device cannot fetch the
    renewed certificate, and the confirmation must then fail, not report success."""
    device_id = take_device(world)
    directory = world.device(device_id)
    activate(world, device_id, "--key-on-device")
    killed = ztpki(
        "device", "renew", "--device", str(directory),
        env={"ZTPKI_DEVICE_FAULT": "mid-replace"}, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (directory / "pending-key.pem").unlink()  # as if the renewal's key were lost

    refused = ztpki("device", "activate", "--device", str(directory), check=False)

    assert refused.returncode == 3
    message = flat(refused.stderr)
    assert "step confirm failed" in message and "(superseded)" in message
    assert "ztpki node audit" in message
    assert DeviceMemory.open(directory).config()["confirmed"] is False


def test_ok_renewal_refused_by_the_node_drops_its_key_and_a_later_one_succeeds(
    world: World,
) -> None:
    """A 4xx is the node's final word on a key: the device must not keep asking with it
    (it would never renew again), and once the cause is gone a renewal uses a new key."""
    device_id = take_device(world)
    directory = world.device(device_id)
    node_dir = str(world.path("N"))
    activate(world, device_id, "--key-on-device")
    first = DeviceMemory.open(directory).identity().certificate
    assert first is not None

    ztpki("node", "block", "--dir", node_dir, device_id)
    refused = ztpki("device", "renew", "--device", str(directory), check=False)
    assert refused.returncode == 3, refused.stderr
    assert "blocked in the customer register" in flat(refused.stderr)
    assert not (directory / "pending-key.pem").exists()
    assert world.active(device_id) == [format(first.serial_number, "x")]  # nothing issued

    ztpki("node", "unblock", "--dir", node_dir, device_id)
    unchanged = activate(world, device_id)  # no renewal to resume: the key was dropped
    assert "nothing to do" in unchanged.stdout and "[request]" not in unchanged.stdout
    ztpki("device", "renew", "--device", str(directory))
    renewed = DeviceMemory.open(directory).identity().certificate
    assert renewed is not None and renewed.public_key() != first.public_key()
    assert world.active(device_id) == [format(renewed.serial_number, "x")]


def test_ok_pending_key_of_an_earlier_identity_is_not_taken_for_a_renewal(world: World) -> None:
    """A device-side key saved for a request made with the temporary certificate, whose
    outcome never arrived, must not turn a later confirm-only resume into a renewal."""
    device_id = take_device(world)
    directory = world.device(device_id)
    memory = DeviceMemory.open(directory)
    temporary = memory.identity().certificate
    assert temporary is not None
    # What a simpleenroll whose answer was lost leaves behind (the node may even be down).
    memory.save_pending_key(generate_private_key(KeySpec.EC_P256), made_with=serial_hex(temporary))
    killed = activate(world, device_id, fault="after-replace", check=False)  # serverkeygen
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    installed = DeviceMemory.open(directory).identity().certificate
    assert installed is not None

    resumed = activate(world, device_id)

    assert "[request]" not in resumed.stdout and "[confirm]" in resumed.stdout
    assert not (directory / "pending-key.pem").exists()
    assert DeviceMemory.open(directory).identity().certificate == installed
    assert world.active(device_id) == [format(installed.serial_number, "x")]


def test_ok_unreadable_pending_key_does_not_stop_a_customized_device(world: World) -> None:
    device_id = take_device(world)
    directory = world.device(device_id)
    activate(world, device_id)
    (directory / "pending-key.pem").write_bytes(b"garbage\n")

    again = activate(world, device_id)

    assert "cannot be read" in again.stdout and "nothing to do" in again.stdout
    assert not (directory / "pending-key.pem").exists()
