"""The manifest signer credential, signing with a self-check, trust bundles."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from factory_pki import NOW, factory_pki, leaf
from fake_ca import FakeCA
from tests.support.signers import document_signer

from ztpki.credentials import Credential
from ztpki.errors import ConfigurationError, VerificationFailed
from ztpki.factory.shipping import load_trust_bundle, manufacturer_of
from ztpki.factory.signer import enroll_signer, sign_checked, verify_own_manifest, write_manifest
from ztpki.pki.keys import KeySpec, encode_pkcs8, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import certificate_der, certificates_pem
from ztpki.pki.profiles import DOCUMENT_SIGNING, CertificateProfile
from ztpki.protocol.enrollment import EnrollmentAnswer, EnrollmentRequest
from ztpki.protocol.manifest import Manifest, new_manifest_id

PKI = factory_pki()
EMPTY = Manifest(new_manifest_id(), "Acme", None, None, NOW, ())


def enroll(ca: FakeCA, **kw) -> Credential:
    kw.setdefault("ca_name", "manifests")
    kw.setdefault("trust", PKI.anchors)
    return asyncio.run(enroll_signer(ca, signer_id="line1-signer", now=NOW, **kw))  # type: ignore[arg-type]


def test_ok_enrolled_signer_signs_verifiable_manifests(tmp_path: Path) -> None:
    signer = enroll(FakeCA(PKI))
    assert signer.chain == (signer.certificate, PKI.manifests.certificate)  # root left out
    assert signer.trust_anchors == PKI.anchors
    assert manufacturer_of(signer.certificate) == "Acme"
    data = sign_checked(EMPTY, signer, now=NOW)
    assert verify_own_manifest(data, anchors=PKI.anchors, now=NOW).manifest == EMPTY
    write_manifest(tmp_path / "m.json", EMPTY, data, csv_path=tmp_path / "m.csv")
    assert (tmp_path / "m.json").read_bytes() == data
    assert (tmp_path / "m.csv").read_text().startswith("device_id,")
    signer.save(tmp_path / "cred", passphrase=b"signer-passphrase")
    assert Credential.load(tmp_path / "cred", passphrase=b"signer-passphrase").chain == signer.chain


def test_fail_enrolling_a_device_ca_as_signer() -> None:
    with pytest.raises(VerificationFailed, match=r"^device line1-signer: .*does not chain"):
        enroll(FakeCA(PKI), ca_name="factory")


def test_fail_sign_checked_refuses_a_non_signer() -> None:
    key, chain = leaf(PKI.factory, "dev", CertificateProfile.DEVICE)
    credential = Credential(key=key, chain=chain[:-1], trust_anchors=PKI.anchors)
    with pytest.raises(ConfigurationError, match="cannot sign manifests"):
        sign_checked(EMPTY, credential, now=NOW)
    expired = enroll(FakeCA(PKI))
    with pytest.raises(ConfigurationError, match="cannot sign manifests"):
        sign_checked(EMPTY, expired, now=NOW + timedelta(days=4000))


def test_trust_bundle_loading(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(certificates_pem(PKI.factory.chain))
    assert load_trust_bundle(bundle) == PKI.factory.chain
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_trust_bundle(tmp_path / "missing.pem")
    bundle.write_text("not pem")
    with pytest.raises(ConfigurationError, match="no PEM certificate"):
        load_trust_bundle(bundle)


def _code_signer_answer(answer: EnrollmentAnswer, request: EnrollmentRequest) -> EnrollmentAnswer:
    """A CA answering with a signing certificate for another purpose (codeSigning)."""
    key = generate_private_key(KeySpec.EC_P256)
    cert = document_signer(
        PKI.manifests,
        key,
        build_subject(request.device_id, SubjectFields(), serial_number=request.device_id),
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=30),
        eku=(ExtendedKeyUsageOID.CODE_SIGNING,),
    )
    return replace(
        answer,
        certificate_der=certificate_der(cert),
        private_key_der=encode_pkcs8(key, passphrase=None),
    )


def test_fail_enrolled_signer_without_document_signing() -> None:
    with pytest.raises(VerificationFailed, match=r"not a document \(manifest\) signing"):
        enroll(FakeCA(PKI, tamper=_code_signer_answer))
    # Control: the same CA system, untampered, issues a documentSigning signer.
    signer = enroll(FakeCA(PKI)).certificate
    usage = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [DOCUMENT_SIGNING]
