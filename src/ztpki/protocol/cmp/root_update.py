"""RootCaKeyUpdateContent (RFC 9480 section 2.14, RFC 9483 section 4.3.2) both ways: the
node's genp value for a device that names an old root, and the device's reading of it.

    RootCaKeyUpdateContent ::= SEQUENCE {
        newWithNew      CMPCertificate,
        newWithOld  [0] CMPCertificate OPTIONAL,
        oldWithNew  [1] CMPCertificate OPTIONAL }

The two optional certificates are explicitly tagged, so their DER is the certificate's inside
a context tag; the functions here move certificates in and out of those tags.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyasn1_alt_modules import rfc5280, rfc9480

from ztpki.pki.asn1 import decode_der, encode_der

ID_IT_ROOT_CA_KEY_UPDATE = "1.3.6.1.5.5.7.4.18"
ID_IT_ROOT_CA_CERT = "1.3.6.1.5.5.7.4.20"
_PARTS = ("tbsCertificate", "signatureAlgorithm", "signature")


@dataclass(frozen=True)
class RootUpdateValue:
    """The DER of each certificate of a root CA key update (None: absent)."""

    new_with_new: bytes
    new_with_old: bytes | None = None
    old_with_new: bytes | None = None


def _certificate(der: bytes) -> rfc5280.Certificate:
    return decode_der(der, rfc5280.Certificate(), what="a CA certificate", ours=True)


def _fill(field: rfc5280.Certificate, der: bytes) -> None:
    value = _certificate(der)
    for name in _PARTS:
        field[name] = value[name]


def _untagged(field: rfc5280.Certificate) -> bytes:
    plain = rfc5280.Certificate()
    for name in _PARTS:
        plain[name] = field[name]
    return encode_der(plain)


def encode_root_update(value: RootUpdateValue) -> bytes:
    content = rfc9480.RootCaKeyUpdateContent()
    content["newWithNew"] = _certificate(value.new_with_new)
    if value.new_with_old is not None:
        _fill(content["newWithOld"], value.new_with_old)
    if value.old_with_new is not None:
        _fill(content["oldWithNew"], value.old_with_new)
    return encode_der(content)


def decode_root_update(der: bytes) -> RootUpdateValue:
    """The certificates of a RootCaKeyUpdateContent; MalformedInput when it is not one."""
    content = decode_der(der, rfc9480.RootCaKeyUpdateContent(), what="rootCaKeyUpdate value")
    optional = [
        _untagged(content[name]) if content[name].isValue else None
        for name in ("newWithOld", "oldWithNew")
    ]
    return RootUpdateValue(_untagged(content["newWithNew"]), *optional)
