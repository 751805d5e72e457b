"""CMS EnvelopedData (RFC 5652 section 6) to one recipient certificate, and opening it.

What the node uses to hand a centrally generated private key to a device (RFC 9483 section
4.1.6): the content is encrypted with a fresh AES-256-CBC key (RFC 9481 section 5), and that
key reaches the device's temporary key either by

- key agreement (EC recipient, RFC 9483 4.1.6.2): ephemeral-static ECDH,
  dhSinglePass-stdDH-sha256kdf-scheme with the ANSI X9.63 KDF and AES-256 key wrap
  (RFC 5753 section 3.1), a KeyAgreeRecipientInfo; or
- key transport (RSA recipient, RFC 9483 4.1.6.1): RSAES-OAEP with SHA-256 and MGF1-SHA-256
  (RFC 4055), a KeyTransRecipientInfo.

Structures are pyasn1-alt-modules' rfc5652 types, every primitive is `cryptography`'s. An
Ed25519 key signs only: it cannot receive a key, and asking to is UnsupportedParameter.
No I/O, no clock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from pyasn1.type import univ
from pyasn1_alt_modules import rfc3565, rfc4055, rfc5280, rfc5652, rfc5753

from ztpki.errors import MalformedInput, UnsupportedParameter
from ztpki.pki.asn1 import decode_der, encode_der, oid_text
from ztpki.pki.keys import PrivateKey

__all__ = ["EnvelopeContent", "envelope_for", "open_envelope"]

_KEY_BYTES = 32  # AES-256 content and key-encryption keys


@dataclass(frozen=True)
class EnvelopeContent:
    """What an EnvelopedData carried: its content type (dotted OID) and the plaintext."""

    content_type: str
    content: bytes


def _algorithm(
    oid: univ.ObjectIdentifier, parameters: object = None
) -> rfc5280.AlgorithmIdentifier:
    algorithm = rfc5280.AlgorithmIdentifier()
    algorithm["algorithm"] = oid
    if parameters is not None:
        algorithm["parameters"] = univ.Any(encode_der(parameters))
    return algorithm


def _issuer_and_serial(certificate: x509.Certificate) -> rfc5652.IssuerAndSerialNumber:
    ias = rfc5652.IssuerAndSerialNumber()
    ias["issuer"] = issuer_name(certificate.issuer.public_bytes())
    ias["serialNumber"] = certificate.serial_number
    return ias


@lru_cache(maxsize=256)
def issuer_name(name_der: bytes) -> rfc5280.Name:
    """A Name made by `cryptography` as pyasn1's value, to be encoded (never changed): a
    fleet's certificates share few issuers, and decoding one costs a tenth of a millisecond."""
    return decode_der(name_der, rfc5280.Name(), what="certificate issuer", ours=True)


def _same_recipient(ias: rfc5652.IssuerAndSerialNumber, certificate: x509.Certificate) -> bool:
    return (
        int(ias["serialNumber"]) == certificate.serial_number
        and encode_der(ias["issuer"]) == certificate.issuer.public_bytes()
    )


@lru_cache(maxsize=8)
def _shared_info(key_wrap_der: bytes) -> bytes:
    # ECC-CMS-SharedInfo (RFC 5753 section 7.2): the wrap algorithm and its key size in bits.
    info = rfc5753.ECC_CMS_SharedInfo()
    info["keyInfo"] = decode_der(key_wrap_der, rfc5280.AlgorithmIdentifier(), what="key wrap")
    info["suppPubInfo"] = (8 * _KEY_BYTES).to_bytes(4, "big")
    return encode_der(info)


def _kek(shared_secret: bytes, key_wrap: rfc5280.AlgorithmIdentifier) -> bytes:
    kdf = X963KDF(hashes.SHA256(), _KEY_BYTES, _shared_info(encode_der(key_wrap)))
    return kdf.derive(shared_secret)


def _oaep() -> asym_padding.OAEP:
    return asym_padding.OAEP(
        mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )


def _key_agreement(
    recipient: x509.Certificate, public: ec.EllipticCurvePublicKey, cek: bytes
) -> rfc5652.RecipientInfo:
    ephemeral = ec.generate_private_key(public.curve)
    key_wrap = _algorithm(rfc3565.id_aes256_wrap)
    wrapped = aes_key_wrap(_kek(ephemeral.exchange(ec.ECDH(), public), key_wrap), cek)

    # Filled in place: pyasn1 takes a tagged CHOICE alternative only as the schema made it.
    info = rfc5652.RecipientInfo()
    kari = info["kari"]
    kari["version"] = 3
    originator = kari["originator"]["originatorKey"]
    originator["algorithm"] = _algorithm(rfc5753.id_ecPublicKey)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    originator["publicKey"] = univ.BitString.fromOctetString(point)
    kari["keyEncryptionAlgorithm"] = _algorithm(
        rfc5753.dhSinglePass_stdDH_sha256kdf_scheme, key_wrap
    )
    entry = rfc5652.RecipientEncryptedKey()
    entry["rid"]["issuerAndSerialNumber"] = _issuer_and_serial(recipient)
    entry["encryptedKey"] = wrapped
    kari["recipientEncryptedKeys"].append(entry)
    return info


def _key_transport(
    recipient: x509.Certificate, public: rsa.RSAPublicKey, cek: bytes
) -> rfc5652.RecipientInfo:
    info = rfc5652.RecipientInfo()
    ktri = info["ktri"]
    ktri["version"] = 0
    ktri["rid"]["issuerAndSerialNumber"] = _issuer_and_serial(recipient)
    ktri["keyEncryptionAlgorithm"] = rfc4055.rSAES_OAEP_SHA256_Identifier
    ktri["encryptedKey"] = public.encrypt(cek, _oaep())
    return info


def envelope_for(recipient: x509.Certificate, content_type: str, content: bytes) -> bytes:
    """The DER of an EnvelopedData that only ``recipient``'s private key opens."""
    public = recipient.public_key()
    cek, iv = os.urandom(_KEY_BYTES), os.urandom(16)
    if isinstance(public, ec.EllipticCurvePublicKey):
        recipient_info = _key_agreement(recipient, public, cek)
        version = 2  # a KeyAgreeRecipientInfo (version 3) makes it 2 (RFC 5652 section 6.1)
    elif isinstance(public, rsa.RSAPublicKey):
        recipient_info = _key_transport(recipient, public, cek)
        version = 0
    else:
        raise UnsupportedParameter(
            f"a key can be delivered only to an EC or RSA key, not {type(public).__name__} "
            "(an Ed25519 key signs but cannot take part in key agreement)"
        )
    padder = padding.PKCS7(128).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()

    enveloped = rfc5652.EnvelopedData()
    enveloped["version"] = version
    enveloped["recipientInfos"].append(recipient_info)
    encrypted = enveloped["encryptedContentInfo"]
    encrypted["contentType"] = univ.ObjectIdentifier(content_type)
    encrypted["contentEncryptionAlgorithm"] = _algorithm(rfc3565.id_aes256_CBC, rfc3565.AES_IV(iv))
    encrypted["encryptedContent"] = encryptor.update(padded) + encryptor.finalize()
    return encode_der(enveloped)


def _cek_by_agreement(
    kari: rfc5652.KeyAgreeRecipientInfo, key: ec.EllipticCurvePrivateKey
) -> bytes:
    scheme = kari["keyEncryptionAlgorithm"]
    if scheme["algorithm"] != rfc5753.dhSinglePass_stdDH_sha256kdf_scheme:
        raise UnsupportedParameter(
            f"key agreement scheme {oid_text(scheme['algorithm'])} is not supported; "
            "expected dhSinglePass-stdDH-sha256kdf-scheme"
        )
    key_wrap = decode_der(
        bytes(scheme["parameters"]), rfc5280.AlgorithmIdentifier(), what="key wrap algorithm"
    )
    if key_wrap["algorithm"] != rfc3565.id_aes256_wrap:
        raise UnsupportedParameter("the key wrap algorithm is not AES-256 key wrap")
    originator = kari["originator"]
    if originator.getName() != "originatorKey":
        raise MalformedInput("a key agreement envelope must carry the originator's public key")
    point = originator["originatorKey"]["publicKey"].asOctets()
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
    except ValueError:
        raise MalformedInput("the originator's public key is not a point on the curve") from None
    kek = _kek(key.exchange(ec.ECDH(), peer), key_wrap)
    (entry,) = kari["recipientEncryptedKeys"]
    return aes_key_unwrap(kek, bytes(entry["encryptedKey"]))


def _is_oaep_sha256(algorithm: rfc5280.AlgorithmIdentifier) -> bool:
    # Compared by OIDs: writers differ on NULL or absent hash parameters (OpenSSL writes NULL).
    if algorithm["algorithm"] != rfc4055.id_RSAES_OAEP or not algorithm["parameters"].isValue:
        return False
    params = decode_der(
        bytes(algorithm["parameters"]), rfc4055.RSAES_OAEP_params(), what="RSAES-OAEP parameters"
    )
    if params["pSourceFunc"].isValue and params["pSourceFunc"]["parameters"].isValue:
        label = decode_der(
            bytes(params["pSourceFunc"]["parameters"]), univ.OctetString(), what="OAEP label"
        )
        if len(label):
            return False
    mgf = params["maskGenFunc"]
    mgf_hash = decode_der(bytes(mgf["parameters"]), rfc5280.AlgorithmIdentifier(), what="MGF1 hash")
    return bool(
        params["hashFunc"]["algorithm"] == rfc4055.id_sha256
        and mgf["algorithm"] == rfc4055.id_mgf1
        and mgf_hash["algorithm"] == rfc4055.id_sha256
    )


def _cek_by_transport(ktri: rfc5652.KeyTransRecipientInfo, key: rsa.RSAPrivateKey) -> bytes:
    if not _is_oaep_sha256(ktri["keyEncryptionAlgorithm"]):
        raise UnsupportedParameter("key transport is not RSAES-OAEP with SHA-256 and MGF1-SHA-256")
    return key.decrypt(bytes(ktri["encryptedKey"]), _oaep())


def _recipient_certificate(info: rfc5652.RecipientInfo) -> rfc5652.IssuerAndSerialNumber:
    kind = info.getName()
    if kind == "kari":
        entries = info["kari"]["recipientEncryptedKeys"]
        if len(entries) != 1:
            raise MalformedInput("a key agreement envelope must name exactly one recipient")
        rid = entries[0]["rid"]
    elif kind == "ktri":
        rid = info["ktri"]["rid"]
    else:
        raise UnsupportedParameter(f"recipient info {kind} is not supported (kari or ktri only)")
    if rid.getName() != "issuerAndSerialNumber":
        raise UnsupportedParameter("the recipient must be named by issuer and serial number")
    return rid["issuerAndSerialNumber"]


def open_envelope(der: bytes, key: PrivateKey, certificate: x509.Certificate) -> EnvelopeContent:
    """The content of an EnvelopedData addressed to ``certificate`` (whose key is ``key``).

    MalformedInput when it is not for this certificate, cannot be decrypted or is not
    well-formed; UnsupportedParameter for algorithms this module does not write.
    """
    enveloped = decode_der(der, rfc5652.EnvelopedData(), what="EnvelopedData")
    infos = enveloped["recipientInfos"]
    if len(infos) != 1:
        raise MalformedInput(f"the envelope names {len(infos)} recipients; expected one")
    if not _same_recipient(_recipient_certificate(infos[0]), certificate):
        raise MalformedInput("the envelope is addressed to another certificate")
    try:
        if infos[0].getName() == "kari" and isinstance(key, ec.EllipticCurvePrivateKey):
            cek = _cek_by_agreement(infos[0]["kari"], key)
        elif infos[0].getName() == "ktri" and isinstance(key, rsa.RSAPrivateKey):
            cek = _cek_by_transport(infos[0]["ktri"], key)
        else:
            raise MalformedInput("the envelope's key delivery does not fit the recipient's key")
    except (InvalidUnwrap, ValueError):
        raise MalformedInput("the envelope's content key does not decrypt with this key") from None
    encrypted = enveloped["encryptedContentInfo"]
    cipher = encrypted["contentEncryptionAlgorithm"]
    if cipher["algorithm"] != rfc3565.id_aes256_CBC or len(cek) != _KEY_BYTES:
        raise UnsupportedParameter("the content is not encrypted with AES-256-CBC")
    iv = decode_der(bytes(cipher["parameters"]), rfc3565.AES_IV(), what="AES IV")
    body = encrypted["encryptedContent"]
    if not body.isValue or len(body) % 16 or len(iv) != 16:
        raise MalformedInput("the envelope's encrypted content is missing or not whole blocks")
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(bytes(iv))).decryptor()
    padded = decryptor.update(bytes(body)) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise MalformedInput("the envelope's content does not decrypt with this key") from None
    return EnvelopeContent(oid_text(encrypted["contentType"]), plain)
