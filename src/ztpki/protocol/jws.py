"""JWS (RFC 7515) in the flattened JSON serialization, with the signer chain in ``x5c``.

The protected header holds exactly ``alg`` (ES256, ES384, EdDSA or RS256, chosen from the
signer key), ``typ`` and ``x5c`` (standard base64 DER, signer certificate first). Parsing is
strict: strict UTF-8 JSON without duplicate members, canonical unpadded base64url, no
``crit``, no ``none``, and the file must be byte for byte what `sign_jws` writes (compact
JSON, sorted members, one trailing newline), so no edit to a signed file keeps it valid.
Only the signature is checked here; whether the chain is trusted is the caller's decision.
Sans-I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from ztpki.errors import ConfigurationError, MalformedInput, VerificationFailed
from ztpki.pki.keys import PrivateKey, key_spec_of, keys_match
from ztpki.pki.pem import certificate_der, load_certificate_der

MAX_CHAIN = 8

_HEADER_MEMBERS = frozenset({"alg", "typ", "x5c"})
_CONTAINER_MEMBERS = frozenset({"payload", "protected", "signature"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_B64STD = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

# ECDSA algs: the curve they need, the size of r and s, and the digest.
_EC_ALGS: dict[str, tuple[str, int, hashes.HashAlgorithm]] = {
    "ES256": ("secp256r1", 32, hashes.SHA256()),
    "ES384": ("secp384r1", 48, hashes.SHA384()),
}
_KNOWN_ALGS = frozenset({"ES256", "ES384", "EdDSA", "RS256"})


@dataclass(frozen=True)
class SignedPayload:
    """A payload whose signature verified with the key of chain[0]."""

    payload: bytes
    chain: tuple[x509.Certificate, ...]


# --- strict encodings ----------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object, what: str) -> bytes:
    # RFC 7515 base64url: no padding, no whitespace, and only the one canonical spelling.
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise MalformedInput(f"{what} is not base64url without padding")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(data) != text:
        raise MalformedInput(f"{what} is not canonical base64url")
    return data


def _b64std_decode(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not _B64STD.fullmatch(text):
        raise MalformedInput(f"{what} is not standard base64")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise MalformedInput(f"{what} is not standard base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise MalformedInput(f"{what} is not canonical base64")
    return data


def compact_json(value: object) -> bytes:
    """The one JSON spelling ztpki signs: compact, sorted members, UTF-8."""
    return json.dumps(
        value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedInput(f"member {key[:32]!r} appears twice")
        result[key] = value
    return result


def _refuse_constant(name: str) -> None:
    raise MalformedInput(f"{name} is not JSON")


def strict_decoder() -> json.JSONDecoder:
    """The decoder ``strict_json`` uses (no duplicate members, no NaN or Infinity), for a
    caller that decodes a document value by value (``raw_decode``)."""
    return json.JSONDecoder(object_pairs_hook=_strict_object, parse_constant=_refuse_constant)


def strict_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object from strict UTF-8 JSON: no duplicate members, no NaN or Infinity."""
    try:
        text = data.decode("utf-8")
        value = strict_decoder().decode(text)
    except MalformedInput as exc:
        raise MalformedInput(f"{what}: {exc.message}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedInput(f"{what} is not strict UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise MalformedInput(f"{what} is not a JSON object")
    return value


def check_members(
    obj: dict[str, Any], allowed: frozenset[str], required: frozenset[str], what: str
) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise MalformedInput(f"{what} has unknown member {sorted(unknown)[0][:32]!r}")
    missing = required - set(obj)
    if missing:
        raise MalformedInput(f"{what} lacks member {sorted(missing)[0]!r}")


def _container(protected: str, payload: str, signature: str) -> bytes:
    members = {"payload": payload, "protected": protected, "signature": signature}
    return compact_json(members) + b"\n"


# --- signatures ----------------------------------------------------------------------------------


def _alg_for(key: PrivateKey) -> str:
    key_spec_of(key)  # refuses curves and RSA sizes ztpki does not support
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES384" if key.curve.name == "secp384r1" else "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return "RS256"


def _sign(key: PrivateKey, alg: str, message: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # JWS wants r || s at fixed width, not the DER SEQUENCE cryptography produces.
        _, size, digest = _EC_ALGS[alg]
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(digest)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def _digest_for(alg: str) -> hashes.HashAlgorithm | None:
    """The digest the signature is made over (None: EdDSA signs the whole message)."""
    if alg in _EC_ALGS:
        return _EC_ALGS[alg][2]
    return None if alg == "EdDSA" else hashes.SHA256()


def _verifier_for(alg: str, public_key: object, what: str) -> Callable[[bytes, bytes], None]:
    """verify(signature, data), raising InvalidSignature; VerificationFailed on alg/key clash.

    ``data`` is the digest of the signing input (``_digest_for(alg)``), or for EdDSA the
    signing input itself: a digest lets a signing input of any size be checked as it streams.
    """
    if alg in _EC_ALGS:
        curve, size, digest = _EC_ALGS[alg]
        if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == curve:
            ec_key = public_key

            def verify_ec(signature: bytes, hashed: bytes) -> None:
                if len(signature) != 2 * size:
                    raise InvalidSignature()
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                ec_key.verify(encode_dss_signature(r, s), hashed, ec.ECDSA(Prehashed(digest)))

            return verify_ec
    if alg == "EdDSA" and isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key.verify
    if alg == "RS256" and isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size >= 2048:
        rsa_key = public_key
        return lambda sig, hashed: rsa_key.verify(
            sig, hashed, padding.PKCS1v15(), Prehashed(hashes.SHA256())
        )
    raise VerificationFailed(f"{what} alg {alg} does not match the signer's key")


class SignatureCheck:
    """A JWS signature checked over a payload fed in pieces, so a file of any size is
    verified without holding it (EdDSA, which has no pre-hashed form, keeps the message).

    Built from the protected header and the signature (both base64url text): MalformedInput
    when they do not parse, VerificationFailed when the alg does not fit the signer's key.
    Feed ``update`` the base64url payload text, then ``verify``.
    """

    def __init__(self, protected: str, signature: str, *, typ: str, what: str) -> None:
        self._what = what
        alg, self.chain = _parse_header(protected, typ, what)
        self._signature = b64url_decode(signature, f"{what} signature")
        try:
            public_key = self.chain[0].public_key()
        except (UnsupportedAlgorithm, ValueError):
            raise MalformedInput(
                f"{what} signer certificate has an unsupported public key"
            ) from None
        self._verify = _verifier_for(alg, public_key, what)
        digest = _digest_for(alg)
        self._hash = None if digest is None else hashes.Hash(digest)
        self._whole = bytearray() if digest is None else None
        self.update(protected.encode("ascii") + b".")

    def update(self, payload_text: bytes) -> None:
        if self._hash is not None:
            self._hash.update(payload_text)
        elif self._whole is not None:
            self._whole += payload_text

    def verify(self) -> tuple[x509.Certificate, ...]:
        """The signer chain (chain[0] signed), once the signature verifies; call it once."""
        data = self._hash.finalize() if self._hash is not None else bytes(self._whole or b"")
        try:
            self._verify(self._signature, data)
        except InvalidSignature:
            raise VerificationFailed(
                f"{self._what} signature does not verify: the file was altered after signing"
            ) from None
        return self.chain


# --- sign and verify -----------------------------------------------------------------------------


def sign_jws(
    payload: bytes, *, key: PrivateKey, chain: Sequence[x509.Certificate], typ: str
) -> bytes:
    """The signed file: flattened JWS JSON, chain in x5c (signer certificate first)."""
    if not chain:
        raise ConfigurationError("the signer needs its certificate chain")
    if not keys_match(key, chain[0].public_key()):
        raise ConfigurationError("the signer key does not match the first certificate of its chain")
    if len(chain) > MAX_CHAIN:
        raise ConfigurationError(f"the signer chain has more than {MAX_CHAIN} certificates")
    alg = _alg_for(key)
    header = {
        "alg": alg,
        "typ": typ,
        "x5c": [base64.b64encode(certificate_der(c)).decode("ascii") for c in chain],
    }
    protected = b64url_encode(compact_json(header))
    body = b64url_encode(payload)
    signature = _sign(key, alg, f"{protected}.{body}".encode("ascii"))
    return _container(protected, body, b64url_encode(signature))


def _parse_header(protected: str, typ: str, what: str) -> tuple[str, tuple[x509.Certificate, ...]]:
    header = strict_json(b64url_decode(protected, f"{what} header"), f"{what} header")
    if "crit" in header:
        raise MalformedInput(f"{what} header has 'crit' extensions, which are not supported")
    check_members(header, _HEADER_MEMBERS, _HEADER_MEMBERS, f"{what} header")
    alg = header["alg"]
    if not isinstance(alg, str):
        raise MalformedInput(f"{what} header 'alg' is not a string")
    if alg.lower() == "none":
        raise MalformedInput(f"{what} alg 'none' (unsigned) is refused")
    if alg not in _KNOWN_ALGS:
        raise MalformedInput(
            f"{what} alg {alg[:16]!r} is not supported; use ES256, ES384, EdDSA or RS256"
        )
    if header["typ"] != typ:
        raise MalformedInput(f"{what} header 'typ' is not {typ!r}")
    x5c = header["x5c"]
    if not isinstance(x5c, list) or not 1 <= len(x5c) <= MAX_CHAIN:
        raise MalformedInput(f"{what} header 'x5c' is not a list of 1-{MAX_CHAIN} certificates")
    certs = tuple(load_certificate_der(_b64std_decode(c, f"{what} x5c certificate")) for c in x5c)
    return alg, certs


def verify_jws(data: bytes, *, typ: str, max_size: int, what: str) -> SignedPayload:
    """The payload, once the signature verifies with chain[0]'s key (chain not yet trusted).

    MalformedInput for anything that does not parse; VerificationFailed for a bad signature.
    ``what`` names the document in messages ("manifest").
    """
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"a signed {what} is bytes")
    if len(data) > max_size:
        raise MalformedInput(f"{what} is larger than {max_size} bytes")
    outer = strict_json(bytes(data), f"{what} file")
    check_members(outer, _CONTAINER_MEMBERS, _CONTAINER_MEMBERS, f"{what} file (a flattened JWS)")
    protected, payload, signature = outer["protected"], outer["payload"], outer["signature"]
    for name, value in (("protected", protected), ("payload", payload), ("signature", signature)):
        if not isinstance(value, str):
            raise MalformedInput(f"{what} member {name!r} is not a string")
    check = SignatureCheck(protected, signature, typ=typ, what=what)
    body = b64url_decode(payload, f"{what} payload")
    if _container(protected, payload, signature) != bytes(data):
        raise MalformedInput(f"{what} file is not exactly as ztpki writes it (edited?)")
    check.update(payload.encode("ascii"))
    return SignedPayload(body, check.verify())
