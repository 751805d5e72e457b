"""Manifest-signer attacks: which certificate may sign a manufacturer's manifests.

A manifest signer's certificate carries EKU id-kp-documentSigning (RFC 9336); earlier ztpki
versions added a UUID-arc EKU of their own, still accepted. The EKU states the purpose only:
the right to list a manufacturer's devices comes from the customer's configuration, that
manufacturer's trust bundle and, when given, its pinned signers. Each case runs `ztpki node
import` in its own process, as an operator does, and checks the exit status and message, the
register, the audit trail, the CA records, and that a legitimate device still customizes.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest
import tomli_w
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.attacks.attack_deployment import MANUFACTURER, Deployment, now
from tests.attacks.attack_report import AttackReport
from tests.support.signers import document_signer

from ztpki.credentials import Credential
from ztpki.pki.authority import CertificateAuthority
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.pem import fingerprint_sha256
from ztpki.pki.profiles import DOCUMENT_SIGNING
from ztpki.protocol.manifest import Manifest, ManifestEntry, new_manifest_id, sign_manifest

pytestmark = pytest.mark.timeout(240)

CATEGORY = "manifest-signers"


def _record(report: AttackReport, case: str, attack: str, observed: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed=observed,
        verdict="refused",
    )


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{os.urandom(3).hex()}"


def _manifest(device_id: str) -> Manifest:
    stamp = now()
    entry = ManifestEntry(device_id, os.urandom(32).hex(), None, None, stamp)
    return Manifest(new_manifest_id(), MANUFACTURER, None, None, stamp, (entry,))


def _signer(
    ca: CertificateAuthority, cn: str, eku: Sequence[x509.ObjectIdentifier]
) -> tuple[PrivateKey, x509.Certificate]:
    """A signing certificate ca issues outside the manifest-signer profile, as Acme."""
    key, start = generate_private_key(KeySpec.EC_P256), now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, MANUFACTURER),
        ]
    )
    cert = document_signer(
        ca,
        key,
        subject,
        not_before=start - timedelta(minutes=1),
        not_after=start + timedelta(days=30),
        eku=eku,
    )
    return key, cert


def _genuine_fingerprint(d: Deployment) -> str:
    passphrase = d.passphrases["ZTPKI_SIGNER_PASSPHRASE"].encode()
    return fingerprint_sha256(Credential.load(d.root / "signer", passphrase=passphrase).certificate)


@contextlib.contextmanager
def _acme_pins(d: Deployment, *certificates: x509.Certificate) -> Iterator[None]:
    """Acme's manifest signers pinned in node.toml (its genuine signer and certificates),
    for the cases that need a manufacturer who pins; the file is restored afterwards."""
    path = d.node_dir / "node.toml"
    original = path.read_text()
    config = tomllib.loads(original)
    pins = [_genuine_fingerprint(d), *(fingerprint_sha256(c) for c in certificates)]
    config["manufacturer"][MANUFACTURER]["manifest_signers"] = [f"sha256:{p}" for p in pins]
    path.write_text(tomli_w.dumps(config))
    try:
        yield
    finally:
        path.write_text(original)


def _import(d: Deployment, name: str, data: bytes) -> tuple[int, str]:
    path = d.root / name
    path.write_bytes(data)
    result = d.operator("node", "import", "--dir", str(d.node_dir), str(path))
    return result.status, " ".join((result.out + result.err).split())


def _refused_import(
    d: Deployment, name: str, key: PrivateKey, chain: list[x509.Certificate], reason: str
) -> str:
    """Import a manifest of one new Acme device signed by key; assert it is refused with
    reason, audited, and changes nothing. Returns the observed text for the report."""
    d.reserve(1)
    listed = _unique("ACME-SIGNER")
    signed = sign_manifest(_manifest(listed), key=key, chain=chain)
    before = d.snapshot()
    status, text = _import(d, name, signed)
    assert status == 1 and reason in text, text
    checked = d.check_unchanged(before, audited=[(None, "refused", reason)])
    assert listed not in d.register()
    return f"exit 1: {text}; {checked}"


def test_fail_document_signer_not_pinned(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    manifests = d.authority("factory", "manifests")
    key, cert = _signer(manifests, "invoice signer", [DOCUMENT_SIGNING])
    with _acme_pins(d):
        observed = _refused_import(
            d, "manifest-invoice-signer.json", key, [cert, manifests.certificate], "pinned for"
        )
    _record(
        attack_report,
        "document-signer-not-pinned",
        "Acme pins its manifest signer; `ztpki node import` of an Acme manifest signed by "
        "another certificate Acme's own manifest CA issued with EKU documentSigning (an "
        "invoice signer under the same root)",
        f"{observed}; {d.serve_next_device()}",
    )


def test_fail_document_signer_outside_the_manufacturers_bundle(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    # The customer's own device CA: the node trusts it, for operational identities only.
    devices = d.authority("customer", "devices")
    key, cert = _signer(devices, "manifest signer", [DOCUMENT_SIGNING])
    observed = _refused_import(
        d,
        "manifest-customer-signer.json",
        key,
        [cert, *devices.chain],
        "signer certificate does not verify",
    )
    _record(
        attack_report,
        "document-signer-outside-bundle",
        "`ztpki node import` of an Acme manifest signed by a documentSigning certificate, "
        "O=Acme Devices, that the customer's own device CA issued (a CA the node trusts, but "
        "not as Acme's trust bundle)",
        f"{observed}; {d.serve_next_device()}",
    )


def test_fail_pinned_signer_without_document_signing(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    manifests = d.authority("factory", "manifests")
    key, cert = _signer(manifests, "code signer", [ExtendedKeyUsageOID.CODE_SIGNING])
    with _acme_pins(d, cert):
        observed = _refused_import(
            d,
            "manifest-code-signer.json",
            key,
            [cert, manifests.certificate],
            "not a document (manifest) signing certificate",
        )
    _record(
        attack_report,
        "pinned-signer-without-document-signing",
        "Acme pins, besides its manifest signer, a certificate of its manifest CA with EKU "
        "codeSigning (neither documentSigning nor the earlier ztpki manifest-signer EKU); "
        "`ztpki node import` of an Acme manifest signed by it",
        f"{observed}; {d.serve_next_device()}",
    )
