"""Manufacturing end to end: loading station, production batches, manifests, trust bundle.

Everything runs against the real CA service (`ztpki ca serve`) on loopback over mutual TLS;
certificates are checked with the real `openssl verify`.
"""

from __future__ import annotations

import base64
import json
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.e2e.factory_fixtures import (
    EXPORT_PASSPHRASE,
    Factory,
    cli,
    cli_ok,
    openssl,
    running_factory,
    ztpki,
)
from tests.support.pem_markers import ENCRYPTED_KEY_HEADER

from ztpki.credentials import Credential
from ztpki.device import DeviceMemory, Phase
from ztpki.errors import MalformedInput, VerificationFailed
from ztpki.factory.signer import verify_own_manifest
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, decode_pkcs8, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import certificate_pem, fingerprint_sha256, load_certificates_pem
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.manifest import sign_manifest

BATCH_SIZE = 200


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    with running_factory(tmp_path_factory.mktemp("factory")) as running:
        yield running


@pytest.fixture(scope="module")
def batch(factory: Factory) -> Path:
    """A batch of BATCH_SIZE devices with a signed manifest, made once for the module."""
    out = factory.root / "batch-B1"
    result = cli_ok(
        "factory", "manufacture", *factory.ca_args(), "--trust", factory.bundle,
        "--count", str(BATCH_SIZE), "--out", out, "--batch", "B1", "--model", "M-100",
        "--id-pattern", "ACME-{batch}-{n:06d}", "--concurrency", "16",
        "--manifest-signer", factory.signer, "--order", "PO-4711", "--json",
    )  # fmt: skip
    summary = result.json()
    assert (summary["made"], summary["failed"], summary["skipped"]) == (BATCH_SIZE, 0, 0)
    assert summary["manifest"] == str(out / "manifest-B1.json")
    return out


def device_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


# --- one device through the loading station ------------------------------------------------------


def test_ok_load_one_device_and_act_as_it_with_openssl(factory: Factory, tmp_path: Path) -> None:
    device = tmp_path / "dev"
    result = ztpki(
        "factory", "load", "--device", device, "--device-id", "ACME-L-1", *factory.ca_args(),
        "--trust", factory.bundle, "--param", "key=ec-p384", "--param", "validity_days=30",
        "--model", "M-1",
    )  # fmt: skip
    assert "device ACME-L-1: temporary identity stored" in result.stdout
    shown = json.loads(ztpki("device", "show", "--device", device, "--json").stdout)
    assert shown["device_id"] == "ACME-L-1" and shown["phase"] == "temporary"
    cert = shown["certificate"]
    assert "CN=ACME-L-1" in cert["subject"] and "CN=factory" in cert["issuer"]
    not_after = datetime.fromisoformat(cert["not_after"])
    assert timedelta(days=29) < not_after - datetime.now(UTC) <= timedelta(days=30)
    bundle = load_certificates_pem(factory.bundle.read_bytes())
    assert [a["sha256"] for a in shown["trust_anchors"]] == [fingerprint_sha256(c) for c in bundle]
    assert "request_signal" not in shown["config"]  # the device reacted to the signal

    exported = tmp_path / "export"
    cli_ok("device", "export", "--device", device, "--out", exported)
    key_pem = exported / "key.pem"
    assert stat.S_IMODE(key_pem.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key_pem.read_bytes()
    pub_from_key = openssl(
        "pkey", "-in", key_pem, "-passin", f"pass:{EXPORT_PASSPHRASE}", "-pubout"
    )
    pub_from_cert = openssl("x509", "-in", exported / "cert.pem", "-noout", "-pubkey")
    assert pub_from_key.stdout == pub_from_cert.stdout
    assert (
        "ASN1 OID: secp384r1"
        in openssl("x509", "-in", exported / "cert.pem", "-noout", "-text").stdout
    )
    wrong = openssl("pkey", "-in", key_pem, "-passin", "pass:wrong-passphrase", check=False)
    assert wrong.returncode != 0  # negative control
    ok = openssl(
        "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", factory.ca_pem("root"),
        "-untrusted", exported / "chain.pem", exported / "cert.pem",
    )  # fmt: skip
    assert ok.stdout.strip().endswith(": OK")


def test_fail_unreachable_ca_leaves_no_device(factory: Factory, tmp_path: Path) -> None:
    device = tmp_path / "dev"
    result = cli(
        "factory", "load", "--device", device, "--device-id", "ACME-U-1",
        "--ca", "127.0.0.1:1", "--client-cred", factory.line1,
    )  # fmt: skip
    assert result.status == 1
    assert "device ACME-U-1: cannot reach CA system 127.0.0.1:1" in " ".join(result.stderr.split())
    assert not device.exists()


def test_fail_refusing_ca_leaves_device_as_it_was(factory: Factory, tmp_path: Path) -> None:
    device = tmp_path / "dev"
    memory = DeviceMemory.create(device, device_id="ACME-R-1")
    memory.update_config(note="prepared by hand")
    before = {p.name: p.read_bytes() for p in device.iterdir() if p.is_file()}
    # The CA system knows no CA "nonexistent": a typed refusal over the protocol.
    result = cli(
        "factory", "load", "--device", device, "--device-id", "ACME-R-1", *factory.ca_args(),
        "--ca-name", "nonexistent",
    )  # fmt: skip
    message = " ".join(result.stderr.split())
    assert result.status == 1
    assert "device ACME-R-1:" in message and "may not use CA 'nonexistent'" in message
    assert {p.name: p.read_bytes() for p in device.iterdir() if p.is_file()} == before
    # A CA-client the CA system no longer knows: refused at the handshake.
    cli_ok(
        "ca", "add-client", "--dir", factory.system, "--name", "line9", "--out", tmp_path / "line9",
        "--ca", "factory",
    )  # fmt: skip
    cli_ok("ca", "remove-client", "--dir", factory.system, "--name", "line9")
    result = cli(
        "factory", "load", "--device", device, "--device-id", "ACME-R-1",
        "--ca", factory.address, "--client-cred", tmp_path / "line9",
    )  # fmt: skip
    assert result.status == 1
    message = " ".join(result.stderr.split())
    # The service answers "not registered" and closes; a client still writing may see the close.
    assert message.startswith("error: device ACME-R-1: ")
    assert "not registered" in message or "connection to CA system" in message
    assert {p.name: p.read_bytes() for p in device.iterdir() if p.is_file()} == before
    assert DeviceMemory.open(device).phase is Phase.BLANK


# --- a production batch ----------------------------------------------------------------------


def test_ok_batch_every_device_verifies_with_openssl(
    factory: Factory, batch: Path, tmp_path: Path
) -> None:
    dirs = device_dirs(batch)
    assert [d.name for d in dirs] == [f"ACME-B1-{n:06d}" for n in range(1, BATCH_SIZE + 1)]
    serials = set()
    for d in dirs:
        memory = DeviceMemory.open(d)
        identity = memory.identity()
        assert identity.phase is Phase.TEMPORARY and identity.certificate is not None
        serials.add(identity.certificate.serial_number)
        (tmp_path / f"{d.name}.pem").write_bytes(certificate_pem(identity.certificate))
    assert len(serials) == BATCH_SIZE
    files = sorted(tmp_path.glob("ACME-*.pem"))
    untrusted = tmp_path / "intermediate.pem"
    untrusted.write_bytes(factory.ca_pem("factory").read_bytes())
    result = openssl(
        "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", factory.ca_pem("root"),
        "-untrusted", untrusted, *files,
    )  # fmt: skip
    assert result.stdout.count(": OK") == BATCH_SIZE
    # negative control: the same certificates against a trust anchor that did not issue them
    wrong = openssl("verify", "-CAfile", factory.ca_pem("manifests"), files[0], check=False)
    assert wrong.returncode != 0


def test_ok_batch_keys_encrypted_and_private(batch: Path) -> None:
    for d in device_dirs(batch):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        for f in d.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        record = json.loads((d / "identity.json").read_text())
        key_pem = record["private_key"].encode()
        assert key_pem.startswith(ENCRYPTED_KEY_HEADER)
        with pytest.raises(MalformedInput):
            decode_pkcs8(key_pem, passphrase=None)
    assert DeviceMemory.open(device_dirs(batch)[0]).identity().private_key is not None


def test_ok_batch_manifest_verifies_and_matches_devices(factory: Factory, batch: Path) -> None:
    data = (batch / "manifest-B1.json").read_bytes()
    anchors = load_certificates_pem(factory.bundle.read_bytes())
    verified = verify_own_manifest(data, anchors=anchors, now=datetime.now(UTC))
    manifest = verified.manifest
    assert (manifest.batch, manifest.order, manifest.manufacturer) == (
        "B1",
        "PO-4711",
        "Acme Devices",
    )
    expected = {
        d.name: fingerprint_sha256(DeviceMemory.open(d).identity().certificate)  # type: ignore[arg-type]
        for d in device_dirs(batch)
    }
    assert {e.device_id: e.temp_fingerprint for e in manifest.entries} == expected
    assert {e.model for e in manifest.entries} == {"M-100"}
    csv_lines = (batch / "manifest-B1.csv").read_text().splitlines()
    assert len(csv_lines) == BATCH_SIZE + 1
    shown = ztpki(
        "factory",
        "verify-manifest",
        batch / "manifest-B1.json",
        "--trust",
        factory.bundle,
        "--json",
    )
    assert len(json.loads(shown.stdout)["devices"]) == BATCH_SIZE


def test_rerun_batch_issues_nothing_new(factory: Factory, batch: Path) -> None:
    before = factory.issued_count()
    result = cli_ok(
        "factory", "manufacture", *factory.ca_args(), "--count", str(BATCH_SIZE), "--out", batch,
        "--batch", "B1", "--id-pattern", "ACME-{batch}-{n:06d}", "--json",
    )  # fmt: skip
    summary = result.json()
    assert (summary["made"], summary["skipped"], summary["failed"]) == (0, BATCH_SIZE, 0)
    assert factory.issued_count() == before


def test_failed_device_retried_alone(factory: Factory, tmp_path: Path) -> None:
    out = tmp_path / "B2"
    # ACME-B2-000003 already holds a live certificate (made elsewhere): the CA refuses it.
    cli_ok(
        "factory", "load", "--device", tmp_path / "elsewhere", "--device-id", "ACME-B2-000003",
        *factory.ca_args(),
    )  # fmt: skip
    before = factory.issued_count()
    args = [
        *factory.ca_args(),
        "--out",
        out,
        "--batch",
        "B2",
        "--id-pattern",
        "ACME-{batch}-{n:06d}",
    ]
    first = cli("factory", "manufacture", *args, "--count", "5", "--json")
    assert first.status == 1
    summary = json.loads(first.stdout)
    assert (summary["made"], summary["failed"]) == (4, 1)
    assert "already holds live certificate" in summary["failures"]["ACME-B2-000003"]
    assert "--only ACME-B2-000003" in " ".join(first.stderr.split())
    assert not (out / "ACME-B2-000003").exists()
    assert factory.issued_count() == before + 4
    retry = cli_ok(
        "factory", "manufacture", *args, "--only", "ACME-B2-000003", "--reissue", "--json"
    )
    assert retry.json()["made"] == 1
    assert DeviceMemory.open(out / "ACME-B2-000003").phase is Phase.TEMPORARY
    assert factory.issued_count() == before + 5
    again = cli_ok("factory", "manufacture", *args, "--count", "5")  # the operator's view
    assert re.search(r"│\s*0\s*│\s*0\s*│\s*5\s*│", again.stdout), again.stdout


# --- manifests a customer must refuse ----------------------------------------------------------


def _payload_edit(data: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    outer = json.loads(data)
    raw = outer["payload"] + "=" * (-len(outer["payload"]) % 4)
    payload = json.loads(base64.urlsafe_b64decode(raw))
    edit(payload)
    encoded = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    outer["payload"] = base64.urlsafe_b64encode(encoded).rstrip(b"=").decode()
    return json.dumps(outer, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _add_device(payload: dict) -> None:  # type: ignore[type-arg]
    payload["devices"].append(dict(payload["devices"][0], device_id="EVIL-000001"))


def _edit_fingerprint(payload: dict) -> None:  # type: ignore[type-arg]
    payload["devices"][7]["temp_fingerprint"] = "0" * 64


@pytest.mark.parametrize(
    "edit", [_edit_fingerprint, _add_device], ids=["fail-fingerprint", "fail-added-device"]
)
def test_fail_tampered_manifest(factory: Factory, batch: Path, tmp_path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(_payload_edit((batch / "manifest-B1.json").read_bytes(), edit))
    anchors = load_certificates_pem(factory.bundle.read_bytes())
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        verify_own_manifest(tampered.read_bytes(), anchors=anchors, now=datetime.now(UTC))
    result = ztpki("factory", "verify-manifest", tampered, "--trust", factory.bundle, check=False)
    assert result.returncode == 1
    assert "signature does not verify" in result.stderr
    untouched = tmp_path / "same.json"  # control: the unedited re-encoding verifies
    untouched.write_bytes(_payload_edit((batch / "manifest-B1.json").read_bytes(), lambda p: None))
    assert cli("factory", "verify-manifest", untouched, "--trust", factory.bundle).status == 0


def test_fail_manifest_signed_by_a_device_certificate(factory: Factory, batch: Path) -> None:
    identity = DeviceMemory.open(device_dirs(batch)[0]).identity()
    anchors = load_certificates_pem(factory.bundle.read_bytes())
    genuine = verify_own_manifest(
        (batch / "manifest-B1.json").read_bytes(), anchors=anchors, now=datetime.now(UTC)
    ).manifest
    assert identity.private_key is not None and identity.certificate is not None
    forged = sign_manifest(
        genuine, key=identity.private_key, chain=(identity.certificate, *identity.ca_certificates)
    )
    with pytest.raises(VerificationFailed, match="signer certificate does not verify"):
        verify_own_manifest(forged, anchors=anchors, now=datetime.now(UTC))


def test_fail_manifest_from_an_untrusted_ca(factory: Factory, batch: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    rogue_key = generate_private_key(KeySpec.EC_P256)
    rogue_root = create_self_signed_ca(
        rogue_key, build_subject("Acme Root CA", SubjectFields(), serial_number=None),
        now=now, validity=timedelta(days=30),
    )  # fmt: skip
    rogue = CertificateAuthority(name="rogue", key=rogue_key, certificate=rogue_root)
    signer_key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject(
            "line1-manifests", SubjectFields(organization="Acme Devices"), serial_number=None
        ),
        profile=CertificateProfile.MANIFEST_SIGNER,
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(days=10),
    )
    signer_cert = rogue.issue(signer_key.public_key(), grant)
    Credential(key=signer_key, chain=(signer_cert,), trust_anchors=(rogue_root,)).save(
        tmp_path / "rogue-signer", passphrase=b"manifest-signer-passphrase"
    )
    out = tmp_path / "rogue.json"
    cli_ok(
        "factory",
        "sign-manifest",
        "--devices",
        batch,
        "--signer",
        tmp_path / "rogue-signer",
        "--out",
        out,
    )
    refused = cli("factory", "verify-manifest", out, "--trust", factory.bundle)
    assert refused.status == 1 and "signer certificate does not verify" in " ".join(
        refused.stderr.split()
    )
    rogue_bundle = tmp_path / "rogue-bundle.pem"
    rogue_bundle.write_bytes(certificate_pem(rogue_root))
    assert cli("factory", "verify-manifest", out, "--trust", rogue_bundle).status == 0  # control


def test_ok_sign_manifest_from_device_directories(
    factory: Factory, batch: Path, tmp_path: Path
) -> None:
    out, csv = tmp_path / "order.json", tmp_path / "order.csv"
    cli_ok(
        "factory", "sign-manifest", "--devices", batch, "--signer", factory.signer,
        "--out", out, "--csv", csv, "--order", "PO-9",
    )  # fmt: skip
    shown = cli_ok("factory", "verify-manifest", out, "--trust", factory.bundle, "--json").json()
    assert shown["order"] == "PO-9" and len(shown["devices"]) == BATCH_SIZE
    assert "CN=line1-manifests" in shown["signer"]
    assert csv.read_text().startswith("device_id,temp_fingerprint_sha256,")


def test_ok_export_trust_is_the_factory_chain(factory: Factory) -> None:
    chain = load_certificates_pem(factory.bundle.read_bytes())
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=factory,O=Acme Devices,C=SE",
        "CN=Acme Root CA",
    ]
    assert chain[1].subject == chain[1].issuer
