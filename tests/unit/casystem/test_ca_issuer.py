"""CASystem: request -> plan -> certificate -> answer, without sockets or a clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ztpki.casystem.issuer import CASystem, LoadedCA
from ztpki.casystem.policy import IssuingPolicy
from ztpki.errors import MalformedInput, UnknownCA, UnsupportedParameter
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, decode_pkcs8, generate_private_key, keys_match
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import certificate_der, fingerprint_sha256, serial_hex
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.enrollment import EnrollmentParameters, EnrollmentRequest
from ztpki.store.records import CertificateStatus, ClientEntitlement

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
# A client entitled to every CA of the fixture (and to an unknown name, to reach UnknownCA).
EVERY_CA = {
    "client": "line1",
    "entitlement": ClientEntitlement(cas=("root", "factory", "short", "nocsr", "eccsr", "other")),
}


def make_root(name: str, *, days: int = 3650) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject(name, SubjectFields(), serial_number=None)
    cert = create_self_signed_ca(key, subject, now=NOW, validity=timedelta(days=days))
    return CertificateAuthority(name=name, key=key, certificate=cert)


def make_sub(parent: CertificateAuthority, name: str, *, days: int = 1000) -> CertificateAuthority:
    key = generate_private_key(KeySpec.EC_P256)
    grant = IssuanceGrant(
        subject=build_subject(name, SubjectFields(), serial_number=None),
        profile=CertificateProfile.CA,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + timedelta(days=days),
        path_length=0,
    )
    cert = parent.issue(key.public_key(), grant)
    return CertificateAuthority(name=name, key=key, certificate=cert, parents=parent.chain)


def loaded(authority: CertificateAuthority, policy: IssuingPolicy | None = None) -> LoadedCA:
    return LoadedCA(
        authority=authority,
        policy=policy or IssuingPolicy(),
        chain_der=tuple(certificate_der(c) for c in authority.chain),
    )


@pytest.fixture(scope="module")
def system() -> CASystem:
    root = make_root("root")
    return CASystem(
        {
            "root": loaded(root),
            "factory": loaded(
                make_sub(root, "factory"), IssuingPolicy(subject=SubjectFields(country="SE"))
            ),
            "short": loaded(make_sub(root, "short", days=10)),
            "nocsr": loaded(make_sub(root, "nocsr"), IssuingPolicy(allow_csr=False)),
            "eccsr": loaded(
                make_sub(root, "eccsr"),
                IssuingPolicy(allowed_keys=(KeySpec.EC_P256,)),
            ),
        },
        default_ca="factory",
    )


def csr_der(key: PrivateKey) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "from-csr")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def test_fail_default_ca_must_be_loaded() -> None:
    with pytest.raises(UnknownCA):
        CASystem({}, default_ca="factory")


def test_ok_default_and_named_ca(system: CASystem) -> None:
    assert (
        system.plan(EnrollmentRequest("r", "d"), now=NOW, **EVERY_CA).ca.authority.name == "factory"
    )
    assert (
        system.plan(EnrollmentRequest("r", "d", ca="root"), now=NOW, **EVERY_CA).ca.authority.name
        == "root"
    )
    with pytest.raises(UnknownCA, match="serves no CA named 'other'"):
        system.plan(EnrollmentRequest("r", "d", ca="other"), now=NOW, **EVERY_CA)


def test_ok_generated_key_full_round(system: CASystem) -> None:
    request = EnrollmentRequest(
        "req-1", "dev-1", parameters=EnrollmentParameters(encrypt_private_key=b"passphrase-1")
    )
    plan = system.plan(request, now=NOW, **EVERY_CA)
    assert plan.key_spec is KeySpec.EC_P256 and plan.csr_public_key is None
    key = generate_private_key(plan.key_spec)
    cert = system.sign(plan, key.public_key())
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "SE"
    answer = system.answer(plan, cert, key)
    assert answer.request_id == "req-1" and answer.private_key_encrypted
    assert answer.private_key_der is not None
    assert keys_match(
        decode_pkcs8(answer.private_key_der, passphrase=b"passphrase-1"), cert.public_key()
    )
    assert len(answer.ca_certificates_der) == 2

    record = system.record_of(plan, cert, now=NOW)
    assert record.serial == serial_hex(cert) and record.fingerprint == fingerprint_sha256(cert)
    assert record.device_id == "dev-1" and record.ca_name == "factory"
    assert record.status is CertificateStatus.ACTIVE and record.request_id == "req-1"
    assert record.certificate_der == answer.certificate_der


def test_ok_no_chain_and_plain_key(system: CASystem) -> None:
    request = EnrollmentRequest(
        "r", "d", parameters=EnrollmentParameters(include_ca_certificates=False)
    )
    plan = system.plan(request, now=NOW, **EVERY_CA)
    key = generate_private_key(plan.key_spec)
    answer = system.answer(plan, system.sign(plan, key.public_key()), key)
    assert answer.ca_certificates_der == () and not answer.private_key_encrypted
    assert answer.private_key_der is not None
    decode_pkcs8(answer.private_key_der, passphrase=None)


def test_ok_csr_gives_only_its_key(system: CASystem) -> None:
    device_key = generate_private_key(KeySpec.EC_P256)
    plan = system.plan(
        EnrollmentRequest("r", "d", csr_der=csr_der(device_key)), now=NOW, **EVERY_CA
    )
    assert plan.csr_public_key is not None and keys_match(device_key, plan.csr_public_key)
    cert = system.sign(plan, plan.csr_public_key)
    assert "from-csr" not in cert.subject.rfc4514_string()
    answer = system.answer(plan, cert, None)
    assert answer.private_key_der is None and not answer.private_key_encrypted


def test_fail_csr_signature_does_not_verify(system: CASystem) -> None:
    der = bytearray(csr_der(generate_private_key(KeySpec.EC_P256)))
    der[-1] ^= 1
    with pytest.raises(MalformedInput, match="signature does not verify"):
        system.plan(EnrollmentRequest("r", "d", csr_der=bytes(der)), now=NOW, **EVERY_CA)


@pytest.mark.parametrize(
    ("ca", "key_spec", "params", "match"),
    [
        pytest.param(
            "nocsr",
            KeySpec.EC_P256,
            EnrollmentParameters(),
            "does not accept CSRs",
            id="fail-csr-not-accepted",
        ),
        pytest.param(
            "eccsr",
            KeySpec.ED25519,
            EnrollmentParameters(),
            "not allowed",
            id="fail-csr-key-not-allowed",
        ),
        pytest.param(
            None,
            KeySpec.EC_P256,
            EnrollmentParameters(key_algorithm=KeySpec.EC_P256),
            "CSR",
            id="fail-key-algorithm-and-csr",
        ),
    ],
)
def test_fail_csr_outside_policy(
    system: CASystem, ca: str | None, key_spec: KeySpec, params: EnrollmentParameters, match: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = generate_private_key(key_spec)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        der = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, None)
            .public_bytes(serialization.Encoding.DER)
        )
    else:
        der = csr_der(key)
    with pytest.raises(UnsupportedParameter, match=match):
        system.plan(
            EnrollmentRequest("r", "d", ca=ca, parameters=params, csr_der=der), now=NOW, **EVERY_CA
        )


def test_validity_never_beyond_the_issuer(system: CASystem) -> None:
    """Absent ValidityDays ends with a short-lived CA; an explicit one beyond it is refused."""
    plan = system.plan(EnrollmentRequest("r", "d", ca="short"), now=NOW, **EVERY_CA)
    cert = system.sign(plan, generate_private_key(KeySpec.EC_P256).public_key())
    issuer = system.cas["short"].authority.certificate
    assert cert.not_valid_after_utc == issuer.not_valid_after_utc
    with pytest.raises(UnsupportedParameter, match="outlives CA short"):
        system.plan(
            EnrollmentRequest(
                "r", "d", ca="short", parameters=EnrollmentParameters(validity_days=11)
            ),
            now=NOW,
            **EVERY_CA,
        )
    fits = EnrollmentRequest("r", "d", ca="short", parameters=EnrollmentParameters(validity_days=9))
    assert system.plan(fits, now=NOW, **EVERY_CA).grant.not_after == NOW + timedelta(
        days=9
    )  # control


@pytest.mark.parametrize(
    ("profile", "key_spec"),
    [
        (CertificateProfile.DEVICE, KeySpec.EC_P256),
        (CertificateProfile.DEVICE, KeySpec.RSA_2048),
        (CertificateProfile.SERVER, KeySpec.ED25519),
        (CertificateProfile.SERVER, KeySpec.RSA_2048),
        (CertificateProfile.CA, KeySpec.EC_P384),
    ],
    ids=lambda v: str(v),
)
def test_ok_issued_extensions_are_the_profiles(
    profile: CertificateProfile, key_spec: KeySpec
) -> None:
    """The CA encodes constant extensions once per profile and key type: each issued
    certificate must still carry exactly the typed extensions the profile defines."""
    from ztpki.pki.profiles import profile_extensions

    authority = make_root("cache")
    path_length = 0 if profile is CertificateProfile.CA else None
    grant = IssuanceGrant(
        subject=build_subject("d", SubjectFields(), serial_number=None),
        profile=profile,
        not_before=NOW,
        not_after=NOW + timedelta(days=1),
        path_length=path_length,
    )
    for spec in (KeySpec.EC_P256, key_spec, key_spec):  # another key type first: no mix-up
        public_key = generate_private_key(spec).public_key()
        cert = authority.issue(public_key, grant)
        expected = [
            (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
            (authority._aki, False),
            *profile_extensions(profile, public_key, path_length=path_length),
        ]
        assert [(e.value, e.critical) for e in cert.extensions] == expected


def _spki(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_ok_proven_public_key_is_certified_as_it_is(system: CASystem) -> None:
    # A CMP node verified the device's proof of possession and sends the key alone.
    device_key = generate_private_key(KeySpec.EC_P256)
    plan = system.plan(
        EnrollmentRequest("r", "d", public_key_der=_spki(device_key)), now=NOW, **EVERY_CA
    )
    assert plan.csr_public_key is not None and keys_match(device_key, plan.csr_public_key)
    answer = system.answer(plan, system.sign(plan, plan.csr_public_key), None)
    assert answer.private_key_der is None


@pytest.mark.parametrize(
    ("ca", "key_spec", "params", "match"),
    [
        pytest.param("nocsr", KeySpec.EC_P256, EnrollmentParameters(), "device-made keys",
                     id="fail-public-key-where-no-csr-is-accepted"),
        pytest.param("eccsr", KeySpec.ED25519, EnrollmentParameters(), "not allowed",
                     id="fail-public-key-type-not-allowed"),
        pytest.param(None, KeySpec.EC_P256, EnrollmentParameters(key_algorithm=KeySpec.EC_P256),
                     "PublicKey", id="fail-key-algorithm-and-public-key"),
    ],
)  # fmt: skip
def test_fail_proven_public_key_outside_policy(
    system: CASystem, ca: str | None, key_spec: KeySpec, params: EnrollmentParameters, match: str
) -> None:
    der = _spki(generate_private_key(key_spec))
    with pytest.raises(UnsupportedParameter, match=match):
        system.plan(
            EnrollmentRequest("r", "d", ca=ca, parameters=params, public_key_der=der),
            now=NOW,
            **EVERY_CA,
        )
