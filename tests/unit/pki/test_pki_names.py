"""Subject names: every device id the protocol allows (A-Z a-z 0-9 . _ -) can be issued."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject, device_id_of
from ztpki.pki.pem import certificate_der, load_certificate_der
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.est import build_csr, csr_device_id

NOW = datetime.now(UTC)


def _authority() -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    name = build_subject("names-test-ca", SubjectFields(), serial_number=None)
    cert = create_self_signed_ca(key, name, now=NOW, validity=timedelta(days=2))
    return CertificateAuthority(name="ca", key=key, certificate=cert)


def _serial_number(name: x509.Name) -> x509.NameAttribute[str]:
    (attribute,) = name.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    assert isinstance(attribute.value, str)
    return attribute  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("device_id", "asn1_type"),
    [
        pytest.param("dev_1", _ASN1Type.UTF8String, id="ok-underscore-utf8string"),
        pytest.param("_", _ASN1Type.UTF8String, id="ok-only-underscore"),
        pytest.param("A.b-9", _ASN1Type.PrintableString, id="ok-printable-stays-printablestring"),
    ],
)
def test_ok_every_allowed_device_id_is_issued(device_id: str, asn1_type: _ASN1Type) -> None:
    ca = _authority()
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject(device_id, SubjectFields(), serial_number=device_id),
        profile=CertificateProfile.DEVICE,
        not_before=NOW,
        not_after=NOW + timedelta(days=1),
    )
    certificate = load_certificate_der(certificate_der(ca.issue(key.public_key(), grant)))
    attribute = _serial_number(certificate.subject)
    assert attribute.value == device_id
    assert attribute._type == asn1_type
    assert device_id_of(certificate) == device_id


def test_ok_csr_names_a_device_id_with_underscore() -> None:
    csr = build_csr(generate_private_key(KeySpec.EC_P256), device_id="meter_7")
    reloaded = x509.load_der_x509_csr(csr.public_bytes(serialization.Encoding.DER))
    assert csr_device_id(reloaded) == "meter_7"
    assert _serial_number(reloaded.subject)._type == _ASN1Type.UTF8String
    plain = build_csr(generate_private_key(KeySpec.EC_P256), device_id="meter-7")  # control
    assert _serial_number(plain.subject)._type == _ASN1Type.PrintableString
