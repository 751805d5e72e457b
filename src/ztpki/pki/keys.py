"""Key specifications, key generation and PKCS#8 encoding."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ztpki.errors import MalformedInput, UnsupportedParameter
from ztpki.pki.pbes2 import encrypt_pkcs8_der
from ztpki.pki.pem import pem_armor

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class KeySpec(StrEnum):
    """The key algorithms ztpki issues certificates for, by their wire names."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ED25519 = "ed25519"

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        try:
            return cls(text.strip().lower())
        except ValueError:
            allowed = ", ".join(s.value for s in cls)
            raise UnsupportedParameter(
                f"unknown key algorithm {text!r}; use one of: {allowed}"
            ) from None

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa-")


_CURVES: dict[KeySpec, ec.EllipticCurve] = {
    KeySpec.EC_P256: ec.SECP256R1(),
    KeySpec.EC_P384: ec.SECP384R1(),
}
_RSA_BITS = {KeySpec.RSA_2048: 2048, KeySpec.RSA_3072: 3072, KeySpec.RSA_4096: 4096}


def generate_private_key(spec: KeySpec) -> PrivateKey:
    """Generate a new private key. RSA is slow (50 ms+): callers run it off the event loop."""
    if spec in _CURVES:
        return ec.generate_private_key(_CURVES[spec])
    if spec in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[spec])
    return ed25519.Ed25519PrivateKey.generate()


def key_spec_of(key: PublicKey | PrivateKey | object) -> KeySpec:
    """The KeySpec of a public or private key; UnsupportedParameter for anything else."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        for spec, curve in _CURVES.items():
            if key.curve.name == curve.name:
                return spec
        raise UnsupportedParameter(f"elliptic curve {key.curve.name} is not supported")
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        for spec, bits in _RSA_BITS.items():
            if key.key_size == bits:
                return spec
        raise UnsupportedParameter(f"RSA key size {key.key_size} is not supported")
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return KeySpec.ED25519
    raise UnsupportedParameter(f"key type {type(key).__name__} is not supported")


class _HasPublicKey(Protocol):
    def public_key(self) -> PublicKey: ...


def signature_hash(key: _HasPublicKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The digest a CA with this key signs with (None for Ed25519, which hashes itself).

    Decided from the public key, so a key held in a token answers the same as a file key.
    """
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        return None
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def public_key_der(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo DER: the canonical form to compare public keys."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def keys_match(private_key: _HasPublicKey, public_key: object) -> bool:
    """True when the public key belongs to the private key."""
    if not isinstance(
        public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    ):
        return False
    return public_key_der(private_key.public_key()) == public_key_der(public_key)


def _encryption(passphrase: bytes | None) -> serialization.KeySerializationEncryption:
    if passphrase:
        return serialization.BestAvailableEncryption(passphrase)
    return serialization.NoEncryption()


def encode_pkcs8(key: PrivateKey, *, passphrase: bytes | None) -> bytes:
    """PKCS#8 DER; encrypted (PBES2/AES-256) when a passphrase is given."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, _encryption(passphrase)
    )


def encode_pkcs8_pem(
    key: PrivateKey, *, passphrase: bytes | None, kdf_rounds: int | None = None
) -> bytes:
    """PKCS#8 PEM; encrypted when a passphrase is given.

    ``kdf_rounds`` sets the PBKDF2-HMAC-SHA256 work factor (pbes2.AT_REST_KDF_ROUNDS for keys
    kept on disk for years); without it cryptography's default applies (2048 rounds), which
    suits keys under one-time random passwords and keys loaded per request.
    """
    if passphrase and kdf_rounds is not None:
        der = encrypt_pkcs8_der(encode_pkcs8(key, passphrase=None), passphrase, rounds=kdf_rounds)
        return pem_armor("ENCRYPTED PRIVATE KEY", der)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(passphrase)
    )


def _checked(key: object) -> PrivateKey:
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise UnsupportedParameter(f"private key type {type(key).__name__} is not supported")
    return key


def decode_pkcs8(
    data: bytes, *, passphrase: bytes | None, self_generated: bool = False
) -> PrivateKey:
    """Load a PKCS#8 private key from DER or PEM; MalformedInput if it does not load.

    ``self_generated`` skips RSA's expensive consistency check (about 50 ms) for keys this
    process family generated itself a moment ago. The message never repeats the key bytes
    or the passphrase.
    """
    skip = self_generated
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(
                data, password=passphrase, unsafe_skip_rsa_key_validation=skip
            )
        else:
            key = serialization.load_der_private_key(
                data, password=passphrase, unsafe_skip_rsa_key_validation=skip
            )
    except TypeError as exc:
        # Raised for "password given but key not encrypted" and the reverse.
        raise MalformedInput(f"private key encryption does not match: {exc}") from None
    except ValueError:
        raise MalformedInput(
            "private key does not load: not PKCS#8, corrupt, or the passphrase is wrong"
        ) from None
    except Exception:
        raise MalformedInput("private key does not load: unsupported algorithm") from None
    return _checked(key)
