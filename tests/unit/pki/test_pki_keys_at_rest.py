"""CA keys at rest: PBES2 with PBKDF2-HMAC-SHA256 at many rounds and AES-256-CBC, readable by
cryptography and OpenSSL alike; keys written by earlier versions (2048 rounds) still load."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.support.pbes2 import AES256_CBC, HMAC_SHA256, PBES2, PBKDF2, pbes2_parameters
from tests.support.pem_markers import ENCRYPTED_KEY_HEADER

from ztpki.casystem.directory import CASystemDirectory, init_ca, service_authority
from ztpki.credentials import Credential
from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.pki.authority import create_self_signed_ca
from ztpki.pki.keys import (
    KeySpec,
    PrivateKey,
    decode_pkcs8,
    encode_pkcs8_pem,
    generate_private_key,
    keys_match,
)
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS

SECRET = b"keys-at-rest-passphrase"
NOW = datetime.now(UTC)


@pytest.mark.parametrize("spec", [KeySpec.EC_P256, KeySpec.ED25519, KeySpec.RSA_2048])
def test_ok_strong_kdf_round_trip(spec: KeySpec) -> None:
    key = generate_private_key(spec)
    pem = encode_pkcs8_pem(key, passphrase=SECRET, kdf_rounds=AT_REST_KDF_ROUNDS)
    assert pem.startswith(ENCRYPTED_KEY_HEADER)
    assert pbes2_parameters(pem) == (PBES2, PBKDF2, AT_REST_KDF_ROUNDS, HMAC_SHA256, AES256_CBC)
    loaded = decode_pkcs8(pem, passphrase=SECRET)
    assert keys_match(loaded, key.public_key())
    for wrong in (b"not-the-passphrase", None):  # control
        with pytest.raises(MalformedInput):
            decode_pkcs8(pem, passphrase=wrong)


def test_ok_openssl_opens_the_strong_kdf_key(tmp_path: Path) -> None:
    key = generate_private_key(KeySpec.EC_P256)
    path = tmp_path / "key.pem"
    path.write_bytes(encode_pkcs8_pem(key, passphrase=SECRET, kdf_rounds=AT_REST_KDF_ROUNDS))
    env = {**os.environ, "PW": SECRET.decode()}
    shown = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", "env:PW", "-pubout"],
        capture_output=True, env=env, timeout=30,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    env["PW"] = "not-the-passphrase"  # control
    refused = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", "env:PW", "-noout"],
        capture_output=True, env=env, timeout=30,
    )  # fmt: skip
    assert refused.returncode != 0


def test_ok_ca_keys_are_written_with_the_strong_kdf(tmp_path: Path) -> None:
    system = CASystemDirectory(tmp_path / "plant")
    init_ca(system, "root", key_spec=KeySpec.EC_P256, validity_days=5, passphrase=SECRET, now=NOW)
    service_authority(system, passphrase=SECRET, now=NOW)
    for path in (system.ca_dir("root") / "ca.key.pem", tmp_path / "plant/service/ca.key.pem"):
        rounds = pbes2_parameters(path.read_bytes())[2]
        assert rounds == AT_REST_KDF_ROUNDS >= 100_000, path
    assert system.load_authority("root", passphrase=SECRET).name == "root"


def _old_format(key: PrivateKey) -> bytes:
    # What earlier versions wrote: cryptography's BestAvailableEncryption (2048 rounds).
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(SECRET),
    )


def test_ok_keys_written_with_the_old_kdf_still_load(tmp_path: Path) -> None:
    system = CASystemDirectory(tmp_path / "plant")
    init_ca(system, "root", key_spec=KeySpec.EC_P256, validity_days=5, passphrase=SECRET, now=NOW)
    key_path = system.ca_dir("root") / "ca.key.pem"
    key = decode_pkcs8(key_path.read_bytes(), passphrase=SECRET)
    old = _old_format(key)
    assert pbes2_parameters(old)[2] == 2048
    key_path.write_bytes(old)
    assert keys_match(system.load_authority("root", passphrase=SECRET).key, key.public_key())
    # A second CA is checked against the old key and written with the strong KDF.
    init_ca(system, "next", key_spec=KeySpec.EC_P256, validity_days=5, passphrase=SECRET, now=NOW)
    assert pbes2_parameters((system.ca_dir("next") / "ca.key.pem").read_bytes())[2] > 2048


def _credential(key: PrivateKey) -> Credential:
    name = build_subject("client-1", SubjectFields(), serial_number=None)
    cert = create_self_signed_ca(key, name, now=NOW, validity=timedelta(days=5))
    return Credential(key=key, chain=(cert,), trust_anchors=(cert,))


def test_ok_credentials_are_written_with_the_strong_kdf(tmp_path: Path) -> None:
    key = generate_private_key(KeySpec.EC_P256)
    _credential(key).save(tmp_path / "cred", passphrase=SECRET)
    pem = (tmp_path / "cred" / "key.pem").read_bytes()
    assert pbes2_parameters(pem) == (PBES2, PBKDF2, AT_REST_KDF_ROUNDS, HMAC_SHA256, AES256_CBC)
    loaded = Credential.load(tmp_path / "cred", passphrase=SECRET)
    assert keys_match(loaded.key, key.public_key())


def test_ok_credentials_written_with_the_old_kdf_still_load(tmp_path: Path) -> None:
    key = generate_private_key(KeySpec.EC_P256)
    _credential(key).save(tmp_path / "cred", passphrase=SECRET)
    old = _old_format(key)
    assert pbes2_parameters(old)[2] == 2048
    (tmp_path / "cred" / "key.pem").write_bytes(old)
    loaded = Credential.load(tmp_path / "cred", passphrase=SECRET)
    assert keys_match(loaded.key, key.public_key())
    with pytest.raises(ConfigurationError, match="wrong or missing passphrase"):  # control
        Credential.load(tmp_path / "cred", passphrase=b"not-the-passphrase")
