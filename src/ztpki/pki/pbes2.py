"""PKCS#8 encryption with a chosen PBKDF2 work factor (PBES2, RFC 8018; RFC 5958).

cryptography's BestAvailableEncryption derives the key of an encrypted PKCS#8 file with
PBKDF2 at 2048 iterations, and its encryption builder sets rounds only for PKCS#12 and
OpenSSH keys. Keys kept at rest for years (a CA's) need far more: this writes the standard
EncryptedPrivateKeyInfo with PBKDF2-HMAC-SHA256 at `rounds` iterations and AES-256-CBC,
which cryptography and OpenSSL read back like any other encrypted PKCS#8 key.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from ztpki.pki.der import integer, oid_body, tlv

# Work factor of keys at rest: about 45 ms per load on a current server core, paid once when
# a service starts or a CA is used from the command line (OWASP asks for 600,000 for
# PBKDF2-HMAC-SHA256 password hashes; a CA key's passphrase is also never sent anywhere).
AT_REST_KDF_ROUNDS = 300_000

_PBES2 = tlv(0x06, oid_body("1.2.840.113549.1.5.13"))
_PBKDF2 = tlv(0x06, oid_body("1.2.840.113549.1.5.12"))
_HMAC_SHA256 = tlv(0x06, oid_body("1.2.840.113549.2.9"))
_AES256_CBC = tlv(0x06, oid_body("2.16.840.1.101.3.4.1.42"))
_NULL = b"\x05\x00"


def encrypt_pkcs8_der(plain_pkcs8: bytes, passphrase: bytes, *, rounds: int) -> bytes:
    """EncryptedPrivateKeyInfo (DER) of an unencrypted PKCS#8 PrivateKeyInfo."""
    if rounds < 1:
        raise ValueError("PBKDF2 needs at least one round")
    salt, iv = os.urandom(16), os.urandom(16)
    key = PBKDF2HMAC(hashes.SHA256(), length=32, salt=salt, iterations=rounds).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain_pkcs8) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    prf = tlv(0x30, _HMAC_SHA256 + _NULL)
    kdf_params = tlv(0x30, tlv(0x04, salt) + integer(rounds) + integer(32) + prf)
    kdf = tlv(0x30, _PBKDF2 + kdf_params)
    scheme = tlv(0x30, _AES256_CBC + tlv(0x04, iv))
    algorithm = tlv(0x30, _PBES2 + tlv(0x30, kdf + scheme))
    return tlv(0x30, algorithm + tlv(0x04, ciphertext))
