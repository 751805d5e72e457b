"""A token key as the TLS client key of a Python ``ssl.SSLContext`` (README: Keys in hardware).

Python's ssl loads a private key only from a file. This module gives the context's SSL_CTX
an EC key whose signing method calls back into ztpki's own PKCS#11 session pool, through
ctypes against the very libssl/libcrypto ``_ssl`` runs on. So the handshake signature is
made in the token by the same binding, PIN and session pool as every other token
signature of the process: no second PKCS#11 stack loads the module beside python-pkcs11
(libp11's engine would, and the two would race on a module initialized without locking).

The SSL_CTX pointer is read from the ``SSLContext`` object (CPython keeps it right after
the object header) and proven to be that context's before anything is installed: an option
flipped through Python must show through OpenSSL, and back. Any mismatch (another Python,
another OpenSSL) is a ConfigurationError, never a write to a wrong address.

Only EC keys (P-256, P-384: what `ztpki ca add-client` makes) are supported: an RSA key
would need the token's raw RSA mechanism for TLS 1.3's PSS, which smart cards often lack.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl
import sys
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ztpki.errors import ConfigurationError, ZtpkiError
from ztpki.tokens.token_key import TokenKey

log = logging.getLogger(__name__)

_P = ctypes.c_void_p
_SIGN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_int, _P, ctypes.c_int, _P, ctypes.POINTER(ctypes.c_uint), _P, _P, _P
)
_SIGN_SETUP = ctypes.CFUNCTYPE(ctypes.c_int, _P, _P, _P, _P)
_SIGN_SIG = ctypes.CFUNCTYPE(_P, _P, ctypes.c_int, _P, _P, _P)


class _OpenSSL:
    """libssl and libcrypto as ``_ssl`` loaded them, with the few functions used here."""

    def __init__(self) -> None:
        self.ssl = ctypes.CDLL(_loaded("libssl"))
        self.crypto = ctypes.CDLL(_loaded("libcrypto"))
        self.crypto.OpenSSL_version_num.restype = ctypes.c_ulong
        if self.crypto.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            raise ConfigurationError(
                "a CA-client key in a token needs the OpenSSL Python's ssl module runs on; "
                "another one was found"
            )
        c, s = self.crypto, self.ssl
        for lib, name, restype, argtypes in (
            (s, "SSL_CTX_get_options", ctypes.c_uint64, [_P]),
            (s, "SSL_CTX_use_certificate", ctypes.c_int, [_P, _P]),
            (s, "SSL_CTX_ctrl", ctypes.c_long, [_P, ctypes.c_int, ctypes.c_long, _P]),
            (s, "SSL_CTX_use_PrivateKey", ctypes.c_int, [_P, _P]),
            (s, "SSL_CTX_check_private_key", ctypes.c_int, [_P]),
            (c, "d2i_X509", _P, [_P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
            (c, "X509_free", None, [_P]),
            (c, "d2i_EC_PUBKEY", _P, [_P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
            (c, "d2i_ECDSA_SIG", _P, [_P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
            (c, "EC_KEY_OpenSSL", _P, []),
            (c, "EC_KEY_METHOD_new", _P, [_P]),
            (c, "EC_KEY_METHOD_get_sign", None, [_P, _P, _P, _P]),
            (c, "EC_KEY_METHOD_set_sign", None, [_P, _SIGN, _P, _SIGN_SIG]),
            (c, "EC_KEY_set_method", ctypes.c_int, [_P, _P]),
            (c, "EC_KEY_free", None, [_P]),
            (c, "EVP_PKEY_new", _P, []),
            (c, "EVP_PKEY_set1_EC_KEY", ctypes.c_int, [_P, _P]),
            (c, "EVP_PKEY_free", None, [_P]),
            (c, "ERR_clear_error", None, []),
            (c, "ERR_set_mark", ctypes.c_int, []),
            (c, "ERR_pop_to_mark", ctypes.c_int, []),
        ):
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
        # One method for every token key of the process: its sign calls find the key by the
        # EC_KEY they are handed.
        self.method = c.EC_KEY_METHOD_new(c.EC_KEY_OpenSSL())
        setup = _P()
        c.EC_KEY_METHOD_get_sign(self.method, None, ctypes.byref(setup), None)
        c.EC_KEY_METHOD_set_sign(self.method, _sign_callback, setup, _sign_sig_callback)


def _loaded(stem: str) -> str:
    """The path of the library ``_ssl`` linked, as the process mapped it (``_ssl`` is
    imported above, so both are mapped)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        raise ConfigurationError(
            f"a CA-client key in a token needs Linux's /proc to find {stem} ({sys.platform})"
        )
    for line in maps.read_text().splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if Path(path).name.startswith(f"{stem}.so"):
            return path
    raise ConfigurationError(
        f"Python's ssl module is not linked against a shared {stem}: a CA-client key in a "
        "token needs one"
    )


_openssl: _OpenSSL | None = None
_openssl_lock = threading.Lock()
# EC_KEY address -> the token key that signs for it. Entries stay: the EC_KEYs are never
# freed, so an address is never reused for another key.
_signers: dict[int, _Signer] = {}
_contexts: weakref.WeakKeyDictionary[ssl.SSLContext, _Signer] = weakref.WeakKeyDictionary()


class _Signer:
    """One token key as OpenSSL's sign callbacks see it; keeps the last failure."""

    def __init__(self, key: TokenKey) -> None:
        self.key = key
        self.failure: ZtpkiError | None = None

    def der_signature(self, digest: bytes) -> bytes:
        # The token's library may use this process's OpenSSL too (SoftHSM does, and leaves
        # errors in the thread's queue when it initializes again): whatever it queued is
        # dropped, or OpenSSL would take it for a failure of this connection later on.
        assert _openssl is not None
        _openssl.crypto.ERR_set_mark()
        try:
            signature = self.key.sign_digest(digest)
        except ZtpkiError as exc:
            self.failure = exc
            raise
        finally:
            _openssl.crypto.ERR_pop_to_mark()
        self.failure = None
        return signature


def _openssl_once() -> _OpenSSL:
    global _openssl
    with _openssl_lock:
        if _openssl is None:
            _openssl = _OpenSSL()
        return _openssl


def _log_failure(exc: Exception) -> None:
    if isinstance(exc, ZtpkiError):  # the token's own words: never a PIN or key material
        log.warning("the token did not sign a TLS handshake: %s", exc.message)
    else:
        log.error("signing a TLS handshake in the token failed", exc_info=True)


def _sign(
    _type: int, dgst: int, dlen: int, sig: int, siglen: object, _kinv: int, _r: int, eckey: int
) -> int:
    # Called inside SSL_do_handshake, GIL taken by ctypes. An exception must not cross
    # into C: the handshake fails instead, and _Signer.failure says why.
    try:
        signer = _signers[eckey]
        signature = signer.der_signature(ctypes.string_at(dgst, dlen))
        ctypes.memmove(sig, signature, len(signature))
        siglen[0] = len(signature)  # type: ignore[index]
        return 1
    except Exception as exc:
        _log_failure(exc)
        return 0


def _sign_sig(dgst: int, dlen: int, _kinv: int, _r: int, eckey: int) -> int | None:
    try:
        signature = _signers[eckey].der_signature(ctypes.string_at(dgst, dlen))
    except Exception as exc:
        _log_failure(exc)
        return None
    assert _openssl is not None
    data = ctypes.c_char_p(signature)
    result: int | None = _openssl.crypto.d2i_ECDSA_SIG(None, ctypes.byref(data), len(signature))
    return result


# Module globals: OpenSSL keeps the function pointers for the life of the process.
_sign_callback = _SIGN(_sign)
_sign_sig_callback = _SIGN_SIG(_sign_sig)


def _ssl_ctx(openssl: _OpenSSL, context: ssl.SSLContext) -> int:
    """The SSL_CTX* of ``context``, proven to be its own."""
    # CPython's PySSLContext starts with the object header, then SSL_CTX *ctx. Only a real
    # _ssl context on CPython is read at all: anything else would be read at random.
    if sys.implementation.name != "cpython" or not isinstance(context, _ssl._SSLContext):
        raise ConfigurationError(
            "a CA-client key in a token needs CPython's own ssl module "
            f"({sys.implementation.name}, {type(context).__name__})"
        )
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise ConfigurationError("cannot reach the OpenSSL context of this Python's ssl module")
    before = context.options
    probe = ssl.OP_NO_TICKET
    try:
        seen = [openssl.ssl.SSL_CTX_get_options(pointer)]
        context.options = before ^ probe
        seen.append(openssl.ssl.SSL_CTX_get_options(pointer))
    finally:
        context.options = before
    if seen != [int(before), int(before ^ probe)]:
        raise ConfigurationError(
            "this Python's ssl module does not keep its OpenSSL context where expected: a "
            "CA-client key in a token cannot be used with it"
        )
    return pointer


def use_token_key(
    context: ssl.SSLContext, key: TokenKey, chain: Sequence[x509.Certificate]
) -> None:
    """Make ``context`` present ``chain`` and sign its handshakes with the token ``key``."""
    public = key.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ConfigurationError(
            f"the TLS key at {key.location} is RSA; a CA-client key in a token must be EC "
            "(P-256 or P-384, what `ztpki ca add-client --pkcs11` generates)"
        )
    openssl = _openssl_once()
    pointer = _ssl_ctx(openssl, context)
    c = openssl.crypto
    spki = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    data = ctypes.c_char_p(spki)
    eckey = c.d2i_EC_PUBKEY(None, ctypes.byref(data), len(spki))
    pkey = c.EVP_PKEY_new()
    # The method goes on before the EVP_PKEY is made: OpenSSL then marks the key foreign
    # and signs through the method instead of its own provider.
    if not eckey or not pkey or c.EC_KEY_set_method(eckey, openssl.method) != 1:
        raise ConfigurationError("OpenSSL refused the token key's public key")
    signer = _signers[eckey] = _Signer(key)
    _contexts[context] = signer
    try:
        if c.EVP_PKEY_set1_EC_KEY(pkey, eckey) != 1:
            raise ConfigurationError("OpenSSL refused the token key's public key")
        _install_chain(openssl, pointer, chain)
        # use_PrivateKey itself refuses a key that is not the certificate's.
        if (
            openssl.ssl.SSL_CTX_use_PrivateKey(pointer, pkey) != 1
            or openssl.ssl.SSL_CTX_check_private_key(pointer) != 1
        ):
            raise ConfigurationError(
                f"the token key at {key.location} does not belong to the credential's "
                "certificate (cert.pem)"
            )
    finally:
        c.ERR_clear_error()
        c.EVP_PKEY_free(pkey)  # the SSL_CTX holds its own reference


_SSL_CTRL_CHAIN_CERT = 89  # SSL_CTX_add1_chain_cert is this SSL_CTX_ctrl


def _install_chain(openssl: _OpenSSL, pointer: int, chain: Sequence[x509.Certificate]) -> None:
    for position, certificate in enumerate(chain):
        der = certificate.public_bytes(Encoding.DER)
        data = ctypes.c_char_p(der)
        cert = openssl.crypto.d2i_X509(None, ctypes.byref(data), len(der))
        if not cert:
            raise ConfigurationError("OpenSSL refused the credential's certificate")
        try:
            if position == 0:
                done = openssl.ssl.SSL_CTX_use_certificate(pointer, cert)
            else:
                done = openssl.ssl.SSL_CTX_ctrl(pointer, _SSL_CTRL_CHAIN_CERT, 1, cert)
        finally:
            openssl.crypto.X509_free(cert)  # use_certificate and add1 take references
        if done != 1:
            raise ConfigurationError("OpenSSL refused the credential's certificate chain")


def token_failure(context: ssl.SSLContext) -> ZtpkiError | None:
    """Why the token failed to sign ``context``'s last handshake, if it did (a handshake
    the token refused reads as a plain TLS failure otherwise)."""
    signer = _contexts.get(context)
    return None if signer is None else signer.failure
