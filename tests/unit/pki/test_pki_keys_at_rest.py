"""CA keys at rest: PBES2 with PBKDF2-HMAC-SHA256 at many rounds and AES-256-CBC, readable by
cryptography and OpenSSL alike; keys written by earlier versions (2048 rounds) still load."""

from __future__ import annotations

import base64
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.support.pem_markers import ENCRYPTED_KEY_HEADER

from ztpki.casystem.directory import CASystemDirectory, init_ca, service_authority
from ztpki.errors import MalformedInput
from ztpki.pki.der import oid_text, read_tlv
from ztpki.pki.keys import (
    KeySpec,
    PrivateKey,
    decode_pkcs8,
    encode_pkcs8_pem,
    generate_private_key,
    keys_match,
)
from ztpki.pki.pbes2 import AT_REST_KDF_ROUNDS

SECRET = b"keys-at-rest-passphrase"
NOW = datetime.now(UTC)


def pbes2_parameters(pem: bytes) -> tuple[str, str, int, str, str]:
    """(scheme, kdf, rounds, prf, cipher) OIDs and count of an encrypted PKCS#8 PEM."""
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    der = base64.b64decode(body)

    def children(at: int, stop: int) -> list[tuple[int, int, int]]:
        found = []
        while at < stop:
            item, at = read_tlv(der, at, stop=stop)
            found.append((item.tag, item.start, item.end))
        return found

    (outer,) = children(0, len(der))
    algorithm, _data = children(outer[1], outer[2])
    scheme_oid, params = children(algorithm[1], algorithm[2])
    kdf, cipher = children(params[1], params[2])
    kdf_oid, kdf_params = children(kdf[1], kdf[2])
    _salt, rounds, *rest = children(kdf_params[1], kdf_params[2])
    prf_oid = children(rest[-1][1], rest[-1][2])[0]
    cipher_oid = children(cipher[1], cipher[2])[0]

    def oid(item: tuple[int, int, int]) -> str:
        return oid_text(der[item[1] : item[2]])

    count = int.from_bytes(der[rounds[1] : rounds[2]], "big")
    return oid(scheme_oid), oid(kdf_oid), count, oid(prf_oid), oid(cipher_oid)


PBES2 = "1.2.840.113549.1.5.13"
PBKDF2 = "1.2.840.113549.1.5.12"
HMAC_SHA256 = "1.2.840.113549.2.9"
AES256_CBC = "2.16.840.1.101.3.4.1.42"


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
