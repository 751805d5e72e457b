"""Root CA key update end to end (issue 17, RFC 9483 4.3.2): `ztpki ca rollover` on the
customer CA system, the exported chain given to the node (`node update-ca`), and a device
following the rollover with ztpki's CMP client (genm rootCaCert), EST cacerts carrying the
link certificates (RFC 7030 4.1.3), and `openssl verify` of every link.

OpenSSL 3.0's `openssl cmp` knows no rootCaCert infoType (-infotype rootCaCert: "unknown OID
name") and has none of -oldwithold, -newwithnew, -newwithold, -oldwithnew (OpenSSL 3.2 added
them); it is used here for genm caCerts, and `openssl verify` for the certificates.

`ztpki device renew` (CMP) follows the rollover by itself: a device customized before it asks
genm rootCaCert before its kur and keeps the new root (device/cmp_activation.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from node_fixtures import ENV, Device, NodeWorld, build_world, cli
from test_node_cmp import enroll_ir
from tests.support.cmp_mock import MockPKI
from tests.support.services import run_ztpki
from tests.support.shell import sh

from ztpki.device import DeviceMemory, Phase
from ztpki.device.cmp_activation import trust_for
from ztpki.device.cmp_client import CMPClient
from ztpki.device.cmp_root_update import follow_root_update, trusted_root
from ztpki.device.cmp_transaction import CMPRefused, Credentials
from ztpki.pki.pem import certificates_pem, load_certificates_pem
from ztpki.pki.rollover import RootKeyUpdate
from ztpki.protocol.cmp import FailInfo
from ztpki.protocol.est import decode_certs_only


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    w = build_world(tmp_path_factory.mktemp("cmp-rollover"))
    try:
        yield w
    finally:
        w.stop()


def root_of(world: NodeWorld) -> x509.Certificate:
    """The customer CA system's current root certificate (croot's ca.pem)."""
    return load_certificates_pem((world.customer_dir / "cas" / "croot" / "ca.pem").read_bytes())[0]


def client(world: NodeWorld, device: Device) -> CMPClient:
    """ztpki's CMP client over mutual TLS, protected by the device's temporary certificate."""
    factory = load_certificates_pem((world.root / "factory-bundle.pem").read_bytes())
    credentials = Credentials(
        device.key, device.certificate, tuple(c for c in factory if c.subject != c.issuer)
    )
    anchors = load_certificates_pem(world.factory_anchor.read_bytes())
    return CMPClient(
        f"https://{world.node.address}/.well-known/cmp",
        credentials,
        trust_for(anchors),
        context=world.device_context(device),
    )


def follow(world: NodeWorld, device: Device, trusted: x509.Certificate) -> RootKeyUpdate | None:
    """genm rootCaCert with the root the device trusts."""

    async def run() -> RootKeyUpdate | None:
        async with client(world, device) as cmp:
            return await follow_root_update(cmp, trusted, now=datetime.now(UTC))

    return asyncio.run(run())


def write(path: Path, *certificates: x509.Certificate) -> str:
    path.write_bytes(certificates_pem(list(certificates)))
    return str(path)


def test_ok_no_update_before_a_rollover_and_a_root_not_served_refused(world: NodeWorld) -> None:
    (device,) = world.make_devices(1)
    assert follow(world, device, root_of(world)) is None  # the current root: no value
    with pytest.raises(CMPRefused, match="does not serve") as refused:
        follow(world, device, MockPKI.create().ca)
    assert refused.value.status.fail_info == frozenset({FailInfo.BAD_REQUEST})
    assert world.state(device.device_id) == "listed" and world.issued(device.device_id) == []


@pytest.fixture(scope="module")
def customized(world: NodeWorld) -> Path:
    """A device memory customized over CMP (`ztpki device activate`) before the rollover."""
    (device,) = world.make_devices(1)
    path = world.root / "device-memories" / device.device_id
    memory = DeviceMemory.create(path, device_id=device.device_id)
    factory = load_certificates_pem((world.root / "factory-bundle.pem").read_bytes())
    memory.set_trust_anchors(load_certificates_pem(world.factory_anchor.read_bytes()))
    memory.replace_identity(phase=Phase.TEMPORARY, private_key=device.key,
                            certificate=device.certificate, ca_certificates=factory)  # fmt: skip
    node = f"https://{world.node.address}"
    run_ztpki("device", "activate", "--device", str(path), "--node", node,
              "--protocol", "cmp", "--key-on-device", env=ENV)  # fmt: skip
    assert world.state(device.device_id) == "customized"
    return path


@pytest.fixture(scope="module")
def rolled(world: NodeWorld, customized: Path) -> x509.Certificate:
    """Roll croot over, restart its CA system, give the node the new export; the old root."""
    old = root_of(world)
    # A day longer than `ca init`'s: the new root must outlive the old one.
    cli("ca", "rollover", "--dir", str(world.customer_dir), "--name", "croot",
        "--validity-days", "3651")  # fmt: skip
    world.customer.stop()
    world.restart_customer()
    chain = world.root / "rolled-chain.pem"
    cli("ca", "export", "--dir", str(world.customer_dir), "--name", "operational",
        "--out", str(chain))  # fmt: skip
    cli("node", "update-ca", "--dir", str(world.node_dir), "--label", "default",
        "--customer-chain", str(chain))  # fmt: skip
    world.restart_node()
    return old


def test_ok_device_follows_the_rollover(
    world: NodeWorld, rolled: x509.Certificate, tmp_path: Path
) -> None:
    (device,) = world.make_devices(1)
    update = follow(world, device, rolled)
    assert update is not None
    assert update.new_with_new == root_of(world) != rolled
    assert update.old_with_old == rolled
    links = load_certificates_pem((world.customer_dir / "cas" / "croot" / "links.pem").read_bytes())
    assert links == [rolled, update.new_with_old, update.old_with_new]
    assert follow(world, device, update.new_with_new) is None  # now current: no update
    assert world.state(device.device_id) == "listed"

    # openssl: newWithOld under the old root, oldWithNew under the new one, and not crossed.
    old, new = write(tmp_path / "old.pem", rolled), write(tmp_path / "new.pem", update.new_with_new)
    new_with_old = write(tmp_path / "nwo.pem", update.new_with_old)
    assert update.old_with_new is not None
    old_with_new = write(tmp_path / "own.pem", update.old_with_new)
    assert sh(f"openssl verify -CAfile {old} {new_with_old}", tmp_path).returncode == 0
    assert sh(f"openssl verify -CAfile {new} {old_with_new}", tmp_path).returncode == 0
    crossed = sh(f"openssl verify -CAfile {new} {new_with_old}", tmp_path, check=False)
    assert crossed.returncode != 0, crossed

    # The CA system's subordinate, issued by the old key, still verifies: for a party that
    # trusts the new root, through oldWithNew.
    operational = str(world.customer_dir / "cas" / "operational" / "ca.pem")
    ok = sh(f"openssl verify -CAfile {new} -untrusted {old_with_new} {operational}", tmp_path)
    assert ok.returncode == 0
    alone = sh(f"openssl verify -CAfile {new} {operational}", tmp_path, check=False)
    assert alone.returncode != 0, alone  # the negative control: oldWithNew is the link

    # Customization goes on after the rollover (openssl cmp: ir + certConf), and the device's
    # new certificate verifies for a party that trusts the new root only.
    (tmp_path / "ir").mkdir()  # enroll_ir writes new.key and new.pem where it runs
    issued = enroll_ir(world, device, tmp_path / "ir")
    assert world.state(device.device_id) == "customized"
    leaf = write(tmp_path / "leaf.pem", issued)
    between = tmp_path / "between.pem"  # the operational CA, then oldWithNew
    between.write_bytes(Path(operational).read_bytes() + Path(old_with_new).read_bytes())
    assert sh(f"openssl verify -CAfile {new} -untrusted {between} {leaf}", tmp_path).returncode == 0


def test_ok_cacerts_carry_the_links(world: NodeWorld, rolled: x509.Certificate) -> None:
    (device,) = world.make_devices(1)
    answer = world.request("GET", f"{world.est}/cacerts", context=world.device_context(device))
    assert answer.status == 200, answer.text
    served = decode_certs_only(answer.body)
    new_root = root_of(world)
    links = load_certificates_pem((world.customer_dir / "cas" / "croot" / "links.pem").read_bytes())
    operational = world.customer_dir / "cas" / "operational" / "ca.pem"
    assert load_certificates_pem(operational.read_bytes())[0] in served
    assert {new_root, *links} <= set(served) and rolled in served

    # CMP genm caCerts: the same certificates, with ztpki's client and with openssl's.
    async def ca_certs() -> list[x509.Certificate]:
        async with client(world, device) as cmp:
            return await cmp.ca_certificates()

    over_cmp = asyncio.run(ca_certs())  # in the chain's order (EST's certs-only is a SET)
    assert len(over_cmp) == len(served) and set(over_cmp) == set(served)
    assert over_cmp[0].subject.rfc4514_string().startswith("CN=operational")
    assert over_cmp[-2:] == links[-2:]  # newWithOld, oldWithNew
    anchor = str(world.factory_anchor)
    log = sh(
        f"openssl cmp -server {world.node.address} -path .well-known/cmp -tls_used "
        f"-tls_trusted {anchor} -trusted {anchor} -cert {device.cert_path} "
        f"-key {device.key_path} -tls_cert {device.cert_path} -tls_key {device.key_path} "
        "-cmd genm -infotype caCerts",
        world.root,
    )
    out = log.stdout + log.stderr
    assert "received GENP" in out and "caCerts" in out, out


def test_fail_rollover_and_node_update_refusals(
    world: NodeWorld, rolled: x509.Certificate, tmp_path: Path
) -> None:
    croot = world.customer_dir / "cas" / "croot"
    before = {p.name: p.read_bytes() for p in croot.iterdir() if p.is_file()}
    # Without the CA system's passphrase: refused, nothing written.
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-passphrase-of-this-system\n")
    refused = run_ztpki(
        "ca", "rollover", "--dir", str(world.customer_dir), "--name", "croot",
        "--validity-days", "4000", "--passphrase-file", str(wrong), env=ENV, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "passphrase" in refused.stderr, refused.stderr
    # A subordinate CA has no link certificates to make.
    sub = run_ztpki("ca", "rollover", "--dir", str(world.customer_dir), "--name", "operational",
                    env=ENV, check=False)  # fmt: skip
    assert sub.returncode != 0 and "subordinate" in sub.stderr, sub.stderr
    assert {p.name: p.read_bytes() for p in croot.iterdir() if p.is_file()} == before
    assert not (world.customer_dir / "cas" / "operational" / "links.pem").exists()

    # The node refuses a chain that drops a root it serves (the export from before the rollover
    # lacks the new root), and keeps its file.
    served = (world.node_dir / "ca" / "default.pem").read_bytes()
    stale = run_ztpki(
        "node", "update-ca", "--dir", str(world.node_dir), "--label", "default",
        "--customer-chain", str(world.root / "customer-chain.pem"), env=ENV, check=False,
    )  # fmt: skip
    assert stale.returncode != 0 and "leaves out the root" in stale.stderr, stale.stderr
    assert (world.node_dir / "ca" / "default.pem").read_bytes() == served


def test_ok_device_renew_follows_the_root_update(
    world: NodeWorld, rolled: x509.Certificate, customized: Path, tmp_path: Path
) -> None:
    before = DeviceMemory.open(customized).identity()
    assert trusted_root(before.ca_certificates) == rolled  # customized under the old root
    node = f"https://{world.node.address}"
    renewed = run_ztpki("device", "renew", "--device", str(customized), "--node", node, env=ENV)
    said = " ".join(renewed.stdout.split())
    assert "followed the customer root's key update" in said, said
    assert "kur: the node answered" in said, said
    after = DeviceMemory.open(customized).identity()
    assert after.certificate is not None and after.certificate != before.certificate
    new_root = root_of(world)
    # The renewed identity keeps the new root (the kur's answer chains to the old one).
    assert trusted_root(after.ca_certificates) == new_root
    assert rolled not in after.ca_certificates
    # What the device stores verifies the new certificate for a party trusting the new root.
    stored = [c for c in after.ca_certificates if c != new_root]
    leaf = write(tmp_path / "leaf.pem", after.certificate)
    between = write(tmp_path / "between.pem", *stored)
    anchor = write(tmp_path / "new.pem", new_root)
    verified = sh(f"openssl verify -CAfile {anchor} -untrusted {between} {leaf}", tmp_path)
    assert verified.returncode == 0
    # The root is current now: the next renewal asks and stores nothing new.
    again = run_ztpki("device", "renew", "--device", str(customized), "--node", node, env=ENV)
    assert "followed" not in " ".join(again.stdout.split()), again.stdout
    assert trusted_root(DeviceMemory.open(customized).identity().ca_certificates) == new_root
