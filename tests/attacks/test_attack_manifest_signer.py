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


def _refused_import(
    d: Deployment,
    report: AttackReport,
    case: str,
    attack: str,
    signed_with: tuple[PrivateKey, list[x509.Certificate]],
    reason: str,
) -> None:
    """Import a manifest of one new Acme device signed with (key, chain); assert it is
    refused with reason, audited, and changes nothing; record the case."""
    d.reserve(1)
    listed = _unique("ACME-SIGNER")
    key, chain = signed_with
    path = d.root / f"manifest-{case}.json"
    path.write_bytes(sign_manifest(_manifest(listed), key=key, chain=chain))
    before = d.snapshot()
    result = d.operator("node", "import", "--dir", str(d.node_dir), str(path))
    text = " ".join((result.out + result.err).split())
    assert result.status == 1 and reason in text, text
    checked = d.check_unchanged(before, audited=[(None, "refused", reason)])
    assert listed not in d.register()
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed=f"exit 1: {text}; {checked}; {d.serve_next_device()}",
        verdict="refused",
    )


# (case, attack, signer's CA system and CA, its EKU, which certificates Acme pins: None for
# no pins, else the genuine signer and, with True, this one too; the refusal's reason).
CASES = [
    (
        "document-signer-not-pinned",
        "Acme pins its manifest signer; `ztpki node import` of an Acme manifest signed by "
        "another certificate Acme's own manifest CA issued with EKU documentSigning (an "
        "invoice signer under the same root)",
        ("factory", "manifests"),
        DOCUMENT_SIGNING,
        False,
        "pinned for",
    ),
    (
        "document-signer-outside-bundle",
        "`ztpki node import` of an Acme manifest signed by a documentSigning certificate, "
        "O=Acme Devices, that the customer's own device CA issued (a CA the node trusts, for "
        "operational identities, but not as Acme's trust bundle)",
        ("customer", "devices"),
        DOCUMENT_SIGNING,
        None,
        "signer certificate does not verify",
    ),
    (
        "pinned-signer-without-document-signing",
        "Acme pins, besides its manifest signer, a certificate of its manifest CA with EKU "
        "codeSigning (neither documentSigning nor the earlier ztpki manifest-signer EKU); "
        "`ztpki node import` of an Acme manifest signed by it",
        ("factory", "manifests"),
        ExtendedKeyUsageOID.CODE_SIGNING,
        True,
        "not a document (manifest) signing certificate",
    ),
]


@pytest.mark.parametrize(
    ("case", "attack", "issuer", "eku", "pinned", "reason"),
    [pytest.param(*c, id=f"fail-{c[0]}") for c in CASES],
)
def test_fail_manifest_signer_without_the_right(
    deployment: Deployment,
    attack_report: AttackReport,
    case: str,
    attack: str,
    issuer: tuple[str, str],
    eku: x509.ObjectIdentifier,
    pinned: bool | None,
    reason: str,
) -> None:
    d = deployment
    ca = d.authority(*issuer)
    key, cert = _signer(ca, case, [eku])
    also = (cert,) if pinned else ()
    pins = contextlib.nullcontext() if pinned is None else _acme_pins(d, *also)
    with pins:
        _refused_import(d, attack_report, case, attack, (key, [cert, *ca.chain]), reason)
