"""Two manufacturers on one running node: each lists only its own devices, and a device takes
only a temporary certificate of the manufacturer it is listed for.

The node buys from Acme Devices (the world's factory CA system, ids dev-*) and from Globex
(a CA hierarchy made here, ids GLX-*). Imports and listings run the real `ztpki` commands;
enrollments are real mTLS EST requests to `ztpki node serve`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from node_fixtures import ENV, MANUFACTURER, Device, NodeWorld, build_world, cli, ztpki
from tests.support.services import run_ztpki

from ztpki.credentials import Credential
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.pem import certificates_pem, fingerprint_sha256, load_certificates_pem
from ztpki.pki.profiles import DOCUMENT_SIGNING, CertificateProfile
from ztpki.protocol.manifest import (
    Manifest,
    ManifestEntry,
    new_manifest_id,
    sign_manifest,
)

pytestmark = pytest.mark.timeout(300)
SIGNER_PASSPHRASE = "signer-passphrase-for-tests"


def _name(cn: str, *, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def _grant(subject: x509.Name, profile: CertificateProfile) -> IssuanceGrant:
    start = datetime.now(UTC)
    return IssuanceGrant(subject, profile, start - timedelta(hours=1), start + timedelta(days=30))


class Globex:
    """The second manufacturer: root, factory CA and manifest CA, all in this process."""

    def __init__(self) -> None:
        key = generate_private_key(KeySpec.EC_P256)
        root_cert = create_self_signed_ca(
            key, _name("Globex Root"), now=datetime.now(UTC), validity=timedelta(days=365)
        )
        self.root = CertificateAuthority("groot", key, root_cert)
        self.factory = self._sub("Globex Factory CA")
        self.manifests = self._sub("Globex Manifest CA")

    def _sub(self, cn: str) -> CertificateAuthority:
        key = generate_private_key(KeySpec.EC_P256)
        cert = self.root.issue(key.public_key(), _grant(_name(cn), CertificateProfile.CA))
        return CertificateAuthority(cn, key, cert, parents=self.root.chain)

    def temporary(self, device_id: str) -> tuple[PrivateKey, x509.Certificate]:
        key = generate_private_key(KeySpec.EC_P256)
        grant = _grant(_name(device_id, serial=device_id), CertificateProfile.DEVICE)
        return key, self.factory.issue(key.public_key(), grant)

    def sign(self, manifest: Manifest) -> bytes:
        key = generate_private_key(KeySpec.EC_P256)
        grant = _grant(_name("globex signer"), CertificateProfile.MANIFEST_SIGNER)
        cert = self.manifests.issue(key.public_key(), grant)
        return sign_manifest(manifest, key=key, chain=[cert, self.manifests.certificate])


GLOBEX = Globex()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeWorld]:
    root = tmp_path_factory.mktemp("node-manufacturers")
    bundle = root / "globex-bundle.pem"
    bundle.write_bytes(certificates_pem([GLOBEX.factory.certificate, GLOBEX.root.certificate]))
    w = build_world(root, device_ids="dev-*", other_manufacturers=[("Globex", bundle, "GLX-*")])
    try:
        yield w
    finally:
        w.stop()


def _manifest(maker: str, entries: list[tuple[str, str]]) -> Manifest:
    now = datetime.now(UTC)
    return Manifest(
        new_manifest_id(),
        maker,
        None,
        None,
        now,
        tuple(ManifestEntry(i, f, None, None, now) for i, f in entries),
    )


def test_ok_each_manufacturer_imports_its_own_manifest(world: NodeWorld) -> None:
    acme = world.make_devices(1, listed=False)[0]
    glx_key, glx_cert = GLOBEX.temporary("GLX-0001")
    ours = world.sign_manifest([(acme.device_id, acme.fingerprint)])
    theirs = world.root / "globex-manifest.json"
    theirs.write_bytes(
        GLOBEX.sign(_manifest("Globex", [("GLX-0001", fingerprint_sha256(glx_cert))]))
    )
    for path in (ours, theirs):
        result = ztpki("node", "import", "--dir", str(world.node_dir), str(path))
        assert "listed 1 device(s)" in result.stdout, result.stdout
    rows = world.register()
    assert rows[acme.device_id]["state"] == rows["GLX-0001"]["state"] == "listed"
    listing = ztpki("node", "devices", "--dir", str(world.node_dir), "--json").stdout
    devices = {d["device_id"]: d for d in json.loads(listing)}
    assert devices["GLX-0001"]["manufacturer"] == "Globex"
    assert devices[acme.device_id]["manufacturer"] == MANUFACTURER
    # Each device enrolls with its own manufacturer's temporary certificate.
    assert world.post_csr(acme, "simpleenroll", acme.csr()).status == 200
    context = world.context(glx_cert, glx_key)
    glx = Device("GLX-0001", glx_key, glx_cert, world.root / "c", world.root / "k")
    assert world.post_csr(glx, "simpleenroll", glx.csr(), context=context).status == 200


def test_fail_manifest_of_one_manufacturer_listing_anothers_ids(world: NodeWorld) -> None:
    acme = world.make_devices(1, listed=False)[0]
    path = world.root / "globex-poaching.json"
    path.write_bytes(GLOBEX.sign(_manifest("Globex", [(acme.device_id, acme.fingerprint)])))
    before = world.register()
    result = ztpki("node", "import", "--dir", str(world.node_dir), str(path), check=False)
    assert result.returncode == 1
    assert "outside manufacturer Globex's namespace (GLX-*)" in " ".join(result.stderr.split())
    assert world.register() == before


def test_fail_clone_under_another_manufacturers_root(world: NodeWorld) -> None:
    (device,) = world.make_devices(1, listed=False)
    cli(
        "node",
        "add",
        "--dir",
        str(world.node_dir),
        device.device_id,
        "--manufacturer",
        MANUFACTURER,
    )
    clone_key, clone_cert = GLOBEX.temporary(device.device_id)
    before = world.register()
    answer = world.post_csr(
        device, "simpleenroll", device.csr(clone_key), context=world.context(clone_cert, clone_key)
    )
    assert answer.status == 403 and "manufacturer mismatch" in answer.text, answer.text
    assert world.register() == before and world.active(device.device_id) == []
    refused = [e for e in world.audit(device.device_id) if e["decision"] == "refused"]
    assert len(refused) == 1 and "manufacturer mismatch" in refused[0]["reason"]
    # Control: the device's own (Acme) temporary certificate enrolls.
    assert world.post_csr(device, "simpleenroll", device.csr()).status == 200
    assert len(world.active(device.device_id)) == 1


def test_ok_factory_signer_is_a_document_signer_and_its_manifests_import(
    world: NodeWorld,
) -> None:
    """`ztpki factory signer` against the real factory CA system issues a signer with EKU
    id-kp-documentSigning (RFC 9336) and nothing else, prints
    the fingerprint a customer may pin, and `factory sign-manifest` output imports."""
    out = world.root / "signer-e2e"
    result = run_ztpki(
        "factory", "signer", "--ca", world.factory.address,
        "--client-cred", str(world.root / "cred-line1"), "--ca-name", "manifests",
        "--name", "signer-e2e", "--out", str(out),
        env={**ENV, "ZTPKI_SIGNER_PASSPHRASE": SIGNER_PASSPHRASE},
    )  # fmt: skip
    cert = load_certificates_pem((out / "cert.pem").read_bytes())[0]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [DOCUMENT_SIGNING]
    assert f"sha256:{fingerprint_sha256(cert)}" in " ".join(result.stdout.split())
    (device,) = world.make_devices(1, listed=False)
    credential = Credential.load(out, passphrase=SIGNER_PASSPHRASE.encode())
    manifest = _manifest(MANUFACTURER, [(device.device_id, device.fingerprint)])
    path = world.root / "signer-e2e.json"
    path.write_bytes(sign_manifest(manifest, key=credential.key, chain=list(credential.chain)))
    imported = ztpki("node", "import", "--dir", str(world.node_dir), str(path))
    assert "listed 1 device(s)" in imported.stdout
