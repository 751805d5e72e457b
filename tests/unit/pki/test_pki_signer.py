"""pki.signer without a token: a key that signs "elsewhere" (here: a cryptography key behind
the ExternalKey interface) gets certificates and CRLs that verify, with the signature
AlgorithmIdentifier of its own family, hash and padding; what a token cannot hold is refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import SignatureAlgorithmOID

from ztpki.errors import UnsupportedParameter
from ztpki.pki.asn1 import signed_parts
from ztpki.pki.authority import CertificateAuthority, create_self_signed_ca
from ztpki.pki.crl import build_crl
from ztpki.pki.keys import KeySpec, PrivateKey, PublicKey, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.signer import SignatureHash, algorithm_identifier, key_location, resign

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass
class Elsewhere:
    """An ExternalKey over an in-memory key: what a token does, minus the token."""

    key: PrivateKey
    rsa_pss: bool = False
    location: str = "pkcs11:token=t;object=k"

    def public_key(self) -> PublicKey:
        return self.key.public_key()

    def sign(self, data: bytes, algorithm: SignatureHash) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(data, ec.ECDSA(algorithm))
        assert isinstance(self.key, rsa.RSAPrivateKey)
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
            if self.rsa_pss
            else padding.PKCS1v15()
        )
        return self.key.sign(data, pad, algorithm)


def _root(key: Elsewhere) -> x509.Certificate:
    subject = build_subject("elsewhere", SubjectFields(), serial_number=None)
    return create_self_signed_ca(key, subject, now=NOW, validity=timedelta(days=2))


@pytest.mark.parametrize(
    ("spec", "pss", "oid"),
    [
        (KeySpec.EC_P256, False, SignatureAlgorithmOID.ECDSA_WITH_SHA256),
        (KeySpec.EC_P384, False, SignatureAlgorithmOID.ECDSA_WITH_SHA384),
        (KeySpec.RSA_3072, False, SignatureAlgorithmOID.RSA_WITH_SHA256),
        (KeySpec.RSA_2048, True, SignatureAlgorithmOID.RSASSA_PSS),
    ],
    ids=["ok-p256", "ok-p384", "ok-rsa-pkcs1", "ok-rsa-pss"],
)
def test_ok_external_key_certificates_and_crls_verify(
    spec: KeySpec, pss: bool, oid: x509.ObjectIdentifier
) -> None:
    key = Elsewhere(generate_private_key(spec), rsa_pss=pss)
    root = _root(key)
    assert root.signature_algorithm_oid == oid
    root.verify_directly_issued_by(root)
    crl = build_crl(CertificateAuthority("e", key, root), [], number=1, now=NOW)
    assert crl.signature_algorithm_oid == oid
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    # The identifier a hand-built structure (OCSP) carries is the one in the certificate.
    der = root.public_bytes(Encoding.DER)
    assert algorithm_identifier(key) == bytes(signed_parts(der)["algorithm"])
    assert key_location(key) == "pkcs11:token=t;object=k"
    assert key_location(key.key) == "file"


def test_fail_a_token_key_that_is_not_ec_or_rsa() -> None:
    with pytest.raises(UnsupportedParameter, match=r"EC .* or RSA"):
        _root(Elsewhere(ed25519.Ed25519PrivateKey.generate()))


def test_ok_resign_keeps_everything_but_the_signature() -> None:
    key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject("file", SubjectFields(), serial_number=None)
    certificate = create_self_signed_ca(key, subject, now=NOW, validity=timedelta(days=2))
    der = certificate.public_bytes(Encoding.DER)
    again = x509.load_der_x509_certificate(resign(der, certificate.signature))
    assert again == certificate
    with pytest.raises(ValueError, match=r"not a signed X\.509 structure"):
        resign(der + b"\x00", certificate.signature)
