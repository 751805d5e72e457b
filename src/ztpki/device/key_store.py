"""How the device memory stores a key: encrypted PKCS#8 for a key in the memory, the PKCS#11
URI for a key in the device's token (``ztpki.device.token_keys``).

The token module is imported only for a device that has a token key, so file devices (and
every command that never meets one) start without loading the PKCS#11 binding.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ztpki.errors import ConfigurationError, UnsupportedParameter
from ztpki.pki.keys import KeySpec, PrivateKey, decode_pkcs8, encode_pkcs8_pem, generate_private_key

if TYPE_CHECKING:
    from ztpki.device.memory import DeviceMemory

__all__ = [
    "KEY_TOKEN",
    "check_token_enrollment",
    "decode_device_key",
    "encode_device_key",
    "key_token",
    "new_device_key",
    "refuse_token_export",
    "retire_unused_keys",
    "tls_key",
    "token_uri_of",
]

# In the device configuration: the token URI the device's keys live in (not a secret).
KEY_TOKEN = "key_token"  # noqa: S105

_TOKEN_MODULE = "ztpki.device.token_keys"  # noqa: S105 - a module name


def token_uri_of(key: PrivateKey) -> str | None:
    """The URI of a token key; None for a key held in this process."""
    module = sys.modules.get(_TOKEN_MODULE)  # not imported: no token key can exist yet
    if module is None or not isinstance(key, module.TokenDeviceKey):
        return None
    uri: str = key.uri
    return uri


def tls_key(key: PrivateKey) -> PrivateKey | None:
    """The key to present in TLS: none for a token key, which cannot be handed to Python's
    ssl; over CMP the message signature (made in the token) authenticates the device."""
    return None if token_uri_of(key) is not None else key


def encode_device_key(key: PrivateKey, secret: bytes) -> bytes:
    """What the memory stores for ``key``."""
    uri = token_uri_of(key)
    if uri is not None:
        return uri.encode("ascii") + b"\n"
    return encode_pkcs8_pem(key, passphrase=secret)


def decode_device_key(data: bytes, secret: bytes) -> PrivateKey:
    """The key stored as ``data``; a token key is looked up in its token (ZtpkiError when the
    token or the key cannot be reached), a PKCS#8 one decrypted with ``secret``."""
    if data.lstrip().lower().startswith(b"pkcs11:"):
        from ztpki.device.token_keys import load_token_key

        return load_token_key(data.decode("ascii"))
    return decode_pkcs8(data, passphrase=secret)


def key_token(memory: DeviceMemory) -> str | None:
    """The token URI the device keeps its keys in (``factory load --token``), or None."""
    value = memory.config().get(KEY_TOKEN)
    return value if isinstance(value, str) and value else None


def check_token_enrollment(memory: DeviceMemory, *, cmp: bool, key_on_device: bool = True) -> None:
    """ConfigurationError, before anything is sent, when a device with its keys in a token
    is asked to enroll in a way that cannot keep the new key there."""
    token = key_token(memory)
    if token is None:
        return
    if not cmp:
        raise ConfigurationError(
            f"this device's key is in the PKCS#11 token {token}, and EST authenticates a device "
            "by its TLS client key, which Python's TLS takes only from a file: use CMP, whose "
            "message signature is made in the token: --protocol cmp"
        )
    if not key_on_device:
        raise ConfigurationError(
            f"this device keeps its keys in the PKCS#11 token {token}: a key the customer CA "
            "generated would live outside it; add --key-on-device (the key is made in the token)"
        )


def refuse_token_export(memory: DeviceMemory) -> None:
    """UnsupportedParameter when the device's keys are in a token: they never leave it."""
    token = key_token(memory)
    if token is not None:
        raise UnsupportedParameter(
            f"the device's key is in the PKCS#11 token {token} and never leaves it: there is "
            "no key.pem to export (the certificates are in `ztpki device show`)"
        )


def new_device_key(
    memory: DeviceMemory, spec: KeySpec, *, station_token: str | None = None
) -> PrivateKey:
    """A new key for the device: generated in its token when it has one (or, given a
    ``station_token``, in that one and unwrapped into the device's), else here."""
    if key_token(memory) is None:
        return generate_private_key(spec)
    from ztpki.device.token_keys import new_token_key, token_of

    token = token_of(memory.config())
    assert token is not None
    if station_token is not None:
        from ztpki.device.token_wrap import station_generated_key
        from ztpki.pki.pkcs11_uri import Pkcs11Uri

        return station_generated_key(Pkcs11Uri.parse(station_token), token, memory.device_id, spec)
    return new_token_key(token, memory.device_id, spec)


def retire_unused_keys(memory: DeviceMemory) -> list[str]:
    """Destroy the token key objects the memory no longer names (none for a file device).

    Called once the node confirmed the identity in the memory: until then a crash leaves the
    objects, and the next confirmation destroys them."""
    if key_token(memory) is None:
        return []
    from ztpki.device.token_keys import retire_keys, token_of

    token = token_of(memory.config())
    assert token is not None
    return retire_keys(token, memory.device_id, memory.stored_keys())
