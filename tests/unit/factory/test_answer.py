"""accept_answer: only the identity that was asked for, verifying to the factory anchor."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from factory_pki import NOW, factory_pki, root_ca, sub_ca
from fake_ca import issue_answer

from ztpki.errors import MalformedInput, VerificationFailed
from ztpki.factory.answer import accept_answer, answer_root
from ztpki.pki.keys import KeySpec, encode_pkcs8, generate_private_key, keys_match
from ztpki.pki.pem import certificate_der
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.enrollment import EnrollmentParameters, EnrollmentRequest

PKI = factory_pki()
REQUEST = EnrollmentRequest(request_id="r1", device_id="ACME-1")


def accept(answer, **kw):
    kw.setdefault("device_id", "ACME-1")
    kw.setdefault("anchors", PKI.anchors)
    kw.setdefault("now", NOW)
    return accept_answer(answer, **kw)


def test_ok_answer_accepted_with_configured_trust() -> None:
    answer = issue_answer(PKI.factory, REQUEST)
    accepted = accept(answer)
    assert accepted.device_id == "ACME-1"
    assert keys_match(accepted.private_key, accepted.certificate.public_key())
    assert accepted.ca_certificates == PKI.factory.chain
    assert accepted.trust_anchors == PKI.anchors
    assert accepted.intermediates == (PKI.factory.certificate,)


def test_ok_answer_root_used_when_no_trust_configured() -> None:
    accepted = accept(issue_answer(PKI.factory, REQUEST), anchors=None)
    assert accepted.trust_anchors == (PKI.root.certificate,)
    assert answer_root(PKI.factory.chain) == PKI.root.certificate
    assert answer_root((PKI.factory.certificate,)) is None


def test_ok_encrypted_key_with_the_passphrase_asked_for() -> None:
    answer = issue_answer(PKI.factory, REQUEST)
    key = generate_private_key(KeySpec.EC_P256)
    # Re-encode the answer's key encrypted, as the CA does when EncryptPrivateKey is set.
    from ztpki.pki.keys import decode_pkcs8

    key = decode_pkcs8(answer.private_key_der, passphrase=None)
    encrypted = replace(
        answer,
        private_key_der=encode_pkcs8(key, passphrase=b"transport-secret"),
        private_key_encrypted=True,
    )
    assert accept(encrypted, key_passphrase=b"transport-secret").certificate
    with pytest.raises(VerificationFailed, match="encryption is not what was asked"):
        accept(encrypted)


def test_fail_certificate_names_another_device() -> None:
    answer = issue_answer(PKI.factory, REQUEST, name="ACME-2")
    with pytest.raises(VerificationFailed, match=r"^device ACME-1: .*names 'ACME-2'"):
        accept(answer)


def test_fail_key_does_not_match_certificate() -> None:
    answer = issue_answer(PKI.factory, REQUEST)
    other = encode_pkcs8(generate_private_key(KeySpec.EC_P256), passphrase=None)
    with pytest.raises(VerificationFailed, match=r"^device ACME-1: .*does not match"):
        accept(replace(answer, private_key_der=other))


def test_fail_chain_from_another_root() -> None:
    rogue = sub_ca(root_ca("Rogue Root"), "Rogue Factory")
    answer = issue_answer(rogue, REQUEST)
    with pytest.raises(VerificationFailed, match=r"^device ACME-1: .*does not chain"):
        accept(answer)
    # control: the same answer verifies against its own root
    assert accept(answer, anchors=(rogue.root,)).certificate


def test_fail_chain_missing_intermediate() -> None:
    answer = issue_answer(PKI.factory, REQUEST)
    stripped = replace(answer, ca_certificates_der=(certificate_der(PKI.root.certificate),))
    with pytest.raises(VerificationFailed, match="does not chain"):
        accept(stripped)


def test_fail_no_root_in_answer_and_no_trust() -> None:
    answer = issue_answer(PKI.factory, REQUEST)
    no_root = replace(answer, ca_certificates_der=(certificate_der(PKI.factory.certificate),))
    with pytest.raises(VerificationFailed, match="no root CA certificate"):
        accept(no_root, anchors=None)
    with pytest.raises(VerificationFailed, match="empty"):
        accept(answer, anchors=())


def test_fail_expired_certificate() -> None:
    answer = issue_answer(PKI.factory, REQUEST)
    with pytest.raises(VerificationFailed, match="does not chain"):
        accept(answer, now=NOW + timedelta(days=400))


def test_fail_no_private_key() -> None:
    answer = issue_answer(PKI.factory, REQUEST)
    with pytest.raises(VerificationFailed, match="no private key"):
        accept(replace(answer, private_key_der=None))


def test_fail_damaged_der() -> None:
    answer = issue_answer(PKI.factory, REQUEST)
    with pytest.raises(MalformedInput, match=r"^device ACME-1: the CA answer is damaged"):
        accept(replace(answer, certificate_der=b"\x30\x03\x02\x01\x01"))
    with pytest.raises(MalformedInput, match="private key does not load"):
        accept(replace(answer, private_key_der=b"\x30\x00"))


def test_fail_device_certificate_is_not_a_document_signer() -> None:
    answer = issue_answer(PKI.factory, REQUEST)
    with pytest.raises(VerificationFailed, match="does not chain"):
        accept(answer, document_signer=True)
    signer = issue_answer(PKI.manifests, REQUEST, profile=CertificateProfile.MANIFEST_SIGNER)
    assert accept(signer, document_signer=True).certificate  # control
    with pytest.raises(VerificationFailed):
        accept(signer)  # and a signer is no TLS client


def test_ok_rsa_key_answer() -> None:
    request = EnrollmentRequest(
        request_id="r2",
        device_id="ACME-1",
        parameters=EnrollmentParameters(key_algorithm=KeySpec.RSA_2048),
    )
    assert accept(issue_answer(PKI.factory, request)).certificate
