"""A centrally generated private key, signed by the key generation authority (RFC 9483
section 4.1.6): SignedData (RFC 5652 section 5) of an AsymmetricKeyPackage (RFC 5958).

The node writes it with its own key and certificate (the KGA); the device checks that the
signer is the certificate it already trusts for the transaction (the node's CMP protection
certificate) before it believes the key is the one its CA certified. The SignedData then
travels inside an EnvelopedData to the device's temporary key (pki/enveloped.py).

Structures are pyasn1-alt-modules' rfc5652/rfc5958 types; signatures and digests are
`cryptography`'s. No I/O, no clock (no signingTime attribute: RFC 5652 does not require it).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5652, rfc5958

from ztpki.errors import MalformedInput
from ztpki.pki.asn1 import (
    decode_der,
    der_children,
    der_content,
    der_tlv,
    encode_der,
    oid,
    oid_text,
)
from ztpki.pki.enveloped import issuer_name
from ztpki.pki.keys import PrivateKey, decode_pkcs8, encode_pkcs8, signature_hash

__all__ = ["ID_SIGNED_DATA", "read_key_package", "sign_key_package"]

ID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_KEY_PACKAGE = rfc5958.id_ct_KP_aKeyPackage
_SEQUENCE, _IMPLICIT_0 = 0x30, 0xA0
_DIGESTS: dict[str, hashes.HashAlgorithm] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256(),
    "2.16.840.1.101.3.4.2.2": hashes.SHA384(),
    "2.16.840.1.101.3.4.2.3": hashes.SHA512(),
}
_DIGEST_OIDS = {type(h).__name__: o for o, h in _DIGESTS.items()}
_SIGNATURE_OIDS = {
    ("ec", "SHA256"): "1.2.840.10045.4.3.2",
    ("ec", "SHA384"): "1.2.840.10045.4.3.3",
    ("rsa", "SHA256"): "1.2.840.113549.1.1.11",
    ("rsa", "SHA384"): "1.2.840.113549.1.1.12",
    ("ed25519", "SHA512"): "1.3.101.112",
}


def _digest_for(key: PrivateKey) -> hashes.HashAlgorithm:
    # Ed25519 hashes itself; RFC 8419 section 3 pairs it with a SHA-512 message digest.
    return signature_hash(key) or hashes.SHA512()


def _kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa"
    return "ed25519"


def _attribute(attr_type: univ.ObjectIdentifier, value: object) -> rfc5652.Attribute:
    attribute = rfc5652.Attribute()
    attribute["attrType"] = attr_type
    attribute["attrValues"].append(rfc5652.AttributeValue(encode_der(value)))
    return attribute


def _signed_attributes_der(attributes: rfc5652.SignedAttributes) -> bytes:
    # What is signed is the DER of the attributes as a SET OF, not their [0] IMPLICIT form
    # (RFC 5652 section 5.4).
    as_set = univ.SetOf(componentType=rfc5652.Attribute())
    for attribute in attributes:
        as_set.append(attribute)
    return encode_der(as_set)


def sign_key_package(
    delivered: PrivateKey, *, signer_key: PrivateKey, signer_chain: Sequence[x509.Certificate]
) -> bytes:
    """DER of a SignedData holding ``delivered`` as an AsymmetricKeyPackage, signed by
    ``signer_key`` whose certificate is ``signer_chain[0]`` (the rest travel with it)."""
    # AsymmetricKeyPackage: SEQUENCE OF OneAsymmetricKey, which a PKCS#8 PrivateKeyInfo
    # (version 0) is; cryptography's DER goes in as it is.
    content = der_tlv(_SEQUENCE, encode_pkcs8(delivered, passphrase=None))
    digest_alg = _digest_for(signer_key)
    digest = hashes.Hash(digest_alg)
    digest.update(content)
    digest_oid = oid(_DIGEST_OIDS[type(digest_alg).__name__])

    signer = signer_chain[0]
    info = rfc5652.SignerInfo()
    info["version"] = 1
    sid = info["sid"]["issuerAndSerialNumber"]
    sid["issuer"] = issuer_name(signer.issuer.public_bytes())
    sid["serialNumber"] = signer.serial_number
    info["digestAlgorithm"]["algorithm"] = digest_oid
    attributes = info["signedAttrs"]
    attributes.append(_attribute(rfc5652.id_contentType, _KEY_PACKAGE))
    attributes.append(_attribute(rfc5652.id_messageDigest, univ.OctetString(digest.finalize())))
    signed = _signed_attributes_der(attributes)
    info["signatureAlgorithm"]["algorithm"] = oid(
        _SIGNATURE_OIDS[(_kind(signer_key), type(digest_alg).__name__)]
    )
    if isinstance(signer_key, ec.EllipticCurvePrivateKey):
        signature = signer_key.sign(signed, ec.ECDSA(digest_alg))
    elif isinstance(signer_key, rsa.RSAPrivateKey):
        signature = signer_key.sign(signed, padding.PKCS1v15(), digest_alg)
    else:
        signature = signer_key.sign(signed)
    info["signature"] = signature

    data = rfc5652.SignedData()
    data["version"] = 3  # eContentType other than id-data (RFC 5652 section 5.1)
    data["digestAlgorithms"].append(info["digestAlgorithm"])
    data["encapContentInfo"]["eContentType"] = _KEY_PACKAGE
    data["encapContentInfo"]["eContent"] = content
    data["signerInfos"].append(info)
    # The certificates are spliced in as DER: through pyasn1 each would be decoded field by
    # field (milliseconds) only to be encoded again. certificates [0] IMPLICIT SET OF comes
    # after encapContentInfo; DER sorts a SET OF by the encodings (X.690 section 11.6).
    fields = der_children(der_content(encode_der(data)))
    if signer_chain:
        certificates = sorted(c.public_bytes(serialization.Encoding.DER) for c in signer_chain)
        fields.insert(3, der_tlv(_IMPLICIT_0, b"".join(certificates)))
    return der_tlv(_SEQUENCE, b"".join(fields))


def _verify(signer: x509.Certificate, signature: bytes, signed: bytes, digest: object) -> None:
    public = signer.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(
            digest, hashes.HashAlgorithm
        ):
            public.verify(signature, signed, ec.ECDSA(digest))
        elif isinstance(public, rsa.RSAPublicKey) and isinstance(digest, hashes.HashAlgorithm):
            public.verify(signature, signed, padding.PKCS1v15(), digest)
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, signed)
        else:
            raise MalformedInput("the key package's signer has a key this node cannot check")
    except InvalidSignature:
        raise MalformedInput("the key package's signature does not verify") from None


def _attribute_value(attributes: rfc5652.SignedAttributes, attr_type: object) -> bytes:
    found = [a for a in attributes if a["attrType"] == attr_type]
    if len(found) != 1 or len(found[0]["attrValues"]) != 1:
        raise MalformedInput("the key package must carry one contentType and one messageDigest")
    return bytes(found[0]["attrValues"][0])


def read_key_package(der: bytes, *, signer: x509.Certificate) -> PrivateKey:
    """The one private key of a SignedData AsymmetricKeyPackage signed by ``signer``.

    MalformedInput when it is not well-formed, not signed by ``signer`` (issuer and serial,
    then the signature), or its digest or content type does not match what is signed.
    """
    data = decode_der(der, rfc5652.SignedData(), what="key package")
    encap = data["encapContentInfo"]
    if encap["eContentType"] != _KEY_PACKAGE or not encap["eContent"].isValue:
        raise MalformedInput("the signed content is not an AsymmetricKeyPackage")
    content = bytes(encap["eContent"])
    if len(data["signerInfos"]) != 1:
        raise MalformedInput("the key package must have exactly one signer")
    info = data["signerInfos"][0]
    sid = info["sid"]
    if (
        sid.getName() != "issuerAndSerialNumber"
        or int(sid["issuerAndSerialNumber"]["serialNumber"]) != signer.serial_number
        or encode_der(sid["issuerAndSerialNumber"]["issuer"]) != signer.issuer.public_bytes()
    ):
        raise MalformedInput("the key package is not signed by the node that answered")
    digest_alg = _DIGESTS.get(oid_text(info["digestAlgorithm"]["algorithm"]))
    if digest_alg is None:
        raise MalformedInput("the key package's digest algorithm is not SHA-2")
    attributes = info["signedAttrs"]
    if not attributes.isValue:
        raise MalformedInput("the key package carries no signed attributes")
    if (
        decode_der(
            _attribute_value(attributes, rfc5652.id_contentType),
            univ.ObjectIdentifier(),
            what="contentType attribute",
        )
        != _KEY_PACKAGE
    ):
        raise MalformedInput("the signed contentType is not the AsymmetricKeyPackage")
    _verify(signer, bytes(info["signature"]), _signed_attributes_der(attributes), digest_alg)
    digest = hashes.Hash(digest_alg)
    digest.update(content)
    expected = decode_der(
        _attribute_value(attributes, rfc5652.id_messageDigest),
        univ.OctetString(),
        what="messageDigest attribute",
    )
    if bytes(expected) != digest.finalize():
        raise MalformedInput("the key package's content does not match its signed digest")
    package = decode_der(content, rfc5958.AsymmetricKeyPackage(), what="AsymmetricKeyPackage")
    if len(package) != 1:
        raise MalformedInput(f"the key package holds {len(package)} keys; expected one")
    return decode_pkcs8(encode_der(package[0]), passphrase=None)
