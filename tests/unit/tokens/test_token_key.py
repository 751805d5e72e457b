"""CA keys in a SoftHSM2 token: generated inside, signing certificates and CRLs that an
outside verifier (cryptography) accepts, for every algorithm the issue names; a token that
goes away fails with TokenUnavailable and is used again, without a restart, once it is back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from tests.support.softhsm import USER_PIN, SoftHSM, softhsm  # noqa: F401

from ztpki.errors import ConfigurationError
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.crl import build_crl
from ztpki.pki.keys import KeySpec, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pkcs11_uri import Pkcs11Uri
from ztpki.pki.profiles import CertificateProfile
from ztpki.pki.signer import key_location
from ztpki.tokens import TokenKey, TokenPool, TokenUnavailable, generate_token_key, token_access

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _user_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTPKI_PKCS11_PIN", USER_PIN)


def _pool(hsm: SoftHSM, label: str, *, size: int = 4) -> tuple[TokenPool, Pkcs11Uri]:
    uri = Pkcs11Uri.parse(f"pkcs11:token={label};object=ca-key")
    access = token_access(uri, module=hsm.module)
    return TokenPool(access, uri, size=size), uri


def _verify(certificate: x509.Certificate, issuer_public: object, *, pss: bool) -> None:
    algorithm = certificate.signature_hash_algorithm
    assert algorithm is not None
    if isinstance(issuer_public, ec.EllipticCurvePublicKey):
        issuer_public.verify(
            certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(algorithm)
        )
    else:
        assert isinstance(issuer_public, rsa.RSAPublicKey)
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            if pss
            else padding.PKCS1v15()
        )
        issuer_public.verify(
            certificate.signature, certificate.tbs_certificate_bytes, pad, algorithm
        )


@pytest.mark.parametrize(
    ("spec", "pss"),
    [
        (KeySpec.EC_P256, False),
        (KeySpec.EC_P384, False),
        (KeySpec.RSA_2048, False),
        (KeySpec.RSA_2048, True),
        (KeySpec.RSA_3072, True),
    ],
    ids=["ok-p256", "ok-p384", "ok-rsa2048-pkcs1", "ok-rsa2048-pss", "ok-rsa3072-pss"],
)
def test_ok_token_ca_signs_certificates_and_crls(
    softhsm: SoftHSM,  # noqa: F811
    spec: KeySpec,
    pss: bool,
) -> None:
    pool, uri = _pool(softhsm, softhsm.new_token())
    key = generate_token_key(pool, uri, spec, rsa_pss=pss)
    assert key_location(key).startswith(f"pkcs11:token={uri.token};object=ca-key;id=")
    root = create_self_signed_ca(
        key,
        build_subject("HSM root", SubjectFields(), serial_number=None),
        now=NOW,
        validity=timedelta(days=30),
    )
    _verify(root, root.public_key(), pss=pss)
    if pss:
        assert root.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS
    ca = CertificateAuthority(name="hsm", key=key, certificate=root)
    device_key = generate_private_key(KeySpec.EC_P256)
    leaf = ca.issue(
        device_key.public_key(),
        IssuanceGrant(
            subject=build_subject("dev-1", SubjectFields(), serial_number="dev-1"),
            profile=CertificateProfile.DEVICE,
            not_before=NOW,
            not_after=NOW + timedelta(days=1),
        ),
    )
    _verify(leaf, root.public_key(), pss=pss)
    leaf.verify_directly_issued_by(root)
    crl = build_crl(ca, [], number=1, now=NOW)
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]


def test_ok_existing_key_is_used_not_replaced(softhsm: SoftHSM) -> None:  # noqa: F811
    pool, uri = _pool(softhsm, softhsm.new_token())
    first = generate_token_key(pool, uri, KeySpec.EC_P256)
    again = TokenKey(pool, uri)
    assert again.public_key().public_numbers() == first.public_key().public_numbers()  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="already holds a key"):
        generate_token_key(pool, uri, KeySpec.EC_P256)


def test_fail_wrong_pin_is_a_clear_error_without_the_pin(softhsm: SoftHSM, tmp_path) -> None:  # noqa: F811
    label = softhsm.new_token()
    uri = Pkcs11Uri.parse(f"pkcs11:token={label};object=k")
    pin_file = tmp_path / "pin"
    pin_file.write_text("wrong-pin-9876\n")
    pool = TokenPool(token_access(uri, module=softhsm.module, pin_file=pin_file), uri)
    with pytest.raises(ConfigurationError, match="PIN for token") as raised:
        generate_token_key(pool, uri, KeySpec.EC_P256)
    assert "wrong-pin-9876" not in str(raised.value)


def test_ok_concurrent_signers_share_a_bounded_pool(softhsm: SoftHSM) -> None:  # noqa: F811
    pool, uri = _pool(softhsm, softhsm.new_token(), size=3)
    key = generate_token_key(pool, uri, KeySpec.EC_P256)
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    with ThreadPoolExecutor(8) as workers:
        signatures = list(workers.map(lambda i: key.sign(b"%d" % i, hashes.SHA256()), range(64)))
    for i, signature in enumerate(signatures):
        public.verify(signature, b"%d" % i, ec.ECDSA(hashes.SHA256()))
    assert pool.open_sessions <= 3  # never more sessions than the pool's size


def test_fail_module_lost_then_recovers_without_restart(softhsm: SoftHSM) -> None:  # noqa: F811
    """The module drops every session and its initialization under the service (what a
    crashed or restarted HSM client library looks like): the request in flight fails with
    TokenUnavailable, naming the token and not the PIN, and the next one signs again."""
    pool, uri = _pool(softhsm, softhsm.new_token())
    key = generate_token_key(pool, uri, KeySpec.EC_P256)
    key.sign(b"warm", hashes.SHA256())
    pkcs11.lib(softhsm.module).finalize()
    with pytest.raises(TokenUnavailable, match=f"token '{uri.token}'") as raised:
        key.sign(b"down", hashes.SHA256())
    assert USER_PIN not in str(raised.value)
    signature = key.sign(b"back", hashes.SHA256())
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, b"back", ec.ECDSA(hashes.SHA256()))


def test_ok_quick_only_after_quick_signatures_and_not_after_a_failure(
    softhsm: SoftHSM,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ca serve` signs on its loop only with a key that is `quick`: never one not yet
    seen to sign, nor one whose last signature failed (a token in trouble may hang)."""
    from ztpki.tokens import token_key

    monkeypatch.setattr(token_key, "QUICK", 10.0)  # any signature that returns is quick here
    pool, uri = _pool(softhsm, softhsm.new_token())
    key = generate_token_key(pool, uri, KeySpec.EC_P256)
    assert not key.quick
    key.sign(b"first", hashes.SHA256())
    assert key.quick
    pkcs11.lib(softhsm.module).finalize()
    with pytest.raises(TokenUnavailable):
        key.sign(b"down", hashes.SHA256())
    assert not key.quick
    key.sign(b"back", hashes.SHA256())
    assert key.quick
    monkeypatch.setattr(token_key, "QUICK", 0.0)  # a token slower than the bound: a thread
    assert not key.quick
