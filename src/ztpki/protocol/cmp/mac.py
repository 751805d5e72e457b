"""MAC-based protection of PKIMessages with a shared secret (RFC 4210 section 5.1.3.1,
RFC 9481 section 6.1, RFC 9483 section 4.1.5): PasswordBasedMac, which `openssl cmp -secret`
sends, and PBMAC1 (PBKDF2 + HMAC).

Parameters are decoded with pyasn1 (rfc9480.PBMParameter, rfc8018.PBMAC1_params) and checked
against a ``MacPolicy`` BEFORE any key is derived: the iteration count is the sender's to
choose, and deriving with a huge one is work the node does for whoever asks. The MAC itself
is `cryptography`'s HMAC, compared in constant time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280, rfc8018, rfc9480

from ztpki.protocol.cmp.bodies import body_der
from ztpki.protocol.cmp.codec import assemble, header_der
from ztpki.protocol.cmp.errors import BadAlg, BadDataFormat, BadMessageCheck
from ztpki.protocol.cmp.fields import decode_exact, der, sequence_der
from ztpki.protocol.cmp.messages import AlgorithmId, Body, Header, PKIMessage

PASSWORD_BASED_MAC = "1.2.840.113533.7.66.13"  # noqa: S105 (an OID)
PBMAC1 = "1.2.840.113549.1.5.14"
_PBKDF2 = "1.2.840.113549.1.5.12"

HashClass = type[hashes.SHA1] | type[hashes.SHA256] | type[hashes.SHA384] | type[hashes.SHA512]
# One-way functions and PBKDF2 PRFs: SHA-2 only (RFC 9481 sections 6.1.1, 6.1.2).
_OWF: dict[str, HashClass] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
# HMACs (RFC 9481 section 6.2.1). HMAC-SHA1 is what `openssl cmp` uses unless told
# `-mac hmac-sha256` (RFC 4210's default); as a MAC it is not broken, so it is taken.
_HMAC: dict[str, HashClass] = {
    "1.3.6.1.5.5.8.1.2": hashes.SHA1,  # hmac-sha1 (RFC 4210)
    "1.2.840.113549.2.7": hashes.SHA1,  # id-hmacWithSHA1
    "1.2.840.113549.2.9": hashes.SHA256,
    "1.2.840.113549.2.10": hashes.SHA384,
    "1.2.840.113549.2.11": hashes.SHA512,
}
_OWF_OID = {cls: oid for oid, cls in _OWF.items()}
_HMAC_OID = {cls: oid for oid, cls in reversed(_HMAC.items())}  # SHA-1: id-hmacWithSHA1 last


class MacScheme(StrEnum):
    PASSWORD_BASED_MAC = "PasswordBasedMac"  # noqa: S105 (a name)
    PBMAC1 = "PBMAC1"


@dataclass(frozen=True)
class MacParameters:
    """The parameters of one MAC protection. ``owf`` is PasswordBasedMac's one-way function
    or PBMAC1's PBKDF2 PRF; ``key_length`` only for PBMAC1 (the HMAC key's size)."""

    scheme: MacScheme
    salt: bytes
    iterations: int
    owf: HashClass
    mac: HashClass
    key_length: int | None = None


@dataclass(frozen=True)
class MacPolicy:
    """What the node accepts. The floors keep a recorded message from being cheap to guess
    the secret from; the ceilings bound the work one request costs before it is verified."""

    min_salt: int = 8  # bytes (64 bits, RFC 8018 section 4.1)
    max_salt: int = 128  # PBMParameter's own bound
    min_pbm_iterations: int = 100  # RFC 4210: at least 100; openssl sends 500
    max_pbm_iterations: int = 10_000  # one Python-driven hash each
    min_pbkdf2_iterations: int = 1_000
    max_pbkdf2_iterations: int = 100_000  # PBKDF2 runs in C

    def check(self, params: MacParameters) -> None:
        """BadAlg when params are outside the policy (nothing was derived)."""
        if not self.min_salt <= len(params.salt) <= self.max_salt:
            raise BadAlg(
                f"the {params.scheme.value} salt has {len(params.salt)} bytes; this node "
                f"takes {self.min_salt} to {self.max_salt}"
            )
        low, high = (
            (self.min_pbm_iterations, self.max_pbm_iterations)
            if params.scheme is MacScheme.PASSWORD_BASED_MAC
            else (self.min_pbkdf2_iterations, self.max_pbkdf2_iterations)
        )
        if not low <= params.iterations <= high:
            raise BadAlg(
                f"the {params.scheme.value} iteration count {params.iterations} is outside "
                f"{low}..{high}, what this node accepts"
            )
        if params.key_length is not None and not 16 <= params.key_length <= 64:
            raise BadAlg(f"a PBMAC1 key length of {params.key_length} bytes is refused")


def is_mac(algorithm: AlgorithmId | None) -> bool:
    return algorithm is not None and algorithm.oid in (PASSWORD_BASED_MAC, PBMAC1)


# ---------------------------------------------------------------- parameters <-> DER


def _algorithm(oid: str, parameters: bytes | None = None) -> rfc5280.AlgorithmIdentifier:
    value = rfc5280.AlgorithmIdentifier()
    value["algorithm"] = univ.ObjectIdentifier(oid)
    if parameters is not None:
        value["parameters"] = univ.Any(parameters)
    return value


def _into(slot: univ.Sequence, oid: str, parameters: bytes | None = None) -> None:
    slot["algorithm"] = univ.ObjectIdentifier(oid)
    if parameters is not None:
        slot["parameters"] = univ.Any(parameters)


def _hash_of(table: dict[str, HashClass], algorithm: univ.Sequence, what: str) -> HashClass:
    oid = str(algorithm["algorithm"])
    found = table.get(oid)
    if found is None:
        raise BadAlg(f"{what} {oid} is not supported (use SHA-256 or stronger)")
    return found


def encode_mac_algorithm(params: MacParameters) -> AlgorithmId:
    """The protectionAlg that names params."""
    if params.scheme is MacScheme.PASSWORD_BASED_MAC:
        pbm = rfc9480.PBMParameter()
        pbm["salt"] = params.salt
        _into(pbm["owf"], _OWF_OID[params.owf])
        pbm["iterationCount"] = params.iterations
        _into(pbm["mac"], _HMAC_OID[params.mac])
        return AlgorithmId(PASSWORD_BASED_MAC, der(pbm))
    kdf = rfc8018.PBKDF2_params()
    kdf["salt"]["specified"] = params.salt
    kdf["iterationCount"] = params.iterations
    if params.key_length is not None:
        kdf["keyLength"] = params.key_length
    kdf["prf"] = _algorithm(_HMAC_OID[params.owf], b"\x05\x00")
    pbmac1 = rfc8018.PBMAC1_params()
    _into(pbmac1["keyDerivationFunc"], _PBKDF2, der(kdf))
    _into(pbmac1["messageAuthScheme"], _HMAC_OID[params.mac])
    return AlgorithmId(PBMAC1, der(pbmac1))


def decode_mac_algorithm(algorithm: AlgorithmId) -> MacParameters:
    """MacParameters from a protectionAlg; BadAlg for a MAC this module does not take,
    BadDataFormat for parameters that do not decode."""
    if algorithm.parameters is None:
        raise BadDataFormat(f"MAC algorithm {algorithm.oid} needs its parameters")
    if algorithm.oid == PASSWORD_BASED_MAC:
        pbm = decode_exact(algorithm.parameters, rfc9480.PBMParameter(), what="PBMParameter")
        return MacParameters(
            MacScheme.PASSWORD_BASED_MAC,
            salt=bytes(pbm["salt"]),
            iterations=int(pbm["iterationCount"]),
            owf=_hash_of(_OWF, pbm["owf"], "the PasswordBasedMac one-way function"),
            mac=_hash_of(_HMAC, pbm["mac"], "the PasswordBasedMac MAC"),
        )
    if algorithm.oid != PBMAC1:
        raise BadAlg(f"MAC algorithm {algorithm.oid} is not supported; use PasswordBasedMac")
    pbmac1 = decode_exact(algorithm.parameters, rfc8018.PBMAC1_params(), what="PBMAC1 params")
    kdf_id = pbmac1["keyDerivationFunc"]
    if str(kdf_id["algorithm"]) != _PBKDF2 or not kdf_id["parameters"].isValue:
        raise BadAlg("PBMAC1 is taken with PBKDF2 and its parameters only")
    kdf = decode_exact(
        bytes(kdf_id["parameters"]), rfc8018.PBKDF2_params(), what="PBKDF2 parameters"
    )
    if kdf["salt"].getName() != "specified":
        raise BadAlg("PBKDF2's salt must be given (specified), not another source")
    if not kdf["prf"].isValue:
        raise BadAlg("PBKDF2 with its default PRF (HMAC-SHA1) is refused; name HMAC-SHA256")
    prf = _hash_of(_HMAC, kdf["prf"], "the PBKDF2 PRF")
    if prf is hashes.SHA1:
        raise BadAlg("PBKDF2 with HMAC-SHA1 is refused; name HMAC-SHA256 or stronger")
    return MacParameters(
        MacScheme.PBMAC1,
        salt=bytes(kdf["salt"]["specified"]),
        iterations=int(kdf["iterationCount"]),
        owf=prf,
        mac=_hash_of(_HMAC, pbmac1["messageAuthScheme"], "the PBMAC1 MAC"),
        key_length=int(kdf["keyLength"]) if kdf["keyLength"].isValue else None,
    )


# ---------------------------------------------------------------- the MAC


def mac_key(params: MacParameters, secret: bytes) -> bytes:
    """The HMAC key params derive from secret (call MacPolicy.check first)."""
    if params.scheme is MacScheme.PASSWORD_BASED_MAC:
        # RFC 4210 5.1.3.1: OWF(secret || salt), then OWF of that, iterationCount in all.
        digest = hashes.Hash(params.owf())
        digest.update(secret + params.salt)
        key = digest.finalize()
        for _ in range(params.iterations - 1):
            digest = hashes.Hash(params.owf())
            digest.update(key)
            key = digest.finalize()
        return key
    length = params.key_length or params.mac.digest_size
    kdf = PBKDF2HMAC(params.owf(), length, params.salt, params.iterations)
    return kdf.derive(secret)


def compute_mac(params: MacParameters, secret: bytes, data: bytes) -> bytes:
    tag = hmac.HMAC(mac_key(params, secret), params.mac())
    tag.update(data)
    return tag.finalize()


def verify_mac(
    message: PKIMessage, params: MacParameters, secret: bytes, policy: MacPolicy
) -> None:
    """Check message's MAC with secret; BadAlg (nothing derived) when params are outside the
    policy, BadMessageCheck when it does not verify."""
    policy.check(params)
    if message.protection is None:
        raise BadMessageCheck("the message has a MAC algorithm but no protection")
    tag = hmac.HMAC(mac_key(params, secret), params.mac())
    tag.update(message.protected_part)
    try:
        tag.verify(message.protection)
    except InvalidSignature:
        raise BadMessageCheck(
            "the MAC-based protection does not verify with the shared secret this node has "
            "for the device senderKID names (or it has none)"
        ) from None


def fresh(params: MacParameters) -> MacParameters:
    """params with a new random salt of the same length: an answer never reuses the
    requester's salt (RFC 4210 5.1.3.1 has each message's own)."""
    return replace(params, salt=os.urandom(max(len(params.salt), 16)))


def mac_message(
    header: Header,
    body: Body,
    params: MacParameters,
    secret: bytes,
    *,
    extra_certs: tuple[bytes, ...] = (),
) -> bytes:
    """The DER of a PKIMessage protected with a MAC under secret."""
    header = replace(header, protection_alg=encode_mac_algorithm(params))
    header_bytes, body_bytes = header_der(header), body_der(body)
    protection = compute_mac(params, secret, sequence_der(header_bytes, body_bytes))
    return assemble(header_bytes, body_bytes, protection=protection, extra_certs=extra_certs)
