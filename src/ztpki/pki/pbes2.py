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
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280, rfc5958, rfc8018

from ztpki.pki.asn1 import encode_der

# Work factor of keys at rest: about 45 ms per load on a current server core, paid once when
# a service starts or a CA is used from the command line (OWASP asks for 600,000 for
# PBKDF2-HMAC-SHA256 password hashes; a CA key's passphrase is also never sent anywhere).
AT_REST_KDF_ROUNDS = 300_000


def _algorithm(oid: univ.ObjectIdentifier, parameters: object) -> rfc5280.AlgorithmIdentifier:
    """An AlgorithmIdentifier whose parameters are the DER of a pyasn1 value."""
    algorithm = rfc5280.AlgorithmIdentifier()
    algorithm["algorithm"] = oid
    algorithm["parameters"] = univ.Any(encode_der(parameters))
    return algorithm


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

    kdf_params = rfc8018.PBKDF2_params()
    kdf_params["salt"]["specified"] = salt
    kdf_params["iterationCount"] = rounds
    kdf_params["keyLength"] = 32
    # Written out although HMAC-SHA256 is not the DEFAULT (HMAC-SHA1): readers must not guess.
    kdf_params["prf"] = _algorithm(rfc8018.id_hmacWithSHA256, univ.Null(""))
    scheme = rfc8018.PBES2_params()
    scheme["keyDerivationFunc"] = _algorithm(rfc8018.id_PBKDF2, kdf_params)
    scheme["encryptionScheme"] = _algorithm(rfc8018.aes256_CBC_PAD, rfc8018.AES_IV(iv))
    info = rfc5958.EncryptedPrivateKeyInfo()
    info["encryptionAlgorithm"]["algorithm"] = rfc8018.id_PBES2
    info["encryptionAlgorithm"]["parameters"] = univ.Any(encode_der(scheme))
    info["encryptedData"] = ciphertext
    return encode_der(info)
