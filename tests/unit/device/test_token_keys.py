"""Device keys in a SoftHSM token, in process: generated there, signing there, never out."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from tests.support.softhsm import SoftHSM, softhsm

from ztpki.device.key_store import decode_device_key, encode_device_key, tls_key, token_uri_of
from ztpki.device.token_keys import KeyInToken, new_token_key, retire_keys
from ztpki.errors import UnsupportedParameter
from ztpki.pki.keys import KeySpec, generate_private_key, key_spec_of
from ztpki.pki.pkcs11_uri import Pkcs11Uri

__all__ = ["softhsm"]


@pytest.fixture(autouse=True)
def _token_env(softhsm: SoftHSM, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in softhsm.env.items():
        monkeypatch.setenv(name, value)


def test_ok_token_key_signs_in_the_token_and_is_stored_as_its_uri(softhsm: SoftHSM) -> None:
    token = Pkcs11Uri(token=softhsm.new_token("unit"))
    key = new_token_key(token, "dev-1", KeySpec.EC_P384)

    signature = key.sign(b"to be signed", ec.ECDSA(hashes.SHA384()))
    key.public_key().verify(signature, b"to be signed", ec.ECDSA(hashes.SHA384()))
    assert key_spec_of(key) is KeySpec.EC_P384
    stored = encode_device_key(key, b"unused secret")
    assert stored.startswith(b"pkcs11:token=") and b"PRIVATE" not in stored
    again = decode_device_key(stored, b"unused secret")
    assert token_uri_of(again) == key.uri and tls_key(again) is None


def test_fail_token_key_refuses_to_leave_the_token(softhsm: SoftHSM) -> None:
    key = new_token_key(Pkcs11Uri(token=softhsm.new_token("unit")), "dev-2", KeySpec.EC_P256)
    with pytest.raises(KeyInToken, match="--protocol cmp"):
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    with pytest.raises(KeyInToken):
        key.private_numbers()
    with pytest.raises(UnsupportedParameter, match="ec-p256 or ec-p384"):
        new_token_key(Pkcs11Uri(token=softhsm.new_token("unit")), "dev-2", KeySpec.RSA_2048)


def test_ok_retire_keeps_the_named_key_and_other_devices_keys(softhsm: SoftHSM) -> None:
    label = softhsm.new_token("unit")
    token = Pkcs11Uri(token=label)
    old = new_token_key(token, "dev-3", KeySpec.EC_P256)
    new = new_token_key(token, "dev-3", KeySpec.EC_P256)
    other = new_token_key(token, "dev-4", KeySpec.EC_P256)

    destroyed = retire_keys(token, "dev-3", {new.uri})

    assert destroyed == [Pkcs11Uri.parse(old.uri).object]
    listing = softhsm.private_keys(label)
    assert Pkcs11Uri.parse(new.uri).object in listing
    assert Pkcs11Uri.parse(other.uri).object in listing
    assert Pkcs11Uri.parse(old.uri).object not in listing
    new.sign(b"still works", ec.ECDSA(hashes.SHA256()))


def test_ok_file_key_is_stored_encrypted_as_before() -> None:
    key = generate_private_key(KeySpec.EC_P256)
    stored = encode_device_key(key, b"device secret")
    assert b"ENCRYPTED PRIVATE KEY" in stored
    assert token_uri_of(key) is None and tls_key(key) is key
    assert decode_device_key(stored, b"device secret").public_key() == key.public_key()
