"""Manifest attacks: the signed shipping manifest is how devices get into the customer's
register, so a forged, altered or replayed one must not list, re-bind or unblock a device.

Each case imports with `ztpki node import` in its own process, exactly as an operator does,
and checks the exit status and message, the register, the audit trail, and that a device of
the genuine manifest still customizes itself afterwards.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest
from tests.attacks.attack_deployment import Deployment, now
from tests.attacks.attack_report import AttackReport

from ztpki.credentials import Credential
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import fingerprint_sha256
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.est import build_csr, encode_csr
from ztpki.protocol.manifest import Manifest, ManifestEntry, new_manifest_id, sign_manifest

pytestmark = pytest.mark.timeout(240)

CATEGORY = "manifests"


def _import(d: Deployment, path: Path) -> tuple[int, str]:
    result = d.operator("node", "import", "--dir", str(d.node_dir), str(path))
    return result.status, " ".join((result.out + result.err).split())


def _write(d: Deployment, name: str, data: bytes) -> Path:
    path = d.root / name
    path.write_bytes(data)
    return path


def _rogue_manifest(device_id: str, fingerprint: str) -> Manifest:
    stamp = now()
    return Manifest(
        manifest_id=new_manifest_id(),
        manufacturer="Acme Devices",
        batch="B1",
        order=None,
        issued_at=stamp,
        entries=(ManifestEntry(device_id, fingerprint, "e-box", "B1", stamp),),
    )


def _record(report: AttackReport, case: str, attack: str, observed: str, verdict: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed=observed,
        verdict=verdict,
    )


def test_fail_tampered_manifest(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    genuine = json.loads((d.root / "manifest-new.json").read_text())
    payload = json.loads(base64.urlsafe_b64decode(genuine["payload"] + "=="))
    payload["devices"].append(
        {**payload["devices"][0], "device_id": "ACME-B1-9999", "temp_fingerprint": "ab" * 32}
    )
    payload["manifest_id"] = new_manifest_id()
    encoded = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    genuine["payload"] = base64.urlsafe_b64encode(encoded).rstrip(b"=").decode()
    tampered = json.dumps(genuine, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    before = d.snapshot()
    status, text = _import(d, _write(d, "manifest-tampered.json", tampered))
    assert status == 1 and "signature does not verify" in text, text
    checked = d.check_unchanged(before, audited=[(None, "refused", "signature does not verify")])
    assert "ACME-B1-9999" not in d.register()
    _record(
        attack_report,
        "tampered-manifest",
        "`ztpki node import` of the genuine signed manifest with one device added to its "
        "payload (re-encoded exactly as ztpki writes it; signature left as it was)",
        f"exit 1: {text}; {checked}; {d.serve_next_device()}",
        "refused",
    )


def test_fail_manifest_signed_by_device_certificate(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """A genuine factory certificate, but one without EKU documentSigning (a device's)."""
    d = deployment
    device = d.take_device()
    identity = device.identity()
    assert identity.private_key is not None and identity.certificate is not None
    forged_key = generate_private_key(KeySpec.EC_P256)
    clone = d.authority("factory", "factory")  # only for the clone's fingerprint below
    start = now()
    clone_cert = clone.issue(
        forged_key.public_key(),
        IssuanceGrant(
            subject=build_subject("ACME-B1-8888", SubjectFields(), serial_number="ACME-B1-8888"),
            profile=CertificateProfile.DEVICE,
            not_before=start - timedelta(minutes=1),
            not_after=start + timedelta(days=30),
        ),
    )
    signed = sign_manifest(
        _rogue_manifest("ACME-B1-8888", fingerprint_sha256(clone_cert)),
        key=identity.private_key,
        chain=[identity.certificate, *identity.ca_certificates[:-1]],
    )
    before = d.snapshot()
    status, text = _import(d, _write(d, "manifest-device-signed.json", signed))
    assert status == 1 and "not a document (manifest) signing certificate" in text, text
    checked = d.check_unchanged(before, audited=[(None, "refused", "signer certificate")])
    assert "ACME-B1-8888" not in d.register()
    _record(
        attack_report,
        "manifest-signed-by-non-manifest-certificate",
        "`ztpki node import` of a well-formed manifest listing a new device, signed with a "
        "device's genuine factory key and certificate (EKU clientAuth, not documentSigning)",
        f"exit 1: {text}; {checked}; {d.serve_next_device()}",
        "refused",
    )


def test_fail_manifest_from_unknown_manufacturer(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    root_key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject(
        "Acme Devices Root", SubjectFields(organization="Acme Devices"), serial_number=None
    )
    root = create_self_signed_ca(root_key, subject, now=now(), validity=timedelta(days=30))
    signer_key = generate_private_key(KeySpec.EC_P256)
    start = now()
    signer = CertificateAuthority("rogue", root_key, root).issue(
        signer_key.public_key(),
        IssuanceGrant(
            subject=build_subject(
                "manifest signer", SubjectFields(organization="Acme Devices"), serial_number=None
            ),
            profile=CertificateProfile.MANIFEST_SIGNER,
            not_before=start - timedelta(minutes=1),
            not_after=start + timedelta(days=30),
        ),
    )
    signed = sign_manifest(
        _rogue_manifest("ACME-B1-7777", "cd" * 32), key=signer_key, chain=[signer, root]
    )
    before = d.snapshot()
    status, text = _import(d, _write(d, "manifest-rogue.json", signed))
    assert status == 1 and "signer certificate does not verify" in text, text
    checked = d.check_unchanged(before, audited=[(None, "refused", "signer certificate")])
    _record(
        attack_report,
        "manifest-from-unknown-manufacturer",
        "`ztpki node import` of a manifest signed by a documentSigning certificate of a "
        "look-alike 'Acme Devices' CA the node does not trust",
        f"exit 1: {text}; {checked}; {d.serve_next_device()}",
        "refused",
    )


def test_fail_replayed_manifests_do_not_unblock(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    blocked = d.operator("node", "block", "--dir", str(d.node_dir), device.device_id)
    assert blocked.status == 0, blocked.err
    before = d.snapshot()
    assert before.register[device.device_id][0] == "blocked"
    again_status, again = _import(d, d.root / "manifest-new.json")
    old_status, old = _import(d, d.root / "manifest-old.json")
    assert again_status == 0 and "imported before; nothing changed" in again, again
    assert old_status == 0 and "listed 0 device(s)" in old, old
    checked = d.check_unchanged(before, audited=[(None, "imported", "manifest")])
    assert d.device_row(device.device_id)[0] == "blocked"  # type: ignore[index]
    refused = d.est(
        "simpleenroll",
        key=device.key,
        chain=[device.certificate],
        body=_csr_body(device.device_id),
    )
    assert refused.status == 403 and "blocked" in refused.text, refused.summary()
    _record(
        attack_report,
        "replayed-manifest-unblocks-nothing",
        "after the operator blocked a device: `ztpki node import` of the manifest that listed "
        "it (again), then of an older genuine manifest of the same batch, never imported",
        f"the same manifest: exit 0, '{again}'; the older one: exit 0, '{old}' (recorded and "
        f"audited as imported, changing no device); {checked}; the device is still blocked "
        f"(its enrollment: {refused.summary()}); {d.serve_next_device()}",
        "refused",
    )


def test_fail_newer_manifest_rebinding_device(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """Even the genuine signer cannot re-bind a listed device to another certificate: import
    never changes a device the register already holds."""
    d = deployment
    device = d.take_device()
    clone_key = generate_private_key(KeySpec.EC_P256)
    start = now()
    clone = d.authority("factory", "factory").issue(
        clone_key.public_key(),
        IssuanceGrant(
            subject=device.certificate.subject,
            profile=CertificateProfile.DEVICE,
            not_before=start - timedelta(minutes=1),
            not_after=start + timedelta(days=30),
        ),
    )
    signer = Credential.load(
        d.root / "signer", passphrase=d.passphrases["ZTPKI_SIGNER_PASSPHRASE"].encode()
    )
    signed = sign_manifest(
        _rogue_manifest(device.device_id, fingerprint_sha256(clone)),
        key=signer.key,
        chain=list(signer.chain),
    )
    before = d.snapshot()
    status, text = _import(d, _write(d, "manifest-rebind.json", signed))
    assert status == 0 and "listed 0 device(s)" in text, text
    checked = d.check_unchanged(before, audited=[(None, "imported", "manifest")])
    clone_try = d.est(
        "simpleenroll", key=clone_key, chain=[clone], body=_csr_body(device.device_id)
    )
    assert clone_try.status == 403 and "fingerprint mismatch" in clone_try.text, clone_try.summary()
    _record(
        attack_report,
        "newer-manifest-rebinding-device",
        "`ztpki node import` of a newer manifest, signed by the genuine manifest signer, "
        "that binds a listed device to another (cloned) temporary certificate",
        f"exit 0, '{text}': the listed device keeps the fingerprint of its first manifest; "
        f"{checked}; the clone's enrollment: {clone_try.summary()}; {d.serve_next_device()}",
        "refused",
    )


def _csr_body(device_id: str) -> bytes:

    return encode_csr(build_csr(generate_private_key(KeySpec.EC_P256), device_id=device_id))
