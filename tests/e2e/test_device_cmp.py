"""`ztpki device activate/renew --protocol cmp`: ztpki's own activating client over CMP
against a real node (ir + certConf, genm caCerts, kur), with `openssl cmp -cmd genm` as a
third-party client of the node's genm, and the refusals."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from tests.attacks.attack_deployment import wait_until
from tests.e2e.device_fixtures import World, take_device, world, ztpki
from tests.e2e.test_device import flat, steps_of

from ztpki.device import DeviceMemory, Phase
from ztpki.device.cmp_activation import credentials_of, trust_for
from ztpki.device.cmp_client import ID_IT_CA_CERTS, CMPClient
from ztpki.device.cmp_transaction import CMPRefused
from ztpki.errors import VerificationFailed
from ztpki.protocol.cmp import FailInfo, InfoTypeAndValue

__all__ = ["world"]

STEPS = ["load", "connect", "cacerts", "request", "verify", "replace", "confirm"]


def activate_cmp(world: World, device_id: str, *extra: str, check: bool = True):  # type: ignore[no-untyped-def]
    return ztpki(
        "device", "activate", "--device", str(world.device(device_id)),
        "--node", world.node_url, "--protocol", "cmp", "--key-on-device", *extra, check=check,
    )  # fmt: skip


def test_ok_activate_over_cmp(world: World) -> None:
    device_id = take_device(world)
    result = activate_cmp(world, device_id)
    assert steps_of(result.stdout) == STEPS, result.stdout
    out = flat(result.stdout)
    assert "customer CA certificates (with the answer)" in out and "ir: the node answered" in out
    assert "certConf accepted (pkiConf)" in out
    shown = world.show(device_id)
    assert shown["phase"] == "customized" and shown["config"]["confirmed"] is True
    # The CA certificates came with the ip: the new certificate's chain, not the node's.
    assert [c["subject"] for c in shown["ca_certificates"]] == [
        "CN=devices,O=Customer",
        "CN=root,O=Customer",
    ]
    assert world.register()[device_id]["state"] == "customized"
    assert world.active(device_id) == [shown["certificate"]["serial"]]
    decisions = [e["decision"] for e in world.audit(device_id)]
    assert "issued" in decisions and "confirmed" in decisions

    # The device's configuration remembers the protocol it customized with...
    assert shown["config"]["protocol"] == "cmp"
    text = ztpki("device", "show", "--device", str(world.device(device_id))).stdout
    assert "config protocol" in text and "cmp" in text

    # ... so renewal without --protocol is over CMP: kur protected by the operational
    # certificate.
    renewed = ztpki("device", "renew", "--device", str(world.device(device_id)))
    assert "kur: the node answered" in flat(renewed.stdout), renewed.stdout
    again = world.show(device_id)
    assert again["certificate"]["serial"] != shown["certificate"]["serial"]
    assert again["config"]["confirmed"] is True and again["config"]["protocol"] == "cmp"

    # --protocol still overrides, and the configuration then records the new one.
    over_est = ztpki(
        "device", "renew", "--device", str(world.device(device_id)), "--protocol", "est"
    )  # fmt: skip
    assert "simplereenroll" in flat(over_est.stdout), over_est.stdout
    assert "kur" not in flat(over_est.stdout)
    assert world.show(device_id)["config"]["protocol"] == "est"


def test_ok_central_key_generation_over_cmp(world: World) -> None:
    """RFC 9483 4.1.6: the customer CA makes the key; the ip carries it signed by the node and
    enveloped to the temporary key (ECDH); the device opens it, checks it, and confirms."""
    device_id = take_device(world)
    temporary = DeviceMemory.open(world.device(device_id)).identity()
    result = ztpki(
        "device", "activate", "--device", str(world.device(device_id)),
        "--node", world.node_url, "--protocol", "cmp",
    )  # fmt: skip
    assert steps_of(result.stdout) == STEPS, result.stdout
    out = flat(result.stdout)
    assert "the customer CA generated the key" in out and "enveloped" in out
    assert "certConf accepted (pkiConf)" in out
    memory = DeviceMemory.open(world.device(device_id))
    now = memory.identity()
    assert now.phase is Phase.CUSTOMIZED
    assert now.certificate is not None and now.private_key is not None
    assert temporary.private_key is not None
    # A new key, which the certificate carries: not the temporary one.
    assert now.certificate.public_key() == now.private_key.public_key()
    assert now.private_key.public_key() != temporary.private_key.public_key()
    assert world.register()[device_id]["state"] == "customized"
    assert world.active(device_id) == [world.show(device_id)["certificate"]["serial"]]


def test_ok_genm_ca_certs_with_the_temporary_certificate(world: World) -> None:
    device_id = take_device(world)
    memory = DeviceMemory.open(world.device(device_id))
    identity = memory.identity()

    async def run() -> list[str]:
        cmp = CMPClient(
            f"{world.node_url}/.well-known/cmp",
            credentials_of(identity),
            trust_for(memory.trust_anchors()),
            context=_context(memory),
        )
        async with cmp:
            return [c.subject.rfc4514_string() for c in await cmp.ca_certificates()]

    assert asyncio.run(run()) == ["CN=devices,O=Customer", "CN=root,O=Customer"]
    # Asking for CA certificates changes nothing in the register.
    assert world.register()[device_id]["state"] == "listed"


def test_fail_genm_unknown_info_type(world: World) -> None:
    device_id = take_device(world)
    memory = DeviceMemory.open(world.device(device_id))
    identity = memory.identity()

    async def run() -> None:
        cmp = CMPClient(
            f"{world.node_url}/.well-known/cmp",
            credentials_of(identity),
            trust_for(memory.trust_anchors()),
            context=_context(memory),
        )
        async with cmp:
            await cmp.general([InfoTypeAndValue("1.3.6.1.5.5.7.4.16")])  # signKeyPairTypes

    try:
        asyncio.run(run())
    except CMPRefused as exc:
        assert exc.status.fail_info == frozenset({FailInfo.BAD_REQUEST})
        assert "caCerts" in exc.message
    else:
        raise AssertionError("the node answered an infoType it does not serve")
    assert ID_IT_CA_CERTS.startswith("1.3.6.1.5.5.7.4.")


def _context(memory: DeviceMemory):  # type: ignore[no-untyped-def]
    from ztpki.device.communication import node_context

    identity = memory.identity()
    chain = [identity.certificate, *(c for c in identity.ca_certificates if c.subject != c.issuer)]
    return node_context(key=identity.private_key, chain=chain, anchors=memory.trust_anchors())


def test_ok_openssl_genm(world: World, tmp_path: Path) -> None:
    device_id = take_device(world)
    device = world.device(device_id)
    out = tmp_path / "creds"
    ztpki(
        "device", "export", "--device", str(device), "--out", str(out), "--insecure-no-passphrase"
    )
    import subprocess

    result = subprocess.run(
        [
            "openssl", "cmp", "-server", world.node_url.removeprefix("https://"),
            "-path", ".well-known/cmp", "-tls_used",
            "-tls_trusted", str(out / "trust.pem"), "-trusted", str(out / "trust.pem"),
            "-tls_cert", str(out / "cert.pem"), "-tls_key", str(out / "key.pem"),
            "-cert", str(out / "cert.pem"), "-key", str(out / "key.pem"),
            "-cmd", "genm", "-infotype", "caCerts",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "received GENP" in log and "caCerts" in log, log


def _client(world: World, device_id: str) -> CMPClient:
    memory = DeviceMemory.open(world.device(device_id))
    return CMPClient(
        f"{world.node_url}/.well-known/cmp",
        credentials_of(memory.identity()),
        trust_for(memory.trust_anchors()),
        context=_context(memory),
    )


def test_ok_device_revokes_its_own_certificate(world: World) -> None:
    device_id = take_device(world)
    activate_cmp(world, device_id)
    serial = world.show(device_id)["certificate"]["serial"]
    certificate = DeviceMemory.open(world.device(device_id)).identity().certificate
    assert certificate is not None

    async def run() -> None:
        async with _client(world, device_id) as cmp:
            await cmp.revoke(certificate, x509.ReasonFlags.key_compromise)

    asyncio.run(run())
    assert world.register()[device_id]["state"] == "retired"
    # Queued for the customer CA system, and revoked there once the sender ran.
    assert wait_until(
        lambda: (
            serial not in world.active(device_id)
            and world.register()[device_id]["revocations"] == []
        ),
        timeout=60,
    )
    (record,) = [r for r in world.issued(device_id) if r["serial"] == serial]
    assert record["status"] == "revoked"
    (retired,) = [e for e in world.audit(device_id) if e["decision"] == "retired"]
    assert "keyCompromise" in retired["reason"]

    # The revoked certificate is dead at the node too: a second rr is refused.
    async def again() -> None:
        async with _client(world, device_id) as cmp:
            await cmp.revoke(certificate)

    with pytest.raises((CMPRefused, VerificationFailed)):
        asyncio.run(again())


def test_fail_rr_with_the_temporary_certificate(world: World) -> None:
    device_id = take_device(world)
    temporary = DeviceMemory.open(world.device(device_id)).identity().certificate
    assert temporary is not None

    async def run() -> None:
        async with _client(world, device_id) as cmp:
            await cmp.revoke(temporary)

    with pytest.raises(CMPRefused, match="its manufacturer") as caught:
        asyncio.run(run())
    assert caught.value.status.fail_info == frozenset({FailInfo.NOT_AUTHORIZED})
    assert world.register()[device_id]["state"] == "listed"
    assert world.register()[device_id]["revocations"] == []


def test_fail_rr_for_another_devices_certificate(world: World) -> None:
    mine, other = take_device(world), take_device(world)
    activate_cmp(world, mine)
    activate_cmp(world, other)
    theirs = DeviceMemory.open(world.device(other)).identity().certificate
    assert theirs is not None
    before = world.active(other)

    async def run() -> None:
        async with _client(world, mine) as cmp:
            await cmp.revoke(theirs, x509.ReasonFlags.key_compromise)

    with pytest.raises(CMPRefused, match="badCertId"):
        asyncio.run(run())
    assert world.register()[other]["state"] == "customized"
    assert world.register()[mine]["state"] == "customized"
    assert world.active(other) == before
    assert world.register()[other]["revocations"] == []


def test_fail_rr_asking_for_a_hold(world: World) -> None:
    device_id = take_device(world)
    activate_cmp(world, device_id)
    certificate = DeviceMemory.open(world.device(device_id)).identity().certificate
    assert certificate is not None

    async def run() -> None:
        async with _client(world, device_id) as cmp:
            await cmp.revoke(certificate, x509.ReasonFlags.certificate_hold)

    with pytest.raises(CMPRefused, match="holds are the operator"):
        asyncio.run(run())
    assert world.register()[device_id]["state"] == "customized"
    assert world.register()[device_id]["revocations"] == []


def test_ok_openssl_rr(world: World, tmp_path: Path) -> None:
    device_id = take_device(world)
    activate_cmp(world, device_id)
    out = tmp_path / "creds"
    device = world.device(device_id)
    ztpki(
        "device", "export", "--device", str(device), "--out", str(out), "--insecure-no-passphrase"
    )
    result = subprocess.run(
        [
            "openssl", "cmp", "-server", world.node_url.removeprefix("https://"),
            "-path", ".well-known/cmp", "-tls_used",
            "-tls_trusted", str(out / "trust.pem"), "-trusted", str(out / "trust.pem"),
            "-tls_cert", str(out / "cert.pem"), "-tls_key", str(out / "key.pem"),
            "-cert", str(out / "cert.pem"), "-key", str(out / "key.pem"),
            "-cmd", "rr", "-oldcert", str(out / "cert.pem"), "-revreason", "5",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "received RP" in log, log
    assert world.register()[device_id]["state"] == "retired"
