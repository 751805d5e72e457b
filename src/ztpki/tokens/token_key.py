"""A private key that lives in a PKCS#11 token: generated there, found there, signing there.

``TokenKey`` is a ``pki.signer.ExternalKey``: the CA's builders hand it the to-be-signed
bytes and get the X.509 signature back. The key is generated non-extractable and sensitive
(CKA_EXTRACTABLE false, CKA_SENSITIVE true, CKA_PRIVATE true): no command of the token
gives out its value, not even wrapped.

Mechanisms are detected once per key, not assumed per token: a token with CKM_ECDSA_SHA256
hashes and signs in one call; one without (SoftHSM 2.6) gets the digest from this process
and signs it with plain CKM_ECDSA. RSA likewise falls back from CKM_SHA256_RSA_PKCS(_PSS)
to the raw mechanism over the digest.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.types import PublicKey as TokenPublicKey
from pkcs11.types import SignMixin
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from ztpki.errors import ConfigurationError, UnsupportedParameter
from ztpki.pki.keys import KeySpec, PublicKey
from ztpki.pki.pkcs11_uri import Pkcs11Uri
from ztpki.pki.signer import SignatureHash
from ztpki.tokens.pool import PooledSession, TokenPool

# A signature that returns within this many seconds blocks an event loop for less than the
# hop to a worker thread would cost it: SoftHSM and a local HSM, not a network HSM or a
# smart card (tens of milliseconds).
QUICK = 0.002
_CURVES = {KeySpec.EC_P256: "secp256r1", KeySpec.EC_P384: "secp384r1"}
_RSA_BITS = {KeySpec.RSA_2048: 2048, KeySpec.RSA_3072: 3072}
# DER DigestInfo prefixes (RFC 8017 9.2 note 1), for tokens without the hash-and-sign mechanism.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
}
_COMBINED = {
    ("ec", "sha256"): Mechanism.ECDSA_SHA256,
    ("ec", "sha384"): Mechanism.ECDSA_SHA384,
    ("rsa", "sha256"): Mechanism.SHA256_RSA_PKCS,
    ("rsa", "sha384"): Mechanism.SHA384_RSA_PKCS,
    ("pss", "sha256"): Mechanism.SHA256_RSA_PKCS_PSS,
    ("pss", "sha384"): Mechanism.SHA384_RSA_PKCS_PSS,
}
_RAW = {"ec": Mechanism.ECDSA, "rsa": Mechanism.RSA_PKCS, "pss": Mechanism.RSA_PKCS_PSS}
_PSS_PARAMS = {
    "sha256": (Mechanism.SHA256, pkcs11.MGF.SHA256, 32),
    "sha384": (Mechanism.SHA384, pkcs11.MGF.SHA384, 48),
}


# family ("ec", "rsa", "pss"), mechanism, its parameter, whether the mechanism hashes
_How = tuple[str, Mechanism, object, bool]


class TokenKey:
    """The private key ``uri`` names, in the token ``pool`` opens sessions on."""

    def __init__(self, pool: TokenPool, uri: Pkcs11Uri, *, rsa_pss: bool = False) -> None:
        self._pool = pool
        self._uri = uri.require_key()
        self._location = self._uri.text
        self._rsa_pss = rsa_pss
        self._public: PublicKey | None = None
        self._mechanisms: set[Mechanism] | None = None
        self._lock = threading.Lock()
        self._hows: dict[str, _How] = {}
        self._latency = math.inf  # seconds; inf: not known to be quick (none yet, or failed)
        self._previous = math.inf

    @property
    def location(self) -> str:
        return self._location

    @property
    def rsa_pss(self) -> bool:
        return self._rsa_pss

    @property
    def pool(self) -> TokenPool:
        return self._pool

    def public_key(self) -> PublicKey:
        if self._public is None:
            with self._pool.session() as pooled:
                public = _read_public_key(pooled, self._uri)
                self._mechanisms = set(pooled.session.token.slot.get_mechanisms())
            if self._rsa_pss and not isinstance(public, rsa.RSAPublicKey):
                raise ConfigurationError("RSA-PSS is for RSA keys; this token key is EC")
            self._public = public
        return self._public

    def sign(self, data: bytes, algorithm: SignatureHash) -> bytes:
        family, mechanism, param, combined = self._how(algorithm.name)
        if not combined:
            data = hashlib.new(algorithm.name, data).digest()
            if family == "rsa":
                data = _DIGEST_INFO[algorithm.name] + data
        started = time.perf_counter()
        self._latency = math.inf  # until this one is back: a token that hangs is not quick
        with self._pool.session() as pooled:
            raw = _private_key(pooled, self._uri).sign(
                data, mechanism=mechanism, mechanism_param=param
            )
        self._note(time.perf_counter() - started)
        return _dss(bytes(raw)) if family == "ec" else bytes(raw)

    @property
    def quick(self) -> bool:
        """Whether this key's recent signatures came back within QUICK seconds: then a
        service signs on its event loop, which costs less CPU than the hop to a thread."""
        return self._latency < QUICK

    def _note(self, elapsed: float) -> None:
        # A moving average: one slow signature (a busy HSM) sends the next ones to a thread
        # until the token has been quick again for a while.
        last = self._previous
        self._previous = self._latency = elapsed if last == math.inf else 0.8 * last + 0.2 * elapsed

    def _how(self, hash_name: str) -> _How:
        """How this key signs with ``hash_name``: its family, the mechanism (with
        parameters) and whether that mechanism hashes. Decided once per hash: the checks
        cost more than a signature's PKCS#11 call overhead when redone per call."""
        how = self._hows.get(hash_name)
        if how is None:
            public = self.public_key()
            family = "ec" if isinstance(public, ec.EllipticCurvePublicKey) else "rsa"
            if family == "rsa" and self._rsa_pss:
                family = "pss"
            combined = _COMBINED[family, hash_name]
            param = _PSS_PARAMS[hash_name] if family == "pss" else None
            if self._mechanisms is not None and combined in self._mechanisms:
                how = (family, combined, param, True)
            else:
                how = (family, _RAW[family], param, False)
            self._hows[hash_name] = how
        return how

    def sign_digest(self, digest: bytes) -> bytes:
        """An ECDSA signature (DER) over a digest made elsewhere: a TLS handshake's, which
        OpenSSL hashes before it asks the key (tokens.tls)."""
        if not isinstance(self.public_key(), ec.EllipticCurvePublicKey):
            raise UnsupportedParameter("only an EC token key signs a digest for TLS")
        with self._pool.session() as pooled:
            raw = _private_key(pooled, self._uri).sign(digest, mechanism=Mechanism.ECDSA)
        return _dss(bytes(raw))


def _dss(raw: bytes) -> bytes:
    half = len(raw) // 2  # PKCS#11 gives r || s; X.509 and TLS want the DER Ecdsa-Sig-Value
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


def generate_token_key(
    pool: TokenPool, uri: Pkcs11Uri, spec: KeySpec, *, rsa_pss: bool = False
) -> TokenKey:
    """A new key pair made inside the token: private, sensitive, never extractable.

    Refused when the URI's label or id names a key that exists already (use it instead by
    leaving out the key algorithm), so that no key is ever shadowed.
    """
    uri = uri.require_key()
    if spec not in _CURVES and spec not in _RSA_BITS:
        raise UnsupportedParameter(
            f"a key in a token is one of {', '.join(s.value for s in (*_CURVES, *_RSA_BITS))}; "
            f"not {spec.value}"
        )
    private = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        # A CA key signs, nothing else: no decrypt, unwrap or derive to misuse it with.
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    public_template = {Attribute.TOKEN: True, Attribute.VERIFY: True}
    # An id ties the public and the private object together; derive one when none is given.
    key_id = uri.id if uri.id is not None else hashlib.sha256(uri.text.encode()).digest()[:8]
    with pool.session(rw=True) as pooled:
        if _find(pooled, uri, ObjectClass.PRIVATE_KEY) is not None:
            raise ConfigurationError(
                f"the token already holds a key at {uri.text}: add --pkcs11-existing to use it, "
                "or name another object= in the URI"
            )
        session = pooled.session
        if spec in _CURVES:
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[spec])},
                local=True,
            )
            params.generate_keypair(
                store=True,
                label=uri.object,
                id=key_id,
                private_template=private,
                public_template=public_template,
            )
        else:
            session.generate_keypair(
                KeyType.RSA,
                _RSA_BITS[spec],
                store=True,
                private_template=private,
                public_template=public_template,
                label=uri.object,
                id=key_id,
            )
    key_uri = uri if uri.id is not None else Pkcs11Uri(**{**uri.__dict__, "id": key_id})
    return TokenKey(pool, key_uri, rsa_pss=rsa_pss)


def _find(pooled: PooledSession, uri: Pkcs11Uri, kind: ObjectClass) -> pkcs11.Object | None:
    query: dict[Attribute, object] = {Attribute.CLASS: kind}
    if uri.object is not None:
        query[Attribute.LABEL] = uri.object
    if uri.id is not None:
        query[Attribute.ID] = uri.id
    found = list(pooled.session.get_objects(query))
    if len(found) > 1:
        raise ConfigurationError(
            f"{len(found)} objects match {uri.text}; add id= or a unique object= to the URI"
        )
    return found[0] if found else None


def _private_key(pooled: PooledSession, uri: Pkcs11Uri) -> SignMixin:
    """The private key object, looked up once per session (a handle is per session)."""
    key = pooled.found.get(uri)
    if key is None:
        key = _find(pooled, uri, ObjectClass.PRIVATE_KEY)
        if key is None:
            raise pkcs11.exceptions.NoSuchKey(f"no private key at {uri.text}")
        pooled.found[uri] = key
    assert isinstance(key, SignMixin)
    return key


def _read_public_key(pooled: PooledSession, uri: Pkcs11Uri) -> PublicKey:
    private = _private_key(pooled, uri)
    key_type = private[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        # An RSA private key object carries the modulus and public exponent itself.
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(private[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(private[Attribute.MODULUS], "big"),
        )
        public: object = numbers.public_key()
    elif key_type == KeyType.EC:
        match = _find(pooled, Pkcs11Uri(**{**uri.__dict__, "type": None}), ObjectClass.PUBLIC_KEY)
        if not isinstance(match, TokenPublicKey):
            raise ConfigurationError(
                f"the token holds no public key object beside {uri.text}; an EC private key "
                "alone does not say its public point: import the public key with the same id"
            )
        public = load_der_public_key(bytes(encode_ec_public_key(match)))
    else:
        raise UnsupportedParameter(f"the token key at {uri.text} is neither EC nor RSA")
    if isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return public
    raise UnsupportedParameter(f"the token key at {uri.text} is neither EC nor RSA")
