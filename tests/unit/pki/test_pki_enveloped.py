"""Central key delivery (RFC 9483 section 4.1.6): a key signed by the node (SignedData of an
AsymmetricKeyPackage) inside an EnvelopedData to the device's temporary key, by ECDH key
agreement or RSA-OAEP key transport; checked against `openssl cms` both ways."""

from __future__ import annotations

import contextlib
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5652

from ztpki.errors import MalformedInput, UnsupportedParameter
from ztpki.pki.asn1 import decode_der, encode_der
from ztpki.pki.enveloped import envelope_for, open_envelope
from ztpki.pki.key_package import ID_SIGNED_DATA, read_key_package, sign_key_package
from ztpki.pki.keys import KeySpec, PrivateKey, generate_private_key, keys_match

FUZZ = settings(
    max_examples=int(os.environ.get("ZTPKI_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
NOW = datetime.now(UTC)
ID_DATA = "1.2.840.113549.1.7.1"


def certificate(key: PrivateKey, name: str = "device", serial: int = 4711) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    digest = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, digest)
    )


RECIPIENTS = {spec: generate_private_key(spec) for spec in (KeySpec.EC_P256, KeySpec.EC_P384)}
RECIPIENTS[KeySpec.RSA_2048] = generate_private_key(KeySpec.RSA_2048)
SIGNERS = {
    spec: generate_private_key(spec)
    for spec in (KeySpec.EC_P256, KeySpec.EC_P384, KeySpec.RSA_2048, KeySpec.ED25519)
}


def content_info(content_type: univ.ObjectIdentifier, der: bytes) -> bytes:
    info = rfc5652.ContentInfo()
    info["contentType"] = content_type
    info["content"] = univ.Any(der)
    return encode_der(info)


def write_pem(tmp_path: Path, key: PrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


@pytest.mark.parametrize("spec", list(RECIPIENTS), ids=lambda s: f"ok-{s}")
def test_ok_openssl_opens_our_envelope(spec: KeySpec, tmp_path: Path) -> None:
    key = RECIPIENTS[spec]
    cert = certificate(key)
    envelope = envelope_for(cert, ID_DATA, b"a centrally generated key")
    (tmp_path / "env.der").write_bytes(content_info(rfc5652.id_envelopedData, envelope))
    key_file, cert_file = write_pem(tmp_path, key, cert)
    opened = subprocess.run(
        [
            "openssl",
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "env.der"),
            "-recip",
            str(cert_file),
            "-inkey",
            str(key_file),
        ],
        capture_output=True,
        check=False,
    )
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout == b"a centrally generated key"
    # Negative control: another key of the same kind does not open it.
    other_file, _ = write_pem(tmp_path, generate_private_key(spec), cert)
    refused = subprocess.run(
        [
            "openssl",
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "env.der"),
            "-recip",
            str(cert_file),
            "-inkey",
            str(other_file),
        ],
        capture_output=True,
        check=False,
    )
    assert refused.returncode != 0 or refused.stdout != b"a centrally generated key"


@pytest.mark.parametrize("spec", list(RECIPIENTS), ids=lambda s: f"ok-{s}")
def test_ok_we_open_an_openssl_envelope(spec: KeySpec, tmp_path: Path) -> None:
    key = RECIPIENTS[spec]
    cert = certificate(key)
    _, cert_file = write_pem(tmp_path, key, cert)
    (tmp_path / "plain").write_bytes(b"from openssl")
    options = (
        ["rsa_padding_mode:oaep", "rsa_oaep_md:sha256", "rsa_mgf1_md:sha256"]
        if spec.is_rsa
        else ["ecdh_kdf_md:sha256"]
    )
    made = subprocess.run(
        ["openssl", "cms", "-encrypt", "-aes256", "-outform", "DER"]
        + ["-in", str(tmp_path / "plain"), "-recip", str(cert_file)]
        + [arg for option in options for arg in ("-keyopt", option)],
        capture_output=True,
        check=True,
    )
    info = decode_der(made.stdout, rfc5652.ContentInfo(), what="openssl output")
    opened = open_envelope(bytes(info["content"]), key, cert)
    assert (opened.content_type, opened.content) == (ID_DATA, b"from openssl")


@FUZZ
@given(content=st.binary(max_size=300), spec=st.sampled_from(list(RECIPIENTS)))
def test_ok_envelope_round_trip(content: bytes, spec: KeySpec) -> None:
    key = RECIPIENTS[spec]
    cert = certificate(key)
    opened = open_envelope(envelope_for(cert, ID_SIGNED_DATA, content), key, cert)
    assert (opened.content_type, opened.content) == (ID_SIGNED_DATA, content)


@pytest.mark.parametrize("spec", list(RECIPIENTS), ids=lambda s: f"fail-{s}")
def test_fail_envelope_for_someone_else(spec: KeySpec) -> None:
    key = RECIPIENTS[spec]
    cert = certificate(key)
    envelope = envelope_for(cert, ID_DATA, b"secret")
    # Same name and serial, another key: the content key does not come out.
    impostor = generate_private_key(spec)
    with pytest.raises(MalformedInput, match="does not decrypt"):
        open_envelope(envelope, impostor, certificate(impostor))
    # Another certificate: refused before any decryption.
    with pytest.raises(MalformedInput, match="addressed to another certificate"):
        open_envelope(envelope, key, certificate(key, serial=4712))


def test_fail_envelope_to_an_ed25519_key() -> None:
    with pytest.raises(UnsupportedParameter, match="Ed25519"):
        envelope_for(certificate(SIGNERS[KeySpec.ED25519]), ID_DATA, b"secret")


@pytest.mark.fuzz
@FUZZ
@given(position=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_fail_tampered_envelope(position: int, flip: int) -> None:
    key = RECIPIENTS[KeySpec.EC_P256]
    cert = certificate(key)
    envelope = bytearray(envelope_for(cert, ID_DATA, b"x" * 40))
    envelope[position % len(envelope)] ^= flip
    # CBC without a MAC can decrypt a changed block into other bytes: what matters is that
    # tampering never raises anything but our typed errors. The signature inside catches it.
    with contextlib.suppress(MalformedInput, UnsupportedParameter):
        open_envelope(bytes(envelope), key, cert)


@pytest.mark.parametrize("spec", list(SIGNERS), ids=lambda s: f"ok-{s}")
def test_ok_key_package_round_trip(spec: KeySpec) -> None:
    signer_key = SIGNERS[spec]
    signer = certificate(signer_key, "kga")
    delivered = generate_private_key(KeySpec.EC_P256)
    package = sign_key_package(delivered, signer_key=signer_key, signer_chain=[signer])
    assert keys_match(read_key_package(package, signer=signer), delivered.public_key())
    with pytest.raises(MalformedInput, match="not signed by the node"):
        read_key_package(package, signer=certificate(signer_key, "kga", serial=1))


@pytest.mark.parametrize(
    "spec", [KeySpec.EC_P256, KeySpec.EC_P384, KeySpec.RSA_2048], ids=lambda s: f"ok-{s}"
)
def test_ok_openssl_verifies_key_package(spec: KeySpec, tmp_path: Path) -> None:
    # OpenSSL 3.0's CMS refuses Ed25519 signers ("invalid digest"), so that one is ours only.
    signer_key = SIGNERS[spec]
    signer = certificate(signer_key, "kga")
    package = sign_key_package(
        generate_private_key(KeySpec.EC_P256), signer_key=signer_key, signer_chain=[signer]
    )
    (tmp_path / "sd.der").write_bytes(content_info(univ.ObjectIdentifier(ID_SIGNED_DATA), package))
    _, cert_file = write_pem(tmp_path, signer_key, signer)
    checked = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "sd.der"),
            "-CAfile",
            str(cert_file),
            "-purpose",
            "any",
        ],
        capture_output=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert b"Verification successful" in checked.stderr


def test_fail_key_package_signed_by_a_stranger() -> None:
    signer_key = SIGNERS[KeySpec.EC_P256]
    signer = certificate(signer_key, "kga")
    stranger_key = generate_private_key(KeySpec.EC_P256)
    # Same issuer name and serial as the node's certificate, another key.
    forged = sign_key_package(
        generate_private_key(KeySpec.EC_P256),
        signer_key=stranger_key,
        signer_chain=[certificate(stranger_key, "kga")],
    )
    with pytest.raises(MalformedInput, match="signature does not verify"):
        read_key_package(forged, signer=signer)


def test_fail_key_package_content_swapped() -> None:
    signer_key = SIGNERS[KeySpec.EC_P256]
    signer = certificate(signer_key, "kga")
    first = sign_key_package(
        generate_private_key(KeySpec.EC_P256), signer_key=signer_key, signer_chain=[signer]
    )
    second = sign_key_package(
        generate_private_key(KeySpec.EC_P256), signer_key=signer_key, signer_chain=[signer]
    )
    data = decode_der(first, rfc5652.SignedData(), what="first")
    other = decode_der(second, rfc5652.SignedData(), what="second")
    data["encapContentInfo"]["eContent"] = bytes(other["encapContentInfo"]["eContent"])
    with pytest.raises(MalformedInput, match="does not match its signed digest"):
        read_key_package(encode_der(data), signer=signer)


@pytest.mark.fuzz
@FUZZ
@given(st.binary(max_size=400))
def test_fail_arbitrary_bytes_are_typed_errors(der: bytes) -> None:
    key = RECIPIENTS[KeySpec.EC_P256]
    cert = certificate(key)
    with pytest.raises(MalformedInput):
        read_key_package(der, signer=cert)
    with pytest.raises((MalformedInput, UnsupportedParameter)):
        open_envelope(der, key, cert)
