"""Keys in PKCS#11 tokens (HSMs, smart cards, SoftHSM): the I/O edge behind
``pki.signer.ExternalKey``. Nothing in pki/ or protocol/ imports this package; code on
every command's path imports ``ztpki.tokens.access`` only (the binding loads on first use)."""

from ztpki.tokens.access import DEFAULT_POOL_SIZE, MODULE_ENV, PIN_ENV, TokenAccess, token_access
from ztpki.tokens.pool import TokenPool, TokenUnavailable
from ztpki.tokens.token_key import TokenKey, generate_token_key

__all__ = [
    "DEFAULT_POOL_SIZE",
    "MODULE_ENV",
    "PIN_ENV",
    "TokenAccess",
    "TokenKey",
    "TokenPool",
    "TokenUnavailable",
    "generate_token_key",
    "token_access",
]
