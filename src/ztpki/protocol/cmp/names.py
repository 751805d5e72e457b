"""x509.Name <-> the pyasn1 Name and directoryName GeneralName of a CMP header or template."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import tag
from pyasn1_alt_modules import rfc5280

from ztpki.protocol.cmp.errors import BadDataFormat

# Universal tag numbers of the directory string types, as cryptography names them.
_STRING_TYPES = {t.value: t for t in _ASN1Type}
_ENCODINGS = {
    _ASN1Type.UTF8String: "utf-8",
    _ASN1Type.BMPString: "utf-16-be",
    _ASN1Type.UniversalString: "utf-32-be",
}


def encode_name(name: x509.Name) -> rfc5280.Name:
    decoded, _ = decoder.decode(name.public_bytes(), asn1Spec=rfc5280.Name())
    return decoded


def general_name(name: x509.Name) -> rfc5280.GeneralName:
    value = rfc5280.GeneralName()
    directory = value.getComponentByName("directoryName")
    # directoryName is [4] EXPLICIT Name: fill the tagged component from the untagged value.
    value["directoryName"] = directory.clone(cloneValueFlag=False).setComponentByPosition(
        0, encode_name(name)[0]
    )
    return value


def decode_name(value: rfc5280.Name) -> x509.Name:
    """An x509.Name from a decoded Name, keeping each attribute's string type."""
    rdns = []
    try:
        for rdn in value["rdnSequence"]:
            attributes = []
            for atv in rdn:
                string, rest = decoder.decode(bytes(atv["value"]))
                if rest or not string.tagSet or string.tagSet[0][0] != tag.tagClassUniversal:
                    raise BadDataFormat("a name attribute is not a directory string")
                kind = _STRING_TYPES.get(string.tagSet[0][2])
                if kind is None:
                    raise BadDataFormat("a name attribute is not a directory string")
                text = bytes(string).decode(_ENCODINGS.get(kind, "latin-1"))
                attributes.append(
                    x509.NameAttribute(x509.ObjectIdentifier(str(atv["type"])), text, _type=kind)
                )
            if not attributes:
                raise BadDataFormat("a name has an empty relative distinguished name")
            rdns.append(x509.RelativeDistinguishedName(attributes))
    except (PyAsn1Error, ValueError, UnicodeDecodeError) as exc:
        raise BadDataFormat(f"a name does not decode: {exc}") from None
    return x509.Name(rdns)


def decode_general_name(value: rfc5280.GeneralName, *, field: str) -> x509.Name:
    """The directoryName of a header's sender or recipient (RFC 9483 section 3.1)."""
    if value.getName() != "directoryName":
        raise BadDataFormat(f"the header's {field} must be a directoryName, not {value.getName()}")
    return decode_name(value["directoryName"])


def name_der(value: rfc5280.Name) -> bytes:
    return bytes(encoder.encode(value))
