"""CA keys that live in a PKCS#11 token: where each one is recorded, and how it is opened.

A token-backed CA has no ca.key.pem; its directory holds ``key.toml`` instead::

    pkcs11 = "pkcs11:token=factory;object=factory-ca;id=%A1..."   # never a PIN
    module = "/usr/lib/softhsm/libsofthsm2.so"                   # as given at `ca init`
    rsa_pss = false

At start the module is ``--pkcs11-module``, else ZTPKI_PKCS11_MODULE, else the recorded one;
the PIN is ZTPKI_PKCS11_PIN or ``--pkcs11-pin-file``. CAs in the same token share one
session pool.
"""

from __future__ import annotations

import os
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from ztpki.errors import ConfigurationError, MalformedInput
from ztpki.pki.keys import KeySpec
from ztpki.pki.pkcs11_uri import Pkcs11Uri
from ztpki.secretfiles import write_public_file
from ztpki.tokens.access import DEFAULT_POOL_SIZE, MODULE_ENV, token_access

if TYPE_CHECKING:  # the binding loads only when a CA's key is in a token
    from ztpki.tokens import TokenKey, TokenPool

KEY_FILE = "key.toml"


@dataclass(frozen=True)
class TokenOptions:
    """How to reach tokens, from the command line (None: the environment decides)."""

    module: str | None = None
    pin_file: Path | None = None
    pool_size: int = DEFAULT_POOL_SIZE


_pools: dict[tuple[str, str], TokenPool] = {}
_pools_lock = threading.Lock()


def token_pool(uri: Pkcs11Uri, options: TokenOptions) -> TokenPool:
    """The process's session pool for the token ``uri`` names (shared by its CAs)."""
    from ztpki.tokens import TokenPool

    access = token_access(uri, module=options.module, pin_file=options.pin_file)
    token = Pkcs11Uri(token=uri.token, serial=uri.serial, slot_id=uri.slot_id).text
    with _pools_lock:
        pool = _pools.get((access.module, token))
        if pool is None:
            pool = TokenPool(access, uri, size=options.pool_size)
            _pools[access.module, token] = pool
        return pool


def parse_key_uri(text: str) -> Pkcs11Uri:
    """A URI naming one private key; ConfigurationError (for the command line) when not."""
    try:
        return Pkcs11Uri.parse(text).require_key()
    except MalformedInput as exc:
        raise ConfigurationError(f"--pkcs11: {exc.message}") from None


def create_token_key(
    uri: Pkcs11Uri,
    options: TokenOptions,
    *,
    key_spec: KeySpec | None,
    rsa_pss: bool,
) -> TokenKey:
    """A CA key in the token: generated there (``key_spec``), or the existing key object the
    URI names (``key_spec`` None), checked to be there and usable."""
    from ztpki.tokens import TokenKey, TokenUnavailable, generate_token_key

    pool = token_pool(uri, options)
    key = (
        generate_token_key(pool, uri, key_spec, rsa_pss=rsa_pss)
        if key_spec is not None
        else TokenKey(pool, uri, rsa_pss=rsa_pss)
    )
    try:
        key.public_key()  # opens the session and finds the key: a wrong URI fails here
    except TokenUnavailable as exc:
        raise ConfigurationError(
            f"no usable key at {uri.text} ({exc.message}); list what the token holds with "
            "`pkcs11-tool --module MODULE --token-label LABEL --login --list-objects`"
        ) from None
    return key


def record_token_key(ca_dir: Path, key: TokenKey) -> None:
    """Write key.toml: where the CA's key lives (the URI, the module; no PIN)."""
    module = key.pool.module_path
    text = tomli_w.dumps({"pkcs11": key.location, "module": module, "rsa_pss": key.rsa_pss})
    header = "# Where this private key lives: a PKCS#11 token. No key file exists.\n"
    write_public_file(ca_dir / KEY_FILE, (header + text).encode())


def recorded_location(ca_dir: Path) -> str | None:
    """The URI of a token-backed CA's key, or None for a key file."""
    data = _read(ca_dir)
    return None if data is None else str(data["pkcs11"])


def load_token_key(ca_dir: Path, options: TokenOptions) -> TokenKey | None:
    """The CA's token key, ready to sign, or None when the CA keeps its key in a file."""
    data = _read(ca_dir)
    if data is None:
        return None
    uri = parse_key_uri(str(data["pkcs11"]))
    from ztpki.tokens import TokenKey

    recorded = str(data.get("module") or "") or None
    module = options.module or (None if os.environ.get(MODULE_ENV) else recorded)
    chosen = TokenOptions(module=module, pin_file=options.pin_file, pool_size=options.pool_size)
    key = TokenKey(token_pool(uri, chosen), uri, rsa_pss=bool(data.get("rsa_pss", False)))
    key.public_key()  # the token is reachable and the key is there, or the start fails now
    return key


def _read(ca_dir: Path) -> dict[str, object] | None:
    path = ca_dir / KEY_FILE
    if not path.exists():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        raise ConfigurationError(f"{path} is unreadable or not TOML") from None
    if not isinstance(data.get("pkcs11"), str):
        raise ConfigurationError(f"{path} names no pkcs11 URI")
    return data
