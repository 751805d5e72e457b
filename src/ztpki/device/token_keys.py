"""Device keys in a PKCS#11 token: the patent's tamper-resistant device memory.

A device loaded with ``ztpki factory load --token URI`` keeps its keys as objects in that
token (generated there, private, sensitive, never extractable); its device memory holds the
key's PKCS#11 URI where a file device holds the encrypted PKCS#8 key. The URI names a token
and a key object, never a PIN: the module and PIN come as for a CA's token key
(ZTPKI_PKCS11_MODULE / ZTPKI_PKCS11_PIN, or the URI's module-path / pin-source).

``TokenDeviceKey`` is an ``ec.EllipticCurvePrivateKey`` whose ``sign`` runs in the token, so
the CMP client's protection, POPO and certConf signatures go through the token unchanged.
What needs the key's value refuses with :class:`KeyInToken`: ``device export``, and TLS
client authentication (Python's ssl takes a client key only from a file), which is why such
a device enrolls over CMP, where the message signature authenticates it.

Key objects are labelled ``ztpki-device-<device id>-<random>``. The identity swap stays one
rename of identity.json: the new object exists before it, and objects the memory no longer
names are destroyed only after the node confirmed the new identity (:func:`retire_keys`).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    KeySerializationEncryption,
    PrivateFormat,
)
from pkcs11 import Attribute, ObjectClass

from ztpki.device.key_store import KEY_TOKEN
from ztpki.errors import ConfigurationError, UnsupportedParameter
from ztpki.pki.keys import KeySpec
from ztpki.pki.pkcs11_uri import SCHEME, Pkcs11Uri
from ztpki.tokens.access import token_access
from ztpki.tokens.pool import TokenPool
from ztpki.tokens.token_key import TokenKey, generate_token_key

__all__ = [
    "CURVES",
    "LABEL_PREFIX",
    "KeyInToken",
    "TokenDeviceKey",
    "is_token_reference",
    "load_token_key",
    "new_token_key",
    "pool_for",
    "retire_keys",
    "token_of",
]

log = logging.getLogger(__name__)

LABEL_PREFIX = "ztpki-device-"
CURVES = {"secp256r1": KeySpec.EC_P256, "secp384r1": KeySpec.EC_P384}

_pools: dict[tuple[str, str], TokenPool] = {}
_pools_lock = threading.Lock()


class KeyInToken(UnsupportedParameter):
    """The operation needs the key's value, which never leaves the device's token."""


def pool_for(token: Pkcs11Uri) -> TokenPool:
    access = token_access(token)
    cache_key = (access.module, token.with_object("-").text)
    with _pools_lock:
        pool = _pools.get(cache_key)
        if pool is None:
            pool = _pools[cache_key] = TokenPool(access, token, size=1)
        return pool


class TokenDeviceKey(ec.EllipticCurvePrivateKey):
    """An EC device key in a token, usable where the CMP client takes a private key."""

    def __init__(self, key: TokenKey) -> None:
        self._key = key
        public = key.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise UnsupportedParameter(
                f"the device key at {key.location} is RSA; a device key in a token is EC "
                "(ec-p256 or ec-p384)"
            )
        self._public = public

    @property
    def uri(self) -> str:
        """Where the key lives: the PKCS#11 URI the device memory stores (no PIN)."""
        return self._key.location

    def __repr__(self) -> str:
        return f"TokenDeviceKey({self.uri!r})"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def sign(
        self, data: bytes | Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        algorithm = getattr(signature_algorithm, "algorithm", None)
        if not isinstance(signature_algorithm, ec.ECDSA) or not isinstance(
            algorithm, hashes.SHA256 | hashes.SHA384
        ):
            raise UnsupportedParameter("a device key in a token signs ECDSA with SHA-256/384")
        return self._key.sign(bytes(data), algorithm)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        self._refuse("key agreement")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        self._refuse("reading the private value")

    def private_bytes(
        self,
        encoding: Encoding,
        format: PrivateFormat,
        encryption_algorithm: KeySerializationEncryption,
    ) -> bytes:
        self._refuse("writing the key to a file")

    def __copy__(self) -> TokenDeviceKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenDeviceKey:
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenDeviceKey) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def _refuse(self, what: str) -> NoReturn:
        raise KeyInToken(
            f"the device key is in the PKCS#11 token ({self.uri}) and never leaves it: "
            f"{what} is not possible. `ztpki device export` cannot write it, and EST cannot "
            "use it (Python's TLS takes a client key only from a file): this device enrolls "
            "over CMP, `ztpki device activate --protocol cmp --key-on-device`"
        )


def is_token_reference(text: str) -> bool:
    """Whether a stored key is a token reference (a PKCS#11 URI), not a PKCS#8 PEM."""
    return text.lstrip().lower().startswith(SCHEME)


def load_token_key(text: str) -> TokenDeviceKey:
    """The device key the stored URI names; ConfigurationError when it cannot be reached."""
    uri = Pkcs11Uri.parse(text.strip()).require_key()
    return TokenDeviceKey(TokenKey(pool_for(uri), uri))


def token_of(config: dict[str, Any]) -> Pkcs11Uri | None:
    """The token a device's keys live in (its configuration's ``key_token``), if any."""
    value = config.get(KEY_TOKEN)
    if not isinstance(value, str) or not value:
        return None
    uri = Pkcs11Uri.parse(value)
    if uri.token is None and uri.serial is None and uri.slot_id is None:
        raise ConfigurationError(f"{KEY_TOKEN} {value!r} names no token (token=LABEL)")
    return uri


def new_token_key(token: Pkcs11Uri, device_id: str, spec: KeySpec) -> TokenDeviceKey:
    """A new key pair generated in ``token`` for ``device_id``: a fresh object, so the key of
    the current identity stays untouched until the swap is confirmed."""
    if spec not in CURVES.values():
        raise UnsupportedParameter(
            f"a device key in a token is ec-p256 or ec-p384, not {spec.value}; "
            "choose one with --key-algorithm"
        )
    suffix = os.urandom(6).hex()
    uri = Pkcs11Uri(**{**token.with_object(f"{LABEL_PREFIX}{device_id}-{suffix}").__dict__})
    uri = Pkcs11Uri(**{**uri.__dict__, "id": bytes.fromhex(suffix)})
    return TokenDeviceKey(generate_token_key(pool_for(token), uri, spec))


def retire_keys(token: Pkcs11Uri, device_id: str, keep: set[str]) -> list[str]:
    """Destroy this device's key objects in ``token`` other than those named in ``keep``
    (URIs); the labels destroyed. Run once the node has confirmed the current identity."""
    kept_ids = set()
    for text in keep:
        if is_token_reference(text):
            kept_ids.add(Pkcs11Uri.parse(text.strip()).id)
    prefix = f"{LABEL_PREFIX}{device_id}-"
    destroyed: list[str] = []
    with pool_for(token).session(rw=True) as pooled:
        session = pooled.session
        for kind in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            for obj in list(session.get_objects({Attribute.CLASS: kind})):
                label = obj[Attribute.LABEL]
                if not label.startswith(prefix) or obj[Attribute.ID] in kept_ids:
                    continue
                obj.destroy()
                if kind is ObjectClass.PRIVATE_KEY:
                    destroyed.append(label)
        pooled.found.clear()  # handles of destroyed objects must not be used again
    if destroyed:
        log.info("device %s: destroyed retired token keys %s", device_id, destroyed)
    return destroyed
