"""Which PKCS#11 module to load and which PIN to log in with, for one key URI.

This module does not import the PKCS#11 binding, so commands that only name a token (or
none) start without loading it.

The module comes from ``--pkcs11-module``, then ZTPKI_PKCS11_MODULE, then the URI's own
``module-path``. The PIN comes from a file (``--pkcs11-pin-file``, or the URI's
``pin-source``), else ZTPKI_PKCS11_PIN. The PIN is held in a field that never prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ztpki.errors import ConfigurationError
from ztpki.pki.pkcs11_uri import Pkcs11Uri

# A CA system signs on its event loop and in its worker threads: a handful at a time.
DEFAULT_POOL_SIZE = 8
MODULE_ENV = "ZTPKI_PKCS11_MODULE"
PIN_ENV = "ZTPKI_PKCS11_PIN"


@dataclass(frozen=True)
class TokenAccess:
    """A loadable module and the user PIN of the token a key lives in."""

    module: str
    pin: bytes = field(repr=False)


def token_access(
    uri: Pkcs11Uri, *, module: str | None = None, pin_file: Path | None = None
) -> TokenAccess:
    """The module and PIN for ``uri``; ConfigurationError saying what to set when one is missing."""
    chosen = module or os.environ.get(MODULE_ENV) or uri.module_path
    if not chosen:
        raise ConfigurationError(
            f"no PKCS#11 module for {uri.text}: give --pkcs11-module PATH or set {MODULE_ENV} "
            "(SoftHSM: /usr/lib/softhsm/libsofthsm2.so)"
        )
    if not Path(chosen).is_file():
        raise ConfigurationError(f"PKCS#11 module {chosen} does not exist")
    return TokenAccess(module=chosen, pin=_pin(uri, pin_file))


def _pin(uri: Pkcs11Uri, pin_file: Path | None) -> bytes:
    source = pin_file
    if source is None and uri.pin_source is not None:
        source = Path(uri.pin_source.removeprefix("file:"))
    if source is not None:
        try:
            pin = source.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigurationError(f"cannot read PIN file {source}: {exc.strerror}") from None
    else:
        pin = os.environ.get(PIN_ENV, "").encode()
    if not pin:
        raise ConfigurationError(
            f"the token of {uri.text} needs its user PIN: set {PIN_ENV} or give "
            "--pkcs11-pin-file FILE"
        )
    return pin
