"""Manufacturer attacks: the node buys from two manufacturers (Acme Devices, ids ACME-*, and
Globex, ids GLX-*), and each may list only its own devices, sign only its own manifests, and
vouch only for the devices listed as its own.

Each import or listing runs `ztpki node ...` in its own process, exactly as an operator does;
each enrollment is a real mTLS EST request to the running node. Every case checks the exit
status or HTTP status and message, the register, the audit trail, the CA records, and that a
legitimate device still customizes itself afterwards.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import pytest
from cryptography import x509
from tests.attacks.attack_deployment import MANUFACTURER, OTHER_MANUFACTURER, Deployment, now
from tests.attacks.attack_report import AttackReport

from ztpki.credentials import Credential
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.est import build_csr, encode_csr
from ztpki.protocol.manifest import Manifest, ManifestEntry, new_manifest_id, sign_manifest

pytestmark = pytest.mark.timeout(240)

CATEGORY = "manufacturers"


def _record(report: AttackReport, case: str, attack: str, observed: str, verdict: str) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed=observed,
        verdict=verdict,
    )


def _node(d: Deployment, *args: str) -> tuple[int, str]:
    result = d.operator("node", *args[:1], "--dir", str(d.node_dir), *args[1:])
    return result.status, " ".join((result.out + result.err).split())


def _import(d: Deployment, name: str, data: bytes) -> tuple[int, str]:
    path = d.root / name
    path.write_bytes(data)
    return _node(d, "import", str(path))


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{os.urandom(3).hex()}"


def _manifest(manufacturer: str, ids: list[str], *, manifest_id: str | None = None) -> Manifest:
    stamp = now()
    return Manifest(
        manifest_id=manifest_id or new_manifest_id(),
        manufacturer=manufacturer,
        batch=None,
        order=None,
        issued_at=stamp,
        entries=tuple(ManifestEntry(i, fingerprint_sha256_of(i), None, None, stamp) for i in ids),
    )


def fingerprint_sha256_of(device_id: str) -> str:
    """A stand-in temporary-certificate fingerprint (these devices never enroll)."""
    return hashlib.sha256(device_id.encode()).hexdigest()


def _grant(subject: x509.Name, profile: CertificateProfile) -> IssuanceGrant:
    start = now()
    return IssuanceGrant(
        subject=subject,
        profile=profile,
        not_before=start - timedelta(minutes=1),
        not_after=start + timedelta(days=30),
    )


def _globex_signer(d: Deployment) -> tuple[PrivateKey, list[x509.Certificate]]:
    """A genuine manifest signer of Globex: what Globex's own manifest CA issues."""
    ca = d.authority("globex", "gmanifests")
    key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject(
        "globex-signer", SubjectFields(organization=OTHER_MANUFACTURER), serial_number=None
    )
    cert = ca.issue(key.public_key(), _grant(subject, CertificateProfile.MANIFEST_SIGNER))
    return key, [cert, ca.certificate]


def _acme_signer(d: Deployment) -> Credential:
    return Credential.load(
        d.root / "signer", passphrase=d.passphrases["ZTPKI_SIGNER_PASSPHRASE"].encode()
    )


def _temporary(ca: CertificateAuthority, device_id: str) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject(device_id, SubjectFields(), serial_number=device_id)
    return key, ca.issue(key.public_key(), _grant(subject, CertificateProfile.DEVICE))


def _csr_body(device_id: str) -> bytes:
    return encode_csr(build_csr(generate_private_key(KeySpec.EC_P256), device_id=device_id))


# --------------------------------------------------------------------------- manifests


def test_fail_manifest_listing_another_manufacturers_ids(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """Globex's genuine signer lists devices in Acme's namespace under Globex's own name."""
    d = deployment
    d.reserve(1)
    poached = _unique("ACME-POACH")
    key, chain = _globex_signer(d)
    signed = sign_manifest(
        _manifest(OTHER_MANUFACTURER, [_unique("GLX-OK"), poached]), key=key, chain=chain
    )
    before = d.snapshot()
    status, text = _import(d, "manifest-globex-poaching.json", signed)
    assert status == 1 and "outside manufacturer Globex's namespace (GLX-*)" in text, text
    assert poached in text
    checked = d.check_unchanged(before, audited=[(None, "refused", "outside manufacturer")])
    assert poached not in d.register()
    _record(
        attack_report,
        "manifest-lists-ids-outside-namespace",
        "`ztpki node import` of a manifest naming Globex, signed by Globex's genuine manifest "
        "signer, that lists one GLX- device and one ACME- device (Acme's namespace)",
        f"exit 1: {text}; the whole manifest is refused, not only the foreign id; {checked}; "
        f"{d.serve_next_device()}",
        "refused",
    )


def test_fail_manifest_naming_a_manufacturer_signed_by_another(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """Globex signs a manifest that claims to be Acme's (Acme ids, Acme's name)."""
    d = deployment
    d.reserve(1)
    forged = _unique("ACME-FORGED")
    key, chain = _globex_signer(d)
    signed = sign_manifest(_manifest(MANUFACTURER, [forged]), key=key, chain=chain)
    before = d.snapshot()
    status, text = _import(d, "manifest-acme-by-globex.json", signed)
    assert status == 1 and "signer certificate does not verify" in text, text
    assert f"trust bundle of manufacturer {MANUFACTURER}" in text, text
    checked = d.check_unchanged(before, audited=[(None, "refused", "signer certificate")])
    assert forged not in d.register()
    _record(
        attack_report,
        "manifest-naming-manufacturer-signed-by-another",
        "`ztpki node import` of a manifest naming 'Acme Devices' and listing an ACME- id, "
        "signed by Globex's genuine manifest signer (a certificate the node trusts, for Globex)",
        f"exit 1: {text}; {checked}; {d.serve_next_device()}",
        "refused",
    )


def test_manifest_id_is_unique_per_manufacturer(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """Globex may reuse an id Acme used (its own manifest imports); within Acme the id
    counts once (the second manifest under it lists nothing)."""
    d = deployment
    d.reserve(1)
    taken = next(m for m in _imported_manifest_ids(d) if m[0] == MANUFACTURER)[1]
    glx = [_unique("GLX-SAMEID"), _unique("GLX-SAMEID")]
    key, chain = _globex_signer(d)
    theirs = sign_manifest(
        _manifest(OTHER_MANUFACTURER, glx, manifest_id=taken), key=key, chain=chain
    )
    status, text = _import(d, "manifest-globex-same-id.json", theirs)
    assert status == 0 and "listed 2 device(s)" in text, text
    assert all(d.device_row(i) == ("listed", None, None) for i in glx)
    assert (OTHER_MANUFACTURER, taken) in _imported_manifest_ids(d)
    # Within one manufacturer: a second manifest under the same id lists nothing.
    sneaked = _unique("ACME-SAMEID")
    signer = _acme_signer(d)
    ours = sign_manifest(
        _manifest(MANUFACTURER, [sneaked], manifest_id=taken),
        key=signer.key,
        chain=list(signer.chain),
    )
    before = d.snapshot()
    again_status, again = _import(d, "manifest-acme-same-id.json", ours)
    assert again_status == 0 and "imported before; nothing changed" in again, again
    checked = d.check_unchanged(
        before, unaudited_because="a manifest id seen before changes nothing"
    )
    assert sneaked not in d.register()
    _record(
        attack_report,
        "manifest-id-per-manufacturer",
        f"`ztpki node import` of a Globex manifest reusing the id of an imported Acme manifest "
        f"({taken}), then of a new Acme manifest (genuine signer, one new device) under that id",
        f"Globex's: exit 0, '{text}' (ids are Globex's own); Acme's second: exit 0, '{again}', "
        f"its device not listed; {checked}; {d.serve_next_device()}",
        "refused",
    )


def _imported_manifest_ids(d: Deployment) -> list[tuple[str, str]]:
    rows = d._query(d.node_dir / "node.sqlite", "SELECT manufacturer, manifest_id FROM manifest")
    return [(r[0], r[1]) for r in rows]


# --------------------------------------------------------------------------- enrollment


def test_fail_clone_under_another_manufacturers_root(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """Globex's CA (trusted by the node, for Globex) mints a temporary certificate for an Acme
    device: one listed by hand without a fingerprint, and one listed by Acme's manifest."""
    d = deployment
    by_hand = _unique("ACME-HAND")
    added = _node(d, "add", by_hand, "--manufacturer", MANUFACTURER)
    assert added[0] == 0, added[1]
    listed = d.take_device()
    globex = d.authority("globex", "gfactory")
    before = d.snapshot()
    answers = []
    for device_id in (by_hand, listed.device_id):
        key, clone = _temporary(globex, device_id)
        answer = d.est(
            "simpleenroll", key=key, chain=[clone, globex.certificate], body=_csr_body(device_id)
        )
        assert answer.status == 403 and "manufacturer mismatch" in answer.text, answer.summary()
        answers.append(answer.summary())
    checked = d.check_unchanged(
        before,
        audited=[
            (by_hand, "refused", "manufacturer mismatch"),
            (listed.device_id, "refused", "manufacturer mismatch"),
        ],
    )
    # Control: a temporary certificate from Acme's factory CA for the hand-listed id enrolls.
    key, genuine = _temporary(d.authority("factory", "factory"), by_hand)
    control = d.est("simpleenroll", key=key, chain=[genuine], body=_csr_body(by_hand))
    assert control.status == 200, control.summary()
    assert d.device_row(by_hand)[0] == "issued"  # type: ignore[index]
    _record(
        attack_report,
        "clone-under-another-manufacturers-root",
        "EST simpleenroll with temporary certificates minted by Globex's factory CA (trusted by "
        "the node for Globex) for two Acme devices: one listed by hand with `--manufacturer "
        "'Acme Devices'` and no fingerprint, one listed by Acme's manifest",
        f"{answers[0]}; {answers[1]}; {checked}; control: Acme's certificate for the "
        f"hand-listed id enrolls (HTTP {control.status}); {d.serve_next_device()}",
        "refused",
    )


def test_fail_node_add_without_fingerprint_or_manufacturer(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    d.reserve(1)
    device_id = _unique("ACME-LOOSE")
    before = d.snapshot()
    bare = _node(d, "add", device_id)
    unknown = _node(d, "add", device_id, "--manufacturer", "Initech")
    foreign = _node(d, "add", device_id, "--manufacturer", OTHER_MANUFACTURER)
    assert bare[0] == 1 and "without --fingerprint unless --manufacturer" in bare[1], bare
    assert unknown[0] == 1 and "not a manufacturer of this node" in unknown[1], unknown
    assert foreign[0] == 1 and "outside manufacturer Globex's device ids" in foreign[1], foreign
    checked = d.check_unchanged(
        before, unaudited_because="refused at the console before the register is opened"
    )
    assert device_id not in d.register()
    _record(
        attack_report,
        "node-add-without-fingerprint-or-manufacturer",
        "`ztpki node add ID` with neither --fingerprint nor --manufacturer (any trusted "
        "factory's certificate for the id would do), with an unknown manufacturer, and with "
        "a manufacturer whose namespace does not hold the id",
        f"exit 1: {bare[1]}; exit 1: {unknown[1]}; exit 1: {foreign[1]}; {checked}; "
        f"{d.serve_next_device()}",
        "refused",
    )
