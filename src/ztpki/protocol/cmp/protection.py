"""Signature-based protection of PKIMessages (RFC 4210 section 5.1.3.3, RFC 9483 section 3.2),
POPO signatures (RFC 4211 section 4.1) and certConf's certHash, all with `cryptography`.

Algorithms: RSA PKCS#1 v1.5 and RSASSA-PSS, ECDSA, Ed25519 and Ed448, with SHA-256/384/512
(RFC 9481). MAC-based protection is recognised only to be refused with a clear sentence: the
node decides whether a label allows it, not this module.
"""

from __future__ import annotations

from dataclasses import replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from pyasn1.type import univ
from pyasn1_alt_modules import rfc4055, rfc5280

from ztpki.protocol.cmp.bodies import body_der, cert_request_der
from ztpki.protocol.cmp.codec import assemble, header_der
from ztpki.protocol.cmp.errors import BadAlg, BadDataFormat, BadMessageCheck, BadPOP, CMPError
from ztpki.protocol.cmp.fields import decode_exact, der, encode_algorithm, sequence_der
from ztpki.protocol.cmp.messages import (
    AlgorithmId,
    Body,
    CertRequest,
    Header,
    PKIMessage,
    ProofOfPossession,
)

SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

RSASSA_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
_ED25519, _ED448 = "1.3.101.112", "1.3.101.113"
_RSA_PKCS1: dict[str, HashClass] = {
    "1.2.840.113549.1.1.11": hashes.SHA256,
    "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512,
}
_ECDSA: dict[str, HashClass] = {
    "1.2.840.10045.4.3.2": hashes.SHA256,
    "1.2.840.10045.4.3.3": hashes.SHA384,
    "1.2.840.10045.4.3.4": hashes.SHA512,
}
_HASHES: dict[str, HashClass] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
_HASH_OID: dict[HashClass, str] = {cls: oid for oid, cls in _HASHES.items()}
# MAC-based protection (PasswordBasedMac, PBMAC1, DHBasedMac; RFC 9481 section 6).
MAC_ALGORITHMS = frozenset(
    {"1.2.840.113533.7.66.13", "1.2.840.113549.1.5.14", "1.2.840.113533.7.66.30"}
)

HashClass = type[hashes.SHA256] | type[hashes.SHA384] | type[hashes.SHA512]


# ---------------------------------------------------------------- algorithm identifiers


def signature_algorithm(
    key: SigningKey, *, hash_class: HashClass = hashes.SHA256, pss: bool = False
) -> AlgorithmId:
    """The AlgorithmIdentifier a signature by key is made with."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return AlgorithmId(_ED25519)
    if isinstance(key, ed448.Ed448PrivateKey):
        return AlgorithmId(_ED448)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return AlgorithmId(_oid_for(_ECDSA, hash_class))
    if pss:
        return AlgorithmId(RSASSA_PSS, _pss_parameters(hash_class))
    return AlgorithmId(_oid_for(_RSA_PKCS1, hash_class))


def _oid_for(table: dict[str, HashClass], hash_class: HashClass) -> str:
    return next(oid for oid, cls in table.items() if cls is hash_class)


def _pss_parameters(hash_class: HashClass) -> bytes:
    params = rfc4055.RSASSA_PSS_params()
    encode_algorithm(AlgorithmId(_HASH_OID[hash_class]), params["hashAlgorithm"])
    mgf = params["maskGenAlgorithm"]
    mgf["algorithm"] = univ.ObjectIdentifier(_MGF1)
    inner = rfc5280.AlgorithmIdentifier()
    inner["algorithm"] = univ.ObjectIdentifier(_HASH_OID[hash_class])
    mgf["parameters"] = univ.Any(der(inner))
    params["saltLength"] = hash_class.digest_size
    return der(params)


def _pss_padding(parameters: bytes | None) -> tuple[padding.PSS, hashes.HashAlgorithm]:
    if parameters is None:
        raise BadAlg("RSASSA-PSS needs its parameters (SHA-1 defaults are refused)")
    params = decode_exact(parameters, rfc4055.RSASSA_PSS_params(), what="RSASSA-PSS parameters")
    if not params["hashAlgorithm"].isValue or not params["maskGenAlgorithm"].isValue:
        raise BadAlg("RSASSA-PSS with SHA-1 defaults is refused; name SHA-256 or stronger")
    hash_class = _HASHES.get(str(params["hashAlgorithm"]["algorithm"]))
    mgf = params["maskGenAlgorithm"]
    mgf_hash = None
    if str(mgf["algorithm"]) == _MGF1 and mgf["parameters"].isValue:
        inner = decode_exact(
            bytes(mgf["parameters"]), rfc5280.AlgorithmIdentifier(), what="MGF1 parameters"
        )
        mgf_hash = _HASHES.get(str(inner["algorithm"]))
    if hash_class is None or mgf_hash is None or int(params["trailerField"]) != 1:
        raise BadAlg("RSASSA-PSS parameters other than SHA-2 with MGF1 are not supported")
    return (
        padding.PSS(mgf=padding.MGF1(mgf_hash()), salt_length=int(params["saltLength"])),
        hash_class(),
    )


# ---------------------------------------------------------------- sign and verify


def sign(key: SigningKey, algorithm: AlgorithmId, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_ECDSA[algorithm.oid]()))
    if algorithm.oid == RSASSA_PSS:
        pss, digest = _pss_padding(algorithm.parameters)
        return key.sign(data, pss, digest)
    return key.sign(data, padding.PKCS1v15(), _RSA_PKCS1[algorithm.oid]())


def verify(
    public_key: object,
    algorithm: AlgorithmId,
    signature: bytes,
    data: bytes,
    *,
    failure: type[CMPError],
    what: str,
) -> None:
    """Verify signature over data; ``failure`` (with what) when it does not, BadAlg when the
    algorithm is not one this module takes or does not fit the key."""
    oid = algorithm.oid
    try:
        if (oid == _ED25519 and isinstance(public_key, ed25519.Ed25519PublicKey)) or (
            oid == _ED448 and isinstance(public_key, ed448.Ed448PublicKey)
        ):
            public_key.verify(signature, data)
        elif oid in _ECDSA and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(_ECDSA[oid]()))
        elif oid in _RSA_PKCS1 and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), _RSA_PKCS1[oid]())
        elif oid == RSASSA_PSS and isinstance(public_key, rsa.RSAPublicKey):
            pss, digest = _pss_padding(algorithm.parameters)
            public_key.verify(signature, data, pss, digest)
        else:
            raise BadAlg(f"{what}: algorithm {oid} is not supported for this key")
    except InvalidSignature:
        raise failure(f"{what} does not verify") from None


# ---------------------------------------------------------------- message protection


def sign_message(
    header: Header,
    body: Body,
    key: SigningKey,
    *,
    extra_certs: tuple[bytes, ...] = (),
    hash_class: HashClass = hashes.SHA256,
    pss: bool = False,
) -> bytes:
    """The DER of a PKIMessage signed by key; extra_certs starts with key's certificate
    (RFC 9483 section 3.3) and may carry its chain."""
    algorithm = signature_algorithm(key, hash_class=hash_class, pss=pss)
    header = replace(header, protection_alg=algorithm)
    header_bytes, body_bytes = header_der(header), body_der(body)  # signed, then sent as signed
    signature = sign(key, algorithm, sequence_der(header_bytes, body_bytes))
    return assemble(header_bytes, body_bytes, protection=signature, extra_certs=extra_certs)


def protection_certificate(message: PKIMessage) -> x509.Certificate:
    """The protecting certificate: the first of extraCerts (RFC 9483 section 3.3)."""
    if not message.extra_certs:
        raise BadMessageCheck(
            "signature-based protection needs the signer's certificate first in extraCerts"
        )
    try:
        return x509.load_der_x509_certificate(message.extra_certs[0])
    except ValueError:
        raise BadMessageCheck("the first certificate of extraCerts does not parse") from None


def verify_protection(message: PKIMessage, certificate: x509.Certificate) -> None:
    """Check message's signature-based protection against certificate's key."""
    algorithm = message.header.protection_alg
    if algorithm is None or message.protection is None:
        raise BadMessageCheck("the message is not protected; sign it with the device's key")
    if algorithm.oid in MAC_ALGORITHMS:
        raise BadMessageCheck(
            "MAC-based protection is not accepted here; sign the message with the device's "
            "certificate and key"
        )
    try:
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise BadMessageCheck("the protecting certificate's key is not usable") from None
    verify(
        public_key,
        algorithm,
        message.protection,
        message.protected_part,
        failure=BadMessageCheck,
        what="the message's protection",
    )


# ---------------------------------------------------------------- proof of possession


def sign_cert_request(
    request: CertRequest, key: SigningKey, *, hash_class: HashClass = hashes.SHA256
) -> CertRequest:
    """request with its POPO signature by key, the private half of its public key."""
    bare = replace(request, popo=None, der=b"")
    data = cert_request_der(bare)
    algorithm = signature_algorithm(key, hash_class=hash_class)
    return replace(bare, popo=ProofOfPossession(algorithm, sign(key, algorithm, data)), der=data)


def verify_popo(request: CertRequest) -> None:
    """The request's POPO signature verifies with the key it asks a certificate for."""
    popo = request.popo
    if popo is None or popo.ra_verified or popo.algorithm is None:
        raise BadPOP("a signature proof of possession of the requested key is required")
    if request.public_key_der is None:
        raise BadPOP("the certificate template has no public key to prove possession of")
    try:
        public_key = serialization.load_der_public_key(request.public_key_der)
    except (ValueError, UnsupportedAlgorithm):
        raise BadDataFormat("the template's public key does not parse") from None
    verify(
        public_key,
        popo.algorithm,
        popo.signature,
        request.der or cert_request_der(request),
        failure=BadPOP,
        what="the proof of possession",
    )


# ---------------------------------------------------------------- certConf


def certificate_hash(certificate: x509.Certificate, hash_alg: AlgorithmId | None = None) -> bytes:
    """certHash (RFC 9480 section 2.10): with hashAlg when given, else the hash of the
    certificate's signature algorithm (SHA-512 for Ed25519, SHAKE256 aside)."""
    if hash_alg is not None:
        cls = _HASHES.get(hash_alg.oid)
        if cls is None:
            raise BadAlg(f"certConf hash algorithm {hash_alg.oid} is not supported")
        digest: hashes.HashAlgorithm = cls()
    else:
        found = certificate.signature_hash_algorithm
        if found is None:  # EdDSA: RFC 9481 section 2.3 names SHA-512 for Ed25519
            found = hashes.SHA512()
        digest = found
    hasher = hashes.Hash(digest)
    hasher.update(certificate.public_bytes(serialization.Encoding.DER))
    return hasher.finalize()
