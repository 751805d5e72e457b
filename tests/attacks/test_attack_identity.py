"""Identity attacks on the customer node: certificates that must not authenticate, devices the
register must refuse, and CSRs that try to name another device or smuggle extensions.

Every case uses a device of the deployment's batch (listed by the imported manifest) and then
checks: the answer, the register and audit trail (the refusal audited, no state changed),
nothing issued by either CA system, and a fresh device customizing itself right after.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.attacks.attack_deployment import (
    Deployment,
    DeviceUnderTest,
    now,
)
from tests.attacks.attack_report import AttackReport
from tests.attacks.attack_wire import Observed

from ztpki.device.activation import KeyMode
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, PrivateKey, decode_pkcs8, generate_private_key, signature_hash
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import load_certificate_der
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.est import build_csr, decode_certs_only, encode_csr

pytestmark = pytest.mark.timeout(240)

CATEGORY = "identity"
IN_TLS = "refused in the TLS handshake, before any HTTP request"


def _csr(key: PrivateKey, device_id: str) -> bytes:
    return encode_csr(build_csr(key, device_id=device_id))


def _forge(
    authority: CertificateAuthority,
    device: DeviceUnderTest,
    *,
    profile: CertificateProfile = CertificateProfile.DEVICE,
    not_before: timedelta = timedelta(minutes=-1),
    not_after: timedelta = timedelta(days=30),
) -> tuple[PrivateKey, list[x509.Certificate]]:
    """A certificate for the device's key and subject, signed by authority as told."""
    start = now()
    grant = IssuanceGrant(
        subject=device.certificate.subject,
        profile=profile,
        not_before=start + not_before,
        not_after=start + not_after,
    )
    cert = authority.issue(device.key.public_key(), grant)
    return device.key, [cert, *authority.chain[:-1]]


def _tls_refused(d: Deployment, obs: Observed, mark: tuple[Path, int], reason: str) -> str:
    assert obs.tls_refused, f"the node answered: {obs.summary()}"
    logged = d.tls_refusal(mark)
    assert reason in logged, (reason, logged)
    return (
        "TLS handshake refused: the node closed the connection with no HTTP answer and "
        f"logged 'TLS handshake failed: {logged}'"
    )


def _http(obs: Observed, status: int, *phrases: str) -> str:
    assert obs.status == status, obs.summary()
    for phrase in phrases:
        assert phrase in obs.text, (phrase, obs.text)
    return obs.summary()


def _record(
    report: AttackReport, d: Deployment, case: str, attack: str, answer: str, checked: str
) -> None:
    report.record(
        case=f"{CATEGORY}/{case}",
        category=CATEGORY,
        attack=attack,
        observed=f"{answer}; {checked}; {d.serve_next_device()}",
        verdict="refused",
    )


# --- certificates the TLS layer or the authentication module must refuse -----------------


@pytest.mark.parametrize(
    ("case", "attack", "not_before", "not_after", "reason"),
    [
        pytest.param(
            "expired-temporary-certificate",
            "simpleenroll with a temporary certificate from the real factory CA, for a listed "
            "device, that expired a minute ago",
            timedelta(minutes=-4),
            timedelta(minutes=-1),
            "certificate has expired",
            id="fail-expired",
        ),
        pytest.param(
            "not-yet-valid-temporary-certificate",
            "simpleenroll with a temporary certificate from the real factory CA, for a listed "
            "device, valid only from tomorrow",
            timedelta(days=1),
            timedelta(days=2),
            "certificate is not yet valid",
            id="fail-not-yet-valid",
        ),
    ],
)
def test_fail_certificate_outside_validity(
    deployment: Deployment,
    attack_report: AttackReport,
    case: str,
    attack: str,
    not_before: timedelta,
    not_after: timedelta,
    reason: str,
) -> None:
    d = deployment
    device = d.take_device()
    key, chain = _forge(
        d.authority("factory", "factory"), device, not_before=not_before, not_after=not_after
    )
    before, mark = d.snapshot(), d.log_mark()
    obs = d.est("simpleenroll", key=key, chain=chain, body=_csr(key, device.device_id))
    answer = _tls_refused(d, obs, mark, reason)
    _record(
        attack_report, d, case, attack, answer, d.check_unchanged(before, unaudited_because=IN_TLS)
    )


def test_fail_unknown_manufacturer(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    root_key = generate_private_key(KeySpec.EC_P256)
    subject = build_subject(
        "Acme Devices Root", SubjectFields(organization="Acme Devices"), serial_number=None
    )
    root = create_self_signed_ca(root_key, subject, now=now(), validity=timedelta(days=30))
    rogue = CertificateAuthority("rogue", root_key, root)
    key, chain = _forge(rogue, device)
    chain = [chain[0], root]
    before, mark = d.snapshot(), d.log_mark()
    obs = d.est("simpleenroll", key=key, chain=chain, body=_csr(key, device.device_id))
    _record(
        attack_report,
        d,
        "unknown-manufacturer",
        "simpleenroll with a certificate for a listed device from a look-alike 'Acme Devices' "
        "CA the node was never given",
        _tls_refused(d, obs, mark, "self-signed certificate in certificate chain"),
        d.check_unchanged(before, unaudited_because=IN_TLS),
    )


def test_fail_self_signed_copy_of_device_subject(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    key = generate_private_key(KeySpec.EC_P256)
    genuine = device.certificate
    cert = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)  # claims the real factory CA as issuer
        .public_key(key.public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, signature_hash(key))
    )
    before, mark = d.snapshot(), d.log_mark()
    obs = d.est("simpleenroll", key=key, chain=[cert], body=_csr(key, device.device_id))
    _record(
        attack_report,
        d,
        "self-signed-copy-of-device",
        "simpleenroll with a self-made certificate copying a listed device's subject, issuer "
        "name, serial and validity",
        _tls_refused(d, obs, mark, "certificate signature failure"),
        d.check_unchanged(before, unaudited_because=IN_TLS),
    )


def test_fail_ca_certificate_as_client_certificate(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    factory = d.authority("factory", "factory")
    before, mark = d.snapshot(), d.log_mark()
    obs = d.est(
        "simpleenroll",
        key=factory.key,
        chain=list(factory.chain[:-1]),
        body=_csr(generate_private_key(KeySpec.EC_P256), "ACME-B1-0001"),
    )
    if obs.tls_refused:
        answer, why = _tls_refused(d, obs, mark, "client certificate refused"), IN_TLS
    else:
        answer = _http(obs, 401, "does not chain", "must not be asserted")
        # No identity was verified: counted and logged at a bounded rate, never audited.
        why = "refused by the authentication module; no verified identity, so not audited"
    _record(
        attack_report,
        d,
        "ca-certificate-as-client",
        "simpleenroll presenting the factory CA's own certificate (CA:TRUE) and key as the "
        "client certificate",
        answer,
        d.check_unchanged(before, unaudited_because=why),
    )


def test_fail_certificate_without_client_auth(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    key, chain = _forge(
        d.authority("factory", "factory"), device, profile=CertificateProfile.SERVER
    )
    before, mark = d.snapshot(), d.log_mark()
    obs = d.est("simpleenroll", key=key, chain=chain, body=_csr(key, device.device_id))
    _record(
        attack_report,
        d,
        "certificate-without-client-auth",
        "simpleenroll with a certificate from the real factory CA for a listed device whose "
        "EKU is serverAuth only",
        _tls_refused(d, obs, mark, "unsuitable certificate purpose"),
        d.check_unchanged(before, unaudited_because=IN_TLS),
    )


def test_fail_second_factory_certificate_for_listed_device(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    """A clone: a valid factory certificate for a listed device id, but not the one the
    manifest lists (its fingerprint differs)."""
    d = deployment
    device = d.take_device()
    key = generate_private_key(KeySpec.EC_P256)
    start = now()
    cert = d.authority("factory", "factory").issue(
        key.public_key(),
        IssuanceGrant(
            subject=device.certificate.subject,
            profile=CertificateProfile.DEVICE,
            not_before=start - timedelta(minutes=1),
            not_after=start + timedelta(days=30),
        ),
    )
    before = d.snapshot()
    obs = d.est("simpleenroll", key=key, chain=[cert], body=_csr(key, device.device_id))
    _record(
        attack_report,
        d,
        "cloned-device-certificate",
        "simpleenroll with a second, valid factory certificate for a listed device id (a "
        "clone: not the certificate the manifest lists)",
        _http(obs, 403, "fingerprint mismatch"),
        d.check_unchanged(before, audited=[(device.device_id, "refused", "fingerprint")]),
    )


# --- the register refuses -------------------------------------------------------------------


def test_fail_device_not_in_register(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device_id = f"ACME-B9-{now().microsecond:06d}"
    answer = d.enroll_factory(device_id)  # a genuine temporary identity from the factory
    assert answer.private_key_der is not None

    key = decode_pkcs8(answer.private_key_der, passphrase=None)
    cert = load_certificate_der(answer.certificate_der)
    before = d.snapshot()
    obs = d.est("simpleenroll", key=key, chain=[cert], body=_csr(key, device_id))
    _record(
        attack_report,
        d,
        "device-not-in-register",
        "simpleenroll with a genuine temporary certificate from the factory CA for a device "
        "the customer never bought (not in any imported manifest)",
        _http(obs, 403, "not in the customer register"),
        d.check_unchanged(before, audited=[(device_id, "refused", "not in the customer register")]),
    )


def test_fail_blocked_device(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    blocked = d.operator("node", "block", "--dir", str(d.node_dir), device.device_id)
    assert blocked.status == 0, blocked.err
    before = d.snapshot()
    obs = d.est(
        "serverkeygen",
        key=device.key,
        chain=[device.certificate],
        body=_csr(device.key, device.device_id),
    )
    _record(
        attack_report,
        d,
        "blocked-device",
        "serverkeygen with the genuine temporary certificate of a device the operator blocked "
        "(`ztpki node block`)",
        _http(obs, 403, "blocked"),
        d.check_unchanged(before, audited=[(device.device_id, "refused", "blocked")]),
    )


def test_fail_already_customized_device(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device = d.take_device()
    temp_key, temp_cert = device.key, device.certificate  # a copy kept by an attacker
    d.activate(device, key_mode=KeyMode.SERVERKEYGEN)
    before = d.snapshot()
    obs = d.est(
        "simpleenroll", key=temp_key, chain=[temp_cert], body=_csr(temp_key, device.device_id)
    )
    _record(
        attack_report,
        d,
        "already-customized-device",
        "simpleenroll with a saved copy of a device's temporary certificate after the device "
        "customized itself (a replay)",
        _http(obs, 403, "already customized"),
        d.check_unchanged(before, audited=[(device.device_id, "refused", "already customized")]),
    )


# --- CSRs ---------------------------------------------------------------------------------------


def test_fail_csr_naming_another_device(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device, victim = d.take_device(), d.take_device()
    before = d.snapshot()
    key = generate_private_key(KeySpec.EC_P256)
    obs = d.est(
        "simpleenroll",
        key=device.key,
        chain=[device.certificate],
        body=_csr(key, victim.device_id),
    )
    _record(
        attack_report,
        d,
        "csr-naming-another-device",
        "simpleenroll with device A's genuine temporary certificate and a CSR naming device B",
        _http(obs, 403, "subject mismatch"),
        d.check_unchanged(before, audited=[(device.device_id, "refused", "subject mismatch")]),
    )


def _smuggling_csr(key: PrivateKey, device_id: str) -> bytes:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, device_id),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"),
        ]
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("node.customer.example"), x509.DNSName("*.customer.example")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]
            ),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return encode_csr(csr)


def test_fail_csr_smuggling_extensions(deployment: Deployment, attack_report: AttackReport) -> None:
    """The certificate is issued (the device is entitled to one), but nothing the CSR asked
    for beyond its public key reaches it."""
    d = deployment
    device = d.take_device()
    key = generate_private_key(KeySpec.EC_P256)
    before = d.snapshot()
    obs = d.est(
        "simpleenroll",
        key=device.key,
        chain=[device.certificate],
        body=_smuggling_csr(key, device.device_id),
    )
    assert obs.status == 200, obs.summary()
    cert = decode_certs_only(obs.body)[0]
    extensions = {type(e.value) for e in cert.extensions}
    assert extensions == {
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
    }, extensions
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert "Evil Corp" not in cert.subject.rfc4514_string()
    after = d.snapshot()
    assert after.customer_issued == before.customer_issued + 1
    assert after.register[device.device_id][0] == "issued"
    assert d.live_serials("customer", device.device_id) == [after.register[device.device_id][1]]
    audit = d.audit_since(before.audit_seq)
    assert [(a.device_id, a.decision) for a in audit] == [(device.device_id, "issued")]
    attack_report.record(
        case=f"{CATEGORY}/csr-smuggling-extensions",
        category=CATEGORY,
        attack=(
            "simpleenroll whose CSR asks for CA:TRUE, keyCertSign, two SANs (one a wildcard), "
            "EKU serverAuth + codeSigning, a private extension and O=Evil Corp"
        ),
        observed=(
            "HTTP 200: the certificate carries only the device profile (CA:FALSE, "
            "digitalSignature, EKU clientAuth, SKI, AKI) and the subject from policy; none of "
            "the CSR's extensions or names reached it; one certificate issued and audited; "
            + d.serve_next_device()
        ),
        verdict="refused",
    )


def test_fail_csr_bad_signature(deployment: Deployment, attack_report: AttackReport) -> None:
    d = deployment
    device = d.take_device()
    csr = build_csr(generate_private_key(KeySpec.EC_P256), device_id=device.device_id)
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    before = d.snapshot()
    obs = d.est(
        "simpleenroll",
        key=device.key,
        chain=[device.certificate],
        body=base64.b64encode(bytes(der)),
    )
    _record(
        attack_report,
        d,
        "csr-bad-signature",
        "simpleenroll with a device's genuine certificate and a CSR whose signature was "
        "altered (proof of possession fails)",
        _http(obs, 400, "signature does not verify"),
        d.check_unchanged(before, audited=[(device.device_id, "refused", "signature")]),
    )


def test_fail_operational_certificate_renewing_another_device(
    deployment: Deployment, attack_report: AttackReport
) -> None:
    d = deployment
    device_a, device_b = d.take_device(), d.take_device()
    d.activate(device_a)
    d.activate(device_b)
    before = d.snapshot()
    key = generate_private_key(KeySpec.EC_P256)
    obs = d.est(
        "simplereenroll",
        key=device_a.key,
        chain=[device_a.certificate],
        body=_csr(key, device_b.device_id),
    )
    _record(
        attack_report,
        d,
        "operational-certificate-renewing-another-device",
        "simplereenroll with device A's operational certificate and a CSR naming device B",
        _http(obs, 403, "subject mismatch"),
        d.check_unchanged(before, audited=[(device_a.device_id, "refused", "subject mismatch")]),
    )
