"""One signing interface for a CA's key, wherever the key lives.

A key file decrypts to a ``cryptography`` private key, which signs through cryptography's
builders as it always did. A key that never leaves its token (an HSM, a smart card, SoftHSM)
is an ``ExternalKey``: it knows its public key and signs bytes, nothing more.

cryptography's builders only sign with their own private keys, so for an external key the
builder signs with a cheap throwaway key of the same family first: that fixes the
to-be-signed bytes (subject, issuer, AKI from the real CA certificate, the signature
AlgorithmIdentifier, which depends on the family, hash and padding but not on the key size
or curve). The throwaway signature is then replaced by the token's signature over exactly
those bytes. Certificates, CRLs and BasicOCSPResponses share the outer shape
``SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING, ... }``, so one splice serves all.

No I/O here: the external key's ``sign`` is where the token is reached, at the edge.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ztpki.errors import MalformedInput, UnsupportedParameter
from ztpki.pki.asn1 import der_children, der_content, der_element_end, der_tlv, signed_parts
from ztpki.pki.keys import PrivateKey, PublicKey, signature_hash

SignatureHash = hashes.SHA256 | hashes.SHA384
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # a draft's validity: only its algorithm is read
_DER = Encoding.DER


class ExternalKey(Protocol):
    """A private key held elsewhere (a PKCS#11 token) that signs on request."""

    @property
    def location(self) -> str:
        """Where the key lives, for people (`ztpki ca list`): a URI without any PIN."""
        ...

    @property
    def rsa_pss(self) -> bool:
        """True when this RSA key signs with RSASSA-PSS rather than PKCS#1 v1.5."""
        ...

    @property
    def quick(self) -> bool:
        """True when its recent signatures were quick enough to make on an event loop."""
        ...

    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes, algorithm: SignatureHash) -> bytes:
        """The signature over ``data`` as X.509 carries it (ECDSA: DER Ecdsa-Sig-Value)."""
        ...


SigningKey = PrivateKey | ExternalKey
# Keys that sign in this process. Telling the two kinds apart by these classes (rather than
# a runtime-checkable Protocol, which reads every member, a property included, per call)
# also lets mypy narrow a SigningKey either way.
FILE_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)


def key_location(key: SigningKey) -> str:
    """Where a CA's key lives, as `ztpki ca list` shows it."""
    return "file" if isinstance(key, FILE_KEYS) else key.location


def signs_quickly(key: SigningKey) -> bool:
    """Whether ``key`` signs fast enough for an event loop: a file key, or an external key
    whose recent signatures were quick (a network HSM's are not: those go to a thread)."""
    return isinstance(key, FILE_KEYS) or key.quick


def rsa_padding(key: SigningKey) -> padding.PSS | padding.PKCS1v15 | None:
    """The RSA padding of this key's signatures (None: not RSA)."""
    if not isinstance(key.public_key(), rsa.RSAPublicKey):
        return None
    if not isinstance(key, FILE_KEYS) and key.rsa_pss:
        # Salt as long as the digest: RFC 4055's recommendation, and fixed whatever the key
        # size, so the AlgorithmIdentifier the throwaway key writes is the real key's.
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    return padding.PKCS1v15()


_stand_ins: dict[str, PrivateKey] = {}


def _stand_in(public: PublicKey) -> PrivateKey:
    """A throwaway key of the same family: it only fixes the bytes the real key signs."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        family = "ec"
    elif isinstance(public, rsa.RSAPublicKey):
        family = "rsa"
    else:
        raise UnsupportedParameter(
            "a key in a token must be EC (P-256, P-384) or RSA (2048, 3072); "
            f"{type(public).__name__} is not supported there"
        )
    key = _stand_ins.get(family)
    if key is None:
        # The smallest sizes cryptography makes: the throwaway signature is thrown away.
        key = (
            ec.generate_private_key(ec.SECP256R1())
            if family == "ec"
            else rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
        )
        _stand_ins[family] = key
    return key


_identifiers: dict[tuple[str, str, bool], bytes] = {}


def algorithm_identifier(key: ExternalKey) -> bytes:
    """The DER signature AlgorithmIdentifier an external key's signatures carry, for
    structures assembled by hand (BasicOCSPResponse: pki.ocsp_der). Taken from a draft
    certificate the stand-in signs, so RSASSA-PSS parameters are cryptography's own."""
    public = key.public_key()
    algorithm = _external_hash(key)
    cache_key = (type(public).__name__, algorithm.name, key.rsa_pss)
    found = _identifiers.get(cache_key)
    if found is None:
        name = x509.Name([])
        draft = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(1)
            .not_valid_before(_EPOCH)
            .not_valid_after(_EPOCH)
            .sign(_stand_in(public), algorithm, rsa_padding=rsa_padding(key))
        ).public_bytes(_DER)
        found = _identifiers[cache_key] = bytes(signed_parts(draft)["algorithm"])
    return found


def resign(signed_der: bytes, signature: bytes) -> bytes:
    """``signed_der`` (a Certificate, CertificateList or BasicOCSPResponse) with its
    signature BIT STRING replaced; everything before and after it is kept byte for byte.

    Spliced with the DER framing helpers rather than decoded and encoded through pyasn1:
    on a token CA's hot path that round trip cost more CPU than the token's signature."""
    try:
        if signed_der[:1] != b"\x30" or der_element_end(signed_der, 0) != len(signed_der):
            raise MalformedInput("not one SEQUENCE")
        parts = der_children(der_content(signed_der))
        if len(parts) < _SIGNED_PARTS or parts[2][:1] != b"\x03":
            raise MalformedInput("no signature BIT STRING")
    except (MalformedInput, IndexError):
        raise ValueError("not a signed X.509 structure") from None
    parts[2] = der_tlv(0x03, b"\x00" + signature)  # no unused bits
    return der_tlv(0x30, b"".join(parts))


_SIGNED_PARTS = 3  # the signed part, its AlgorithmIdentifier, the signature


Builder = x509.CertificateBuilder | x509.CertificateRevocationListBuilder
Signed = x509.Certificate | x509.CertificateRevocationList


@dataclass(frozen=True, slots=True)
class _Plan:
    """How an external key's structures are drafted: fixed per key, so worked out once
    (each step asks the key for its public key and type-checks it: microseconds that add up
    on a token CA's hot path)."""

    algorithm: SignatureHash
    stand_in: PrivateKey
    padding: padding.PSS | padding.PKCS1v15 | None


_plans: weakref.WeakKeyDictionary[ExternalKey, _Plan] = weakref.WeakKeyDictionary()


def _plan(key: ExternalKey) -> _Plan:
    try:
        return _plans[key]
    except KeyError:
        plan = _plans[key] = _work_out(key)
        return plan
    except TypeError:  # a key that cannot be a dictionary key: worked out per signature
        return _work_out(key)


def _work_out(key: ExternalKey) -> _Plan:
    return _Plan(_external_hash(key), _stand_in(key.public_key()), rsa_padding(key))


def _signed(builder: Builder, key: SigningKey) -> Signed:
    if isinstance(key, FILE_KEYS):
        return builder.sign(key, signature_hash(key), rsa_padding=rsa_padding(key))
    plan = _plan(key)
    draft = builder.sign(plan.stand_in, plan.algorithm, rsa_padding=plan.padding)
    if isinstance(draft, x509.Certificate):
        signature = key.sign(draft.tbs_certificate_bytes, plan.algorithm)
        return x509.load_der_x509_certificate(resign(draft.public_bytes(_DER), signature))
    signature = key.sign(draft.tbs_certlist_bytes, plan.algorithm)
    return x509.load_der_x509_crl(resign(draft.public_bytes(_DER), signature))


def sign_certificate(builder: x509.CertificateBuilder, key: SigningKey) -> x509.Certificate:
    """The certificate ``builder`` describes, signed by ``key`` (a file key or a token's)."""
    certificate = _signed(builder, key)
    assert isinstance(certificate, x509.Certificate)
    return certificate


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, key: SigningKey
) -> x509.CertificateRevocationList:
    """The CRL ``builder`` describes, signed by ``key`` (a file key or a token's)."""
    crl = _signed(builder, key)
    assert isinstance(crl, x509.CertificateRevocationList)
    return crl


def _external_hash(key: ExternalKey) -> SignatureHash:
    algorithm = signature_hash(key)
    if algorithm is None:  # Ed25519 in a token: refused by _stand_in's message first
        _stand_in(key.public_key())
        raise AssertionError("unreachable")
    return algorithm


__all__ = [
    "FILE_KEYS",
    "ExternalKey",
    "SignatureHash",
    "SigningKey",
    "algorithm_identifier",
    "key_location",
    "resign",
    "rsa_padding",
    "sign_certificate",
    "sign_crl",
    "signature_hash",
    "signs_quickly",
]
