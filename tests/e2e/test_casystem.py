"""End to end: `ztpki ca serve` on loopback, real TLS, the project's CAClient, real openssl.

Two CA systems are built with the CLI once per module: "plant" holds the root, the default
factory CA, an RSA-keyed CA, a server-profile CA, a short-lived CA and a CA whose policy a
test restricts; "customer" holds a CA subordinate to plant's root (the patent's hierarchy:
one root signs both the factory CA and the customer CA). Both are served for the module.
Every positive case has a negative control next to it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from tests.e2e.casystem_fixtures import (
    CA_PASSPHRASE,
    FACTORY_DEFAULTS,
    CASystemUnderTest,
    RawConnection,
    chain_of,
    check_end_entity,
    cli_json,
    enroll_all,
    is_p256,
    leaf_of,
    name_values,
    openssl_verify,
    stopped_afterwards,
    ztpki,
)
from tests.support.pem_markers import ENCRYPTED_KEY_HEADER, PLAIN_KEY_HEADER

from ztpki.casystem.client import CAClient
from ztpki.casystem.service import ServiceLimits
from ztpki.credentials import client_context
from ztpki.errors import (
    MalformedInput,
    NotAuthorized,
    Unavailable,
    UnsupportedParameter,
)
from ztpki.pki.authority import create_self_signed_ca
from ztpki.pki.keys import (
    KeySpec,
    PrivateKey,
    decode_pkcs8,
    generate_private_key,
    key_spec_of,
    keys_match,
)
from ztpki.pki.pem import fingerprint_sha256
from ztpki.protocol.enrollment import (
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentParameters,
    EnrollmentRequest,
    ErrorCode,
    encode_request,
)

pytestmark = pytest.mark.timeout(180)

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """A fresh device or request id (one live certificate per device: never reuse one)."""
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def request(device: str | None = None, **kwargs: object) -> EnrollmentRequest:
    return EnrollmentRequest(new_id("req"), device or new_id("dev"), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def systems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CASystemUnderTest]]:
    base = tmp_path_factory.mktemp("casystem")
    logs = base / "logs"
    logs.mkdir()
    plant = CASystemUnderTest(base / "plant", logs)
    customer = CASystemUnderTest(base / "customer", logs)
    defaults = FACTORY_DEFAULTS
    plant.init_ca("root", "--org", "Acme")
    plant.init_ca(
        "factory", "--parent", "root", "--default", "--org", defaults["O"],
        "--org-unit", defaults["OU"], "--locality", defaults["L"], "--country", defaults["C"],
    )  # fmt: skip
    plant.init_ca("rsaca", "--parent", "root", "--key", "rsa-2048")
    plant.init_ca("servers", "--parent", "root", "--profile", "server")
    plant.init_ca("shortlived", "--parent", "root", "--validity-days", "20")
    plant.init_ca("strict", "--parent", "root")
    # The operator lets requests to the factory CA carry an e-mail address (rfc822Name).
    policy = plant.root / "cas" / "factory" / "policy.toml"
    policy.write_text(policy.read_text().replace('email = "forbidden"', 'email = "allowed"'))
    plant.add_client(
        "line1", "--dns", "node.example.com", "--dns", "a.example", "--ip", "192.0.2.10"
    )
    plant.add_client("doomed")
    customer.init_ca("customer", "--parent-dir", str(plant.root), "--parent", "root")
    customer.add_client("node1")
    try:
        plant.start()
        customer.start()
        yield {"plant": plant, "customer": customer}
    finally:
        plant.stop()
        customer.stop()


@pytest.fixture
def plant(systems: dict[str, CASystemUnderTest]) -> CASystemUnderTest:
    return systems["plant"]


@pytest.fixture
def customer(systems: dict[str, CASystemUnderTest]) -> CASystemUnderTest:
    return systems["customer"]


def make_csr(key: PrivateKey) -> bytes:
    """A CSR asking for far more than policy grants: nothing of it but the key may be used."""
    digest = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil-admin")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .sign(key, digest)
    )
    return csr.public_bytes(serialization.Encoding.DER)


def impostor_root(name: x509.Name) -> x509.Certificate:
    """A root with the real root's name but another key: what openssl must not accept."""
    key = generate_private_key(KeySpec.EC_P256)
    return create_self_signed_ca(key, name, now=datetime.now(UTC), validity=timedelta(days=30))


def verify_with_openssl(
    tmp_path: Path, plant: CASystemUnderTest, answer: EnrollmentAnswer, *, purpose: str
) -> None:
    """openssl accepts the answer's chain up to plant's root, and refuses an impostor root."""
    root = plant.ca_certificate("root")
    chain = chain_of(answer)
    assert chain[-1] == root
    leaf = leaf_of(answer)
    accepted = openssl_verify(tmp_path, leaf, root=root, intermediates=chain[:-1], purpose=purpose)
    assert accepted.returncode == 0 and ": OK" in accepted.stdout, accepted.stderr
    refused = openssl_verify(
        tmp_path, leaf, root=impostor_root(root.subject), intermediates=chain[:-1], purpose=purpose
    )
    assert refused.returncode != 0


# --- the hierarchy -----------------------------------------------------------------------


def test_ok_hierarchy_one_root_signs_factory_and_customer_cas(
    plant: CASystemUnderTest, customer: CASystemUnderTest, tmp_path: Path
) -> None:
    listed = {ca["name"]: ca for ca in ztpki_list(plant)}
    assert set(listed) == {"root", "factory", "rsaca", "servers", "shortlived", "strict"}
    assert [n for n, ca in listed.items() if ca["is_default"]] == ["factory"]
    assert [n for n, ca in listed.items() if ca["is_root"]] == ["root"]
    assert listed["rsaca"]["key_algorithm"] == "rsa-2048"
    assert listed["servers"]["profile"] == "server"
    root = plant.ca_certificate("root")
    for name in ("factory", "rsaca", "servers"):
        assert listed[name]["issuer"] == root.subject.rfc4514_string()
    (customer_ca,) = ztpki_list(customer)
    assert customer_ca["name"] == "customer" and customer_ca["is_default"]
    assert not customer_ca["is_root"] and customer_ca["issuer"] == root.subject.rfc4514_string()

    for ca_cert in (plant.ca_certificate("factory"), customer.ca_certificate("customer")):
        basic = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints)
        usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert basic.critical and basic.value.ca and basic.value.path_length == 0
        assert usage.critical and usage.value.key_cert_sign
        ok = openssl_verify(tmp_path, ca_cert, root=root, intermediates=[])
        assert ok.returncode == 0, ok.stderr
        impostor = impostor_root(root.subject)
        refused = openssl_verify(tmp_path, ca_cert, root=impostor, intermediates=[])
        assert refused.returncode != 0

    # Devices of both systems chain to the one root.
    factory_answer = plant.enroll(request())
    customer_answer = customer.enroll(request(), client="node1")
    assert chain_of(factory_answer)[0] == plant.ca_certificate("factory")
    assert chain_of(customer_answer)[0] == customer.ca_certificate("customer")
    for answer in (factory_answer, customer_answer):
        verify_with_openssl(tmp_path, plant, answer, purpose="sslclient")


def ztpki_list(system: CASystemUnderTest) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = cli_json("ca", "list", "--dir", str(system.root))
    return listed


# --- enrollment --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ca", "key_algorithm", "expected_key"),
    [
        pytest.param(None, None, KeySpec.EC_P256, id="ok-ec-p256-by-default"),
        pytest.param(None, KeySpec.RSA_2048, KeySpec.RSA_2048, id="ok-rsa-2048"),
        pytest.param(None, KeySpec.ED25519, KeySpec.ED25519, id="ok-ed25519"),
        pytest.param(None, KeySpec.EC_P384, KeySpec.EC_P384, id="ok-ec-p384"),
        pytest.param("rsaca", None, KeySpec.EC_P256, id="ok-signed-by-rsa-ca"),
    ],
)
def test_enroll_server_generated_key(
    plant: CASystemUnderTest,
    tmp_path: Path,
    ca: str | None,
    key_algorithm: KeySpec | None,
    expected_key: KeySpec,
) -> None:
    device = new_id("gen")
    params = EnrollmentParameters(key_algorithm=key_algorithm)
    answer = plant.enroll(request(device, ca=ca, parameters=params))

    issuing = plant.ca_certificate(ca or "factory")
    leaf = leaf_of(answer)
    assert chain_of(answer) == [issuing, plant.ca_certificate("root")]
    assert answer.private_key_der is not None and not answer.private_key_encrypted
    key = decode_pkcs8(answer.private_key_der, passphrase=None)
    assert key_spec_of(key) is expected_key
    assert keys_match(key, leaf.public_key())
    assert not keys_match(generate_private_key(expected_key), leaf.public_key())  # control
    check_end_entity(leaf, issuing, device_id=device)
    if ca == "rsaca":
        assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
        assert leaf.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256
    verify_with_openssl(tmp_path, plant, answer, purpose="sslclient")
    [record] = plant.records(device_id=device)
    assert record.status == "active" and record.serial == format(leaf.serial_number, "x")
    assert record.certificate_der == answer.certificate_der


@pytest.mark.parametrize(
    "key_spec", [KeySpec.EC_P256, KeySpec.ED25519, KeySpec.RSA_2048], ids=lambda s: f"ok-csr-{s}"
)
def test_enroll_with_csr_uses_only_its_key(
    plant: CASystemUnderTest, tmp_path: Path, key_spec: KeySpec
) -> None:
    device = new_id("csr")
    device_key = generate_private_key(key_spec)  # generated on the device, never sent
    answer = plant.enroll(request(device, csr_der=make_csr(device_key)))

    assert answer.private_key_der is None and not answer.private_key_encrypted
    leaf = leaf_of(answer)
    assert keys_match(device_key, leaf.public_key())
    check_end_entity(leaf, plant.ca_certificate("factory"), device_id=device)
    assert "evil-admin" not in leaf.subject.rfc4514_string()
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    verify_with_openssl(tmp_path, plant, answer, purpose="sslclient")


def test_ok_encrypted_private_key_opens_only_with_its_passphrase(plant: CASystemUnderTest) -> None:
    secret = b"device-secret-42"
    answer = plant.enroll(request(parameters=EnrollmentParameters(encrypt_private_key=secret)))
    assert answer.private_key_der is not None and answer.private_key_encrypted
    key = decode_pkcs8(answer.private_key_der, passphrase=secret)
    assert keys_match(key, leaf_of(answer).public_key())
    for wrong in (b"device-secret-43", None):
        with pytest.raises(MalformedInput):
            decode_pkcs8(answer.private_key_der, passphrase=wrong)
    plain = plant.enroll(request())  # control: without the parameter the key is plain
    assert plain.private_key_der is not None and not plain.private_key_encrypted
    decode_pkcs8(plain.private_key_der, passphrase=None)


def test_ok_no_chain_when_not_asked(plant: CASystemUnderTest, tmp_path: Path) -> None:
    bare = plant.enroll(request(parameters=EnrollmentParameters(include_ca_certificates=False)))
    assert bare.ca_certificates_der == ()
    full = plant.enroll(request())  # control: the default includes the chain
    assert len(full.ca_certificates_der) == 2
    # The bare answer still verifies with the chain published by `ca init`.
    verified = openssl_verify(
        tmp_path,
        leaf_of(bare),
        root=plant.ca_certificate("root"),
        intermediates=[plant.ca_certificate("factory")],
        purpose="sslclient",
    )
    assert verified.returncode == 0, verified.stderr


def test_ok_server_profile_puts_names_in_subject_alt_name(
    plant: CASystemUnderTest, tmp_path: Path
) -> None:
    device = new_id("node")
    params = EnrollmentParameters(dns_names=("node.example.com",), ip_addresses=("192.0.2.10",))
    answer = plant.enroll(request(device, ca="servers", parameters=params))
    leaf = leaf_of(answer)
    check_end_entity(leaf, plant.ca_certificate("servers"), device_id=device, server=True)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node.example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.10"]
    verify_with_openssl(tmp_path, plant, answer, purpose="sslserver")
    root, chain = plant.ca_certificate("root"), chain_of(answer)[:-1]
    right = openssl_verify(tmp_path, leaf, root=root, intermediates=chain, purpose="sslserver")
    assert right.returncode == 0
    # Control: a device certificate is not a TLS server certificate.
    device_leaf = leaf_of(plant.enroll(request()))
    wrong = openssl_verify(
        tmp_path, device_leaf, root=root, intermediates=[plant.ca_certificate("factory")],
        purpose="sslserver",
    )  # fmt: skip
    assert wrong.returncode != 0


# --- policy ------------------------------------------------------------------------------


def test_ok_absent_parameters_take_policy_defaults(plant: CASystemUnderTest) -> None:
    device = new_id("defaults")
    before = datetime.now(UTC)
    leaf = leaf_of(plant.enroll(request(device)))
    subject = name_values(leaf.subject)
    assert {k: subject[k] for k in FACTORY_DEFAULTS} == FACTORY_DEFAULTS
    assert "email" not in subject
    lifetime = leaf.not_valid_after_utc - before
    assert timedelta(days=365) - timedelta(minutes=1) < lifetime <= timedelta(days=365, minutes=1)

    # The defaults are the policy's rules: a request may not change them.
    params = EnrollmentParameters(
        organization="Other Org", organizational_unit="Field", locality="Kiel", country="DE",
        validity_days=30,
    )  # fmt: skip
    before = plant.count()
    with pytest.raises(NotAuthorized, match="Organization 'Other Org' is not allowed"):
        plant.enroll(request(parameters=params))
    assert plant.count() == before
    # Control: a CA whose policy gives no subject lets the request set the fields.
    given = leaf_of(plant.enroll(request(ca="strict", parameters=params)))
    assert name_values(given.subject) | {"CN": "x", "serialNumber": "x"} == {
        "O": "Other Org", "OU": "Field", "L": "Kiel", "C": "DE", "CN": "x", "serialNumber": "x",
    }  # fmt: skip
    assert given.not_valid_after_utc - given.not_valid_before_utc == timedelta(days=30, minutes=5)


UNSUPPORTED = UnsupportedParameter


@pytest.mark.parametrize(
    ("ca", "params", "csr", "error"),
    [
        pytest.param(None, {"validity_days": 826}, False, UNSUPPORTED, id="fail-validity-over-max"),
        pytest.param(None, {"country": "XX"}, False, UNSUPPORTED, id="fail-country-not-iso-3166"),
        pytest.param(None, {"country": "UK"}, False, UNSUPPORTED, id="fail-country-uk-not-gb"),
        pytest.param(
            None, {"dns_names": ("a.example",)}, False, UNSUPPORTED, id="fail-san-from-device-ca"
        ),
        pytest.param(
            None, {"key_algorithm": KeySpec.EC_P256}, True, UNSUPPORTED, id="fail-key-alg-with-csr"
        ),
        pytest.param(
            "shortlived", {"validity_days": 30}, False, UNSUPPORTED, id="fail-validity-over-issuer"
        ),
        pytest.param("nosuchca", {}, False, NotAuthorized, id="fail-unknown-ca"),
    ],
)
def test_fail_outside_policy_issues_nothing(
    plant: CASystemUnderTest, ca: str | None, params: dict[str, object], csr: bool, error: type
) -> None:
    device = new_id("policy")
    csr_der = make_csr(generate_private_key(KeySpec.EC_P256)) if csr else None
    before = plant.count()
    with pytest.raises(error):
        plant.enroll(
            request(device, ca=ca, parameters=EnrollmentParameters(**params), csr_der=csr_der)  # type: ignore[arg-type]
        )
    assert plant.count() == before
    # Control: the same device, without the offending parameter, is served.
    known_ca = ca if ca != "nosuchca" else None
    plant.enroll(request(device, ca=known_ca, csr_der=csr_der))
    assert plant.count() == before + 1


def test_ok_validity_limits(plant: CASystemUnderTest) -> None:
    at_max = leaf_of(plant.enroll(request(parameters=EnrollmentParameters(validity_days=825))))
    lifetime = at_max.not_valid_after_utc - at_max.not_valid_before_utc
    assert lifetime == timedelta(days=825, minutes=5)
    # A policy default beyond the issuer's life ends with the issuer (RFC 5280), not later.
    short = leaf_of(plant.enroll(request(ca="shortlived")))
    issuer = plant.ca_certificate("shortlived")
    assert short.not_valid_after_utc == issuer.not_valid_after_utc
    check_end_entity(short, issuer, device_id=name_values(short.subject)["CN"])


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("csr", [False, True], ids=["ok-generated-key", "ok-csr"])
def test_ok_device_id_with_underscore_is_issued_and_verifies(
    plant: CASystemUnderTest, tmp_path: Path, csr: bool
) -> None:
    # The protocol allows `_` in a DeviceId; X.520's PrintableString serialNumber does not.
    device = new_id("meter_7")
    csr_der = make_csr(generate_private_key(KeySpec.EC_P256)) if csr else None
    answer = plant.enroll(request(device, csr_der=csr_der))
    leaf = leaf_of(answer)
    check_end_entity(leaf, plant.ca_certificate("factory"), device_id=device)
    verify_with_openssl(tmp_path, plant, answer, purpose="sslclient")
    [record] = plant.records(device_id=device)
    assert record.serial == format(leaf.serial_number, "x")
    shown = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"],
        input=leaf.public_bytes(serialization.Encoding.PEM), capture_output=True, check=True,
    )  # fmt: skip
    assert f"serialNumber={device}".encode() in shown.stdout
    # Control: the same id is one identity; a second plain request for it is refused.
    with pytest.raises(NotAuthorized, match="already holds"):
        plant.enroll(request(device))


def test_ok_email_goes_in_subject_alt_name(plant: CASystemUnderTest, tmp_path: Path) -> None:
    # RFC 5280 4.1.2.6: an e-mail address belongs in subjectAltName (rfc822Name).
    answer = plant.enroll(request(parameters=EnrollmentParameters(email="ops@acme.example")))
    leaf = leaf_of(answer)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical and san.value.get_values_for_type(x509.RFC822Name) == [
        "ops@acme.example"
    ]
    assert name_values(leaf.subject)["email"] == "ops@acme.example"  # kept for old readers
    verify_with_openssl(tmp_path, plant, answer, purpose="sslclient")
    shown = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
        input=leaf.public_bytes(serialization.Encoding.PEM), capture_output=True, check=True,
    )  # fmt: skip
    assert b"email:ops@acme.example" in shown.stdout
    # Control: without Email there is no subjectAltName on a device certificate.
    plain = leaf_of(plant.enroll(request()))
    with pytest.raises(x509.ExtensionNotFound):
        plain.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_second_enrollment_refused_reissue_supersedes(plant: CASystemUnderTest) -> None:
    device = new_id("again")
    first = leaf_of(plant.enroll(request(device)))
    with pytest.raises(NotAuthorized, match="already holds"):
        plant.enroll(request(device))
    [only] = plant.issued("--device", device)
    assert only["status"] == "active"

    second = leaf_of(plant.enroll(request(device, reissue=True)))
    records = {r["serial"]: r for r in plant.issued("--device", device)}
    assert records[format(first.serial_number, "x")]["status"] == "superseded"
    assert records[format(second.serial_number, "x")]["status"] == "active"
    assert len(records) == 2
    # The same device at another CA of the system is a separate identity.
    plant.enroll(request(device, ca="rsaca"))


def test_policy_edit_applies_after_restart(plant: CASystemUnderTest) -> None:
    """Restrict the strict CA's keys in policy.toml, restart: disallowed keys are refused."""
    ed25519_params = EnrollmentParameters(key_algorithm=KeySpec.ED25519)
    kept = plant.enroll(request(ca="strict", parameters=ed25519_params))
    kept_device = name_values(leaf_of(kept).subject)["CN"]
    policy = plant.root / "cas" / "strict" / "policy.toml"
    text = policy.read_text()
    start = text.index("allowed = [")
    end = text.index("]", start) + 1
    policy.write_text(text[:start] + 'allowed = ["ec-p256"]' + text[end:])
    plant.stop()
    plant.start()

    before = plant.count()
    for spec in (KeySpec.ED25519, KeySpec.RSA_2048):
        params = EnrollmentParameters(key_algorithm=spec)
        with pytest.raises(UnsupportedParameter, match="not allowed"):
            plant.enroll(request(ca="strict", parameters=params))
    ed_csr = make_csr(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(UnsupportedParameter):
        plant.enroll(request(ca="strict", csr_der=ed_csr))
    assert plant.count() == before
    # Controls: the allowed key is issued; other CAs are unaffected; records survived.
    assert is_p256(leaf_of(plant.enroll(request(ca="strict"))).public_key())
    plant.enroll(request(parameters=EnrollmentParameters(key_algorithm=KeySpec.ED25519)))
    with pytest.raises(NotAuthorized):
        plant.enroll(request(kept_device, ca="strict"))


# --- who may talk to the CA system -------------------------------------------------------


def test_fail_unregistered_client_refused_at_handshake(
    plant: CASystemUnderTest, customer: CASystemUnderTest
) -> None:
    """node1 is registered with the customer system, not with the plant."""
    stranger = customer.credential("node1")
    before = plant.count()
    with pytest.raises(Unavailable, match=r"TLS|connection"):
        asyncio.run(CAClient(plant.address, stranger).enroll(request()))

    tls12 = client_context(
        key=stranger.key, chain=stranger.chain, server_anchors=stranger.trust_anchors
    )
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2  # the handshake completes (or not) in full
    # The plant's server certificate comes from the plant's service CA, which the stranger
    # does not trust either: verify only the client side is refused, by trusting the plant.
    tls12.load_verify_locations(cadata=(plant.root / "service" / "ca.pem").read_text())
    with pytest.raises(ssl.SSLError) as refused, socket.create_connection(plant.address) as raw:
        tls12.wrap_socket(raw, server_hostname="127.0.0.1")
    # The client trusted the server, so this is the server's verdict (an alert or a close).
    assert not isinstance(refused.value, ssl.SSLCertVerificationError)
    assert plant.count() == before

    # Control: the same handshake with the system it is registered with completes.
    with (
        socket.create_connection(customer.address, timeout=10) as raw,
        tls12.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.2"
    customer.enroll(request(), client="node1")


def test_fail_removed_client_refused_even_on_open_connection(plant: CASystemUnderTest) -> None:
    with RawConnection(plant.address, plant.credential("doomed")) as kept_alive:
        kept_alive.send_request(first := request())  # control: registered, it is served
        assert kept_alive.read_answer().request_id == first.request_id
        served_at = time.monotonic()
        assert plant.clients()["doomed"]["status"] == "active"
        ztpki("ca", "remove-client", "--dir", str(plant.root), "--name", "doomed")
        clients = plant.clients()
        assert clients["doomed"]["status"] == "revoked" and clients["line1"]["status"] == "active"

        before = plant.count()
        # Open connections re-check their registration at most every client_recheck seconds
        # (the two CLI runs above take longer than that already).
        time.sleep(max(0.0, ServiceLimits().client_recheck - (time.monotonic() - served_at)))
        kept_alive.send_request(second := request())
        refused = kept_alive.read_answer()
        assert isinstance(refused, EnrollmentError) and refused.request_id == second.request_id
        assert refused.code is ErrorCode.NOT_AUTHORIZED and "not registered" in refused.message
        assert kept_alive.at_eof()
    # Its next connection is refused too; other clients are still served.
    with pytest.raises((NotAuthorized, Unavailable)) as next_time:
        plant.enroll(request(), client="doomed")
    if isinstance(next_time.value, NotAuthorized):
        assert "not registered" in next_time.value.message
    assert plant.count() == before
    plant.enroll(request())
    again = ztpki("ca", "remove-client", "--dir", str(plant.root), "--name", "doomed", check=False)
    assert again.returncode == 1 and "no registered CA-client" in again.stderr


# --- hostile bytes -----------------------------------------------------------------------

NS = b'xmlns="urn:ztpki:enrollment:1"'


def _valid_csr_der() -> bytes:
    return make_csr(generate_private_key(KeySpec.EC_P256))


def _csr_request(csr_b64: bytes) -> bytes:
    return (
        b"<EnrollmentRequest " + NS + b' id="h-csr"><DeviceId>h-dev</DeviceId>'
        b"<CSR>" + csr_b64 + b"</CSR></EnrollmentRequest>"
    )


def _bad_signature_csr() -> bytes:
    der = bytearray(_valid_csr_der())
    der[-1] ^= 0x01  # inside the signature value: still DER, no longer verifies
    return _csr_request(base64.b64encode(bytes(der)))


LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE EnrollmentRequest [<!ENTITY a "hahahahahahahahahaha">'
    + b"".join(
        b'<!ENTITY %c "%s">' % (ord("b") + i, (b"&%c;" % (ord("a") + i)) * 10) for i in range(9)
    )
    + b"]><EnrollmentRequest "
    + NS
    + b' id="h-laughs"><DeviceId>&j;</DeviceId></EnrollmentRequest>'
)

HOSTILE = {
    "fail-not-well-formed": b"<EnrollmentRequest " + NS + b' id="h-1"><DeviceId>x</DeviceId>',
    "fail-billion-laughs": LAUGHS,
    "fail-xxe-external-entity": (
        b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<EnrollmentRequest " + NS + b' id="h-xxe"><DeviceId>&x;</DeviceId></EnrollmentRequest>'
    ),
    "fail-external-dtd": (
        b'<!DOCTYPE EnrollmentRequest SYSTEM "http://127.0.0.1:9/enrollment.dtd">'
        b"<EnrollmentRequest " + NS + b' id="h-dtd"><DeviceId>d</DeviceId></EnrollmentRequest>'
    ),
    "fail-wrong-namespace": (
        b'<EnrollmentRequest xmlns="urn:other:1" id="h-ns">'
        b"<DeviceId>d</DeviceId></EnrollmentRequest>"
    ),
    "fail-no-namespace": (
        b'<EnrollmentRequest id="h-nons"><DeviceId>d</DeviceId></EnrollmentRequest>'
    ),
    "fail-missing-device-id": b"<EnrollmentRequest " + NS + b' id="h-nodev"></EnrollmentRequest>',
    "fail-csr-invalid-base64": _csr_request(b"!!not*base64!!"),
    "fail-csr-not-der": _csr_request(base64.b64encode(b"this is not a certification request")),
    "fail-csr-signature-does-not-verify": _bad_signature_csr(),
    "fail-empty-frame": b"",
    "fail-not-utf8": (
        b"<EnrollmentRequest " + NS + b' id="h-utf">'
        b"<DeviceId>\xff\xfe</DeviceId></EnrollmentRequest>"
    ),
}


@pytest.mark.parametrize("payload", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_frame_gets_malformed_and_changes_nothing(
    plant: CASystemUnderTest, payload: bytes
) -> None:
    before = [(r.serial, r.status.value, r.request_id) for r in plant.store.issued()]
    with RawConnection(plant.address, plant.credential("line1")) as connection:
        connection.send_frame(payload)
        answer = connection.read_answer()
        assert isinstance(answer, EnrollmentError), answer
        assert answer.code is ErrorCode.MALFORMED, answer.message
        if b' id="h-' in payload:
            assert answer.request_id == payload.split(b' id="')[1].split(b'"')[0].decode()
        assert "root:" not in answer.message  # nothing of /etc/passwd comes back
        assert plant.count() == len(before)
        # Control: the same connection still serves a legitimate request.
        legit = request()
        connection.send_request(legit)
        ok = connection.read_answer()
        assert isinstance(ok, EnrollmentAnswer) and ok.request_id == legit.request_id
    # What the operator sees: the legitimate certificate was added, nothing else changed.
    after = [(r["serial"], r["status"], r["request_id"]) for r in plant.issued()]
    assert [r[2] for r in after[len(before) :]] == [legit.request_id]
    assert after[: len(before)] == before


def test_fail_oversized_frame_header_answered_and_closed(plant: CASystemUnderTest) -> None:
    before = plant.count()
    with RawConnection(plant.address, plant.credential("line1")) as connection:
        connection.send_raw(((1 << 20) + 1).to_bytes(4, "big"))
        answer = connection.read_answer()
        assert isinstance(answer, EnrollmentError) and answer.code is ErrorCode.MALFORMED
        assert "exceeds" in answer.message
        assert connection.at_eof()
    assert plant.count() == before
    assert plant.service is not None and plant.service.process.poll() is None
    plant.enroll(request())  # control: a new connection is served
    # Control: exactly 1 MiB is within the limit (malformed XML, but the connection stays).
    with RawConnection(plant.address, plant.credential("line1")) as connection:
        connection.send_frame(b" " * (1 << 20))
        answer = connection.read_answer()
        assert isinstance(answer, EnrollmentError) and "exceeds" not in answer.message
        connection.send_request(legit := request())
        assert connection.read_answer().request_id == legit.request_id


def test_fail_oversized_header_behind_a_request_answered_after_it(
    plant: CASystemUnderTest,
) -> None:
    before = plant.count()
    with RawConnection(plant.address, plant.credential("line1")) as connection:
        payload = encode_request(legit := request())
        # One write: a whole request, then the header of a frame over the limit.
        connection.send_raw(
            len(payload).to_bytes(4, "big") + payload + ((1 << 20) + 1).to_bytes(4, "big")
        )
        first, second = connection.read_answer(), connection.read_answer()
        assert isinstance(first, EnrollmentAnswer) and first.request_id == legit.request_id
        assert isinstance(second, EnrollmentError) and second.code is ErrorCode.MALFORMED
        assert "exceeds" in second.message
        assert connection.at_eof()
    assert plant.count() == before + 1  # the request ahead of the bad header, nothing else


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(
            (200).to_bytes(4, "big") + b"<EnrollmentRequest " + NS, id="fail-truncated-body"
        ),
        pytest.param(b"\x00\x00", id="fail-truncated-header"),
    ],
)
def test_fail_truncated_frame_then_close(plant: CASystemUnderTest, sent: bytes) -> None:
    before = plant.count()
    with RawConnection(plant.address, plant.credential("line1")) as connection:
        connection.send_raw(sent)
    # The client went away mid-frame; the server drops the connection and serves on.
    assert plant.count() == before
    assert plant.service is not None and plant.service.process.poll() is None
    plant.enroll(request())  # control


def test_ok_several_exchanges_on_one_connection(plant: CASystemUnderTest) -> None:
    with RawConnection(plant.address, plant.credential("line1")) as connection:
        for _ in range(3):
            connection.send_request(sent := request())
            answer = connection.read_answer()
            assert isinstance(answer, EnrollmentAnswer) and answer.request_id == sent.request_id
        # Pipelined: two requests in one write, answered in order.
        first, second = request(), request(parameters=EnrollmentParameters(validity_days=900))
        both = (encode_request(first), encode_request(second))
        connection.send_raw(b"".join(len(p).to_bytes(4, "big") + p for p in both))
        one, two = connection.read_answer(), connection.read_answer()
        assert isinstance(one, EnrollmentAnswer) and one.request_id == first.request_id
        assert isinstance(two, EnrollmentError) and two.request_id == second.request_id
        assert two.code is ErrorCode.UNSUPPORTED_PARAMETER


# --- the command line --------------------------------------------------------------------


def test_cli_list_issued_clients(plant: CASystemUnderTest, customer: CASystemUnderTest) -> None:
    wide = {"COLUMNS": "300"}
    listed = ztpki("ca", "list", "--dir", str(plant.root), env=wide).stdout
    for name in ("root", "factory", "rsaca", "servers", "shortlived", "strict"):
        assert name in listed
    assert "customer" in ztpki("ca", "list", "--dir", str(customer.root), env=wide).stdout

    device = new_id("cli")
    answer = plant.enroll(request(device))
    leaf = leaf_of(answer)
    issued = ztpki("ca", "issued", "--dir", str(plant.root), "--json")
    records = [r for r in json.loads(issued.stdout) if r["device_id"] == device]
    assert len(records) == 1
    record = records[0]
    assert record["serial"] == format(leaf.serial_number, "x")
    assert record["fingerprint"] == fingerprint_sha256(leaf)
    assert record["fingerprint"] == hashlib.sha256(answer.certificate_der).hexdigest()
    assert record["ca"] == "factory" and record["status"] == "active"
    assert record["subject"] == leaf.subject.rfc4514_string()
    assert datetime.fromisoformat(record["not_after"]) == leaf.not_valid_after_utc
    table = ztpki("ca", "issued", "--dir", str(plant.root), "--device", device, env=wide).stdout
    assert format(leaf.serial_number, "x") in table and "1 certificate(s)" in table

    clients = ztpki("ca", "list-clients", "--dir", str(plant.root), env=wide).stdout
    assert "line1" in clients and "active" in clients
    assert "node1" not in clients  # control: the other system's client


def test_keys_at_rest_are_encrypted_and_private(
    plant: CASystemUnderTest, customer: CASystemUnderTest
) -> None:
    keys = [
        *(plant.root / "cas").glob("*/ca.key.pem"),
        *(customer.root / "cas").glob("*/ca.key.pem"),
        plant.root / "service" / "ca.key.pem",
        plant.credentials["line1"] / "key.pem",
    ]
    assert len(keys) == 9
    for path in keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert path.read_bytes().startswith(ENCRYPTED_KEY_HEADER), path
    for directory in (plant.root, customer.root):
        for path in directory.rglob("*"):
            if path.is_file():
                assert b"BEGIN PRIVATE KEY" not in path.read_bytes(), path
    root_key = (plant.root / "cas" / "root" / "ca.key.pem").read_bytes()
    decode_pkcs8(root_key, passphrase=CA_PASSPHRASE.encode())  # control: it is the real key


def test_fail_init_without_passphrase(tmp_path: Path) -> None:
    target = tmp_path / "sys"
    for env, message in (
        ({"ZTPKI_CA_PASSPHRASE": ""}, "ZTPKI_CA_PASSPHRASE"),
        ({"ZTPKI_CA_PASSPHRASE": "short"}, "at least 8"),
    ):
        failed = ztpki("ca", "init", "--dir", str(target), "--name", "root", env=env, check=False)
        assert failed.returncode == 1
        assert "passphrase" in failed.stderr and message in failed.stderr
        assert "Traceback" not in failed.stderr
        assert not (target / "cas" / "root" / "ca.pem").exists()
    ztpki("ca", "init", "--dir", str(target), "--name", "root")  # control
    assert (target / "cas" / "root" / "ca.pem").exists()


def test_fail_serve_with_wrong_passphrase(plant: CASystemUnderTest) -> None:
    failed = ztpki(
        "ca", "serve", "--dir", str(plant.root), "--listen", "127.0.0.1:0",
        env={"ZTPKI_CA_PASSPHRASE": "not-the-passphrase"}, check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "wrong or missing passphrase" in failed.stderr
    assert "listening on" not in failed.stdout and "Traceback" not in failed.stderr
    assert CA_PASSPHRASE not in failed.stderr and "not-the-passphrase" not in failed.stderr


def test_ok_insecure_no_passphrase_works_and_warns(tmp_path: Path) -> None:
    demo = CASystemUnderTest(tmp_path / "demo", tmp_path)
    no_env = {"ZTPKI_CA_PASSPHRASE": ""}
    created = ztpki(
        "ca", "init", "--dir", str(demo.root), "--name", "root", "--insecure-no-passphrase",
        env=no_env,
    )  # fmt: skip
    assert "INSECURE" in created.stderr
    key = demo.root / "cas" / "root" / "ca.key.pem"
    assert key.read_bytes().startswith(PLAIN_KEY_HEADER)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    out = tmp_path / "demo-client"
    ztpki(
        "ca", "add-client", "--dir", str(demo.root), "--name", "line1", "--out", str(out),
        "--ca", "root", "--insecure-no-passphrase", env=no_env,
    )  # fmt: skip
    demo.credentials["line1"] = out
    # Control: without the flag and without a passphrase, serve refuses to start.
    refused = ztpki("ca", "serve", "--dir", str(demo.root), env=no_env, check=False)
    assert refused.returncode == 1 and "needs a passphrase" in refused.stderr
    with stopped_afterwards(demo):
        service = demo.start("--insecure-no-passphrase", env=no_env)
        assert "INSECURE" in service.log()
        answer = demo.enroll(request())
        assert leaf_of(answer).issuer == demo.ca_certificate("root").subject


def test_ok_serve_runs_on_uvloop_by_default(plant: CASystemUnderTest) -> None:
    assert plant.service is not None
    assert "on the uvloop event loop" in plant.service.log()


def test_ok_serve_on_the_standard_event_loop(tmp_path: Path) -> None:
    system = CASystemUnderTest(tmp_path / "std", tmp_path)
    system.init_ca("root")
    system.add_client("line1")
    with stopped_afterwards(system):
        service = system.start(env={"ZTPKI_EVENT_LOOP": "asyncio"})
        assert "on the asyncio event loop" in service.log()
        generated = system.enroll(request())
        with_csr = system.enroll(request(csr_der=make_csr(generate_private_key(KeySpec.EC_P256))))
    for answer in (generated, with_csr):
        assert leaf_of(answer).issuer == system.ca_certificate("root").subject
    assert len(system.issued()) == 2


def test_fail_serve_with_an_unknown_event_loop(plant: CASystemUnderTest) -> None:
    before = plant.issued()
    failed = ztpki(
        "ca", "serve", "--dir", str(plant.root), "--listen", "127.0.0.1:0",
        env={"ZTPKI_EVENT_LOOP": "trio"}, check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "ZTPKI_EVENT_LOOP='trio'" in failed.stderr and "asyncio" in failed.stderr
    assert "listening on" not in failed.stdout and "Traceback" not in failed.stderr
    assert plant.issued() == before


# --- CA key types and deeper hierarchies ---------------------------------------------------

KEYED_CAS = {
    KeySpec.ED25519: "ca-ed25519",
    KeySpec.RSA_3072: "ca-rsa3072",
    KeySpec.RSA_4096: "ca-rsa4096",
}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CASystemUnderTest]:
    """A system whose issuing CAs hold Ed25519, RSA-3072 and RSA-4096 keys, and a CA two
    levels below the root (root -> mid with --path-length 1 -> issuing)."""
    base = tmp_path_factory.mktemp("keyed")
    system = CASystemUnderTest(base / "keyed", base)
    system.init_ca("root", "--org", "Acme")
    for spec, name in KEYED_CAS.items():
        system.init_ca(name, "--parent", "root", "--key", spec.value)
    system.init_ca("mid", "--parent", "root", "--path-length", "1")
    system.init_ca("issuing", "--parent", "mid", "--default")
    system.add_client("line1")
    with stopped_afterwards(system):
        system.start()
        yield system


@pytest.mark.parametrize("spec", list(KEYED_CAS), ids=lambda s: f"ok-{s}")
def test_ok_ca_key_types_issue_certificates_openssl_accepts(
    keyed: CASystemUnderTest, tmp_path: Path, spec: KeySpec
) -> None:
    name = KEYED_CAS[spec]
    issuing, root = keyed.ca_certificate(name), keyed.ca_certificate("root")
    assert key_spec_of(issuing.public_key()) is spec
    device = new_id("keyed")
    answer = keyed.enroll(request(device, ca=name))
    leaf = leaf_of(answer)
    check_end_entity(leaf, issuing, device_id=device)
    assert chain_of(answer) == [issuing, root]
    ok = openssl_verify(tmp_path, leaf, root=root, intermediates=[issuing], purpose="sslclient")
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stderr
    # Control: the same leaf with another CA of the system as its issuer does not verify.
    other = keyed.ca_certificate(next(n for n in KEYED_CAS.values() if n != name))
    wrong = openssl_verify(tmp_path, leaf, root=root, intermediates=[other], purpose="sslclient")
    assert wrong.returncode != 0


def test_ok_two_intermediates_verify_and_a_third_level_is_refused(
    keyed: CASystemUnderTest, tmp_path: Path
) -> None:
    root, mid, issuing = (keyed.ca_certificate(n) for n in ("root", "mid", "issuing"))
    answer = keyed.enroll(request())
    assert chain_of(answer) == [issuing, mid, root]
    leaf = leaf_of(answer)
    ok = openssl_verify(
        tmp_path, leaf, root=root, intermediates=[issuing, mid], purpose="sslclient"
    )
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stderr
    # A CA below the path-length-0 issuing CA is refused before anything is written.
    refused = ztpki(
        "ca", "init", "--dir", str(keyed.root), "--name", "too-deep", "--parent", "issuing",
        check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "path length 0" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (keyed.root / "cas" / "too-deep").exists()


# --- concurrency -------------------------------------------------------------------------


def test_ok_concurrent_enrollments_with_rsa_mixed_in(plant: CASystemUnderTest) -> None:
    devices = [new_id("many") for _ in range(64)]
    requests = [
        request(
            device,
            parameters=EnrollmentParameters(key_algorithm=KeySpec.RSA_2048 if n % 4 == 0 else None),
        )
        for n, device in enumerate(devices)
    ]
    answers = asyncio.run(enroll_all(plant, requests, pool_size=8))
    failures = [a for a in answers if not isinstance(a, EnrollmentAnswer)]
    assert not failures, failures[:3]
    for n, answer in enumerate(answers):
        assert isinstance(answer, EnrollmentAnswer) and answer.private_key_der is not None
        expected = KeySpec.RSA_2048 if n % 4 == 0 else KeySpec.EC_P256
        assert key_spec_of(leaf_of(answer).public_key()) is expected
    records = [r for r in plant.issued("--ca", "factory") if r["device_id"] in set(devices)]
    assert sorted(r["device_id"] for r in records) == sorted(devices)
    assert all(r["status"] == "active" for r in records)
    assert len({r["serial"] for r in records}) == 64


def test_ok_concurrent_requests_for_one_device_issue_once(plant: CASystemUnderTest) -> None:
    device = new_id("race")
    answers = asyncio.run(enroll_all(plant, [request(device) for _ in range(8)], pool_size=8))
    issued = [a for a in answers if isinstance(a, EnrollmentAnswer)]
    refused = [a for a in answers if isinstance(a, NotAuthorized)]
    assert len(issued) == 1 and len(refused) == 7, answers
    assert [r.status for r in plant.records(device_id=device)] == ["active"]
