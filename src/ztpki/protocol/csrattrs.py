"""EST csrattrs (RFC 7030 section 4.5.2): SEQUENCE OF (OID | Attribute), through pyasn1.

The node names what a device's CSR must hold (the subject attribute the device id goes in,
the signature algorithm, the key type to generate); the device reads back the OIDs named.
Encoding only: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from pyasn1_alt_modules import rfc5652, rfc7030

from ztpki.pki.asn1 import decode_der, encode_der, oid, oid_text

__all__ = ["csrattrs_der", "oids_of_csrattrs"]


def csrattrs_der(
    oids: Sequence[x509.ObjectIdentifier] = (),
    *,
    attributes: Sequence[tuple[x509.ObjectIdentifier, Sequence[x509.ObjectIdentifier]]] = (),
) -> bytes:
    """The DER of a CsrAttrs: bare OIDs first, then Attribute { type, SET OF OID } entries."""
    # clear(): an empty SEQUENCE OF is a value (RFC 7030 allows an empty list), not a schema.
    value = rfc7030.CsrAttrs().clear()
    for item in oids:
        entry = rfc7030.AttrOrOID()
        entry["oid"] = oid(item.dotted_string)
        value.append(entry)
    for attr_type, values in attributes:
        attribute = rfc5652.Attribute()
        attribute["attrType"] = oid(attr_type.dotted_string)
        attribute["attrValues"].clear()
        # The values are OIDs carried as ANY; the DER encoder sorts the SET OF.
        for v in values:
            attribute["attrValues"].append(rfc5652.AttributeValue(encode_der(oid(v.dotted_string))))
        entry = rfc7030.AttrOrOID()
        entry["attribute"] = attribute
        value.append(entry)
    return encode_der(value)


def oids_of_csrattrs(der: bytes) -> list[str]:
    """Dotted OIDs named by a CsrAttrs: bare OIDs, and each Attribute's type."""
    value = decode_der(der, rfc7030.CsrAttrs(), what="csrattrs body")
    found: list[str] = []
    for entry in value:
        name = entry.getName()
        if name == "oid":
            found.append(oid_text(entry["oid"]))
        else:
            found.append(oid_text(entry["attribute"]["attrType"]))
    return found
