"""The ASN.1 schema of PKIMessage (RFC 4210 / RFC 9480) as pyasn1 types, with every certificate
and PKCS#10 request kept as opaque DER.

pyasn1-alt-modules' rfc9480 describes the whole message, but decoding an X.509 certificate
field by field in pure Python costs several milliseconds each, and the node only ever hands
certificates to `cryptography`. So the bodies and fields that carry certificates are declared
here again with ``univ.Any`` in place of CMPCertificate and CertificationRequest; everything
else (header, CertTemplate, PKIStatusInfo, certConf, rr, genm, poll...) is rfc9480's own types.
"""

from __future__ import annotations

from pyasn1.type import constraint, namedtype, tag, univ
from pyasn1_alt_modules import rfc4210, rfc4211, rfc9480

MAX = float("inf")


def _explicit(number: int) -> tag.Tag:
    return tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, number)


def _certificates(number: int) -> univ.SequenceOf:
    """SEQUENCE SIZE (1..MAX) OF CMPCertificate, explicitly tagged, certificates opaque."""
    return univ.SequenceOf(componentType=univ.Any()).subtype(
        subtypeSpec=constraint.ValueSizeConstraint(1, MAX), explicitTag=_explicit(number)
    )


class Signed(univ.Sequence):
    """A certificate or PKCS#10 request, its three parts left undecoded. (A bare ``univ.Any``
    inside a CHOICE matches every tag in pyasn1, so a choice member needs this shape.)"""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("toBeSigned", univ.Any()),
        namedtype.NamedType("algorithm", univ.Any()),
        namedtype.NamedType("signature", univ.Any()),
    )


class CertOrEncCert(univ.Choice):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("certificate", Signed().subtype(explicitTag=_explicit(0))),
        namedtype.NamedType(
            "encryptedCert", rfc4211.EncryptedKey().subtype(explicitTag=_explicit(1))
        ),
    )


class CertifiedKeyPair(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("certOrEncCert", CertOrEncCert()),
        namedtype.OptionalNamedType(
            "privateKey", rfc4211.EncryptedKey().subtype(explicitTag=_explicit(0))
        ),
        namedtype.OptionalNamedType(
            "publicationInfo", rfc4211.PKIPublicationInfo().subtype(explicitTag=_explicit(1))
        ),
    )


class CertResponse(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("certReqId", univ.Integer()),
        namedtype.NamedType("status", rfc9480.PKIStatusInfo()),
        namedtype.OptionalNamedType("certifiedKeyPair", CertifiedKeyPair()),
        namedtype.OptionalNamedType("rspInfo", univ.OctetString()),
    )


class CertRepMessage(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("caPubs", _certificates(1)),
        namedtype.NamedType("response", univ.SequenceOf(componentType=CertResponse())),
    )


# The body choices this codec reads and writes, by wire name, with their context tag numbers
# (RFC 4210 section 5.1.2). The others (popdecc, krr, ckuann, nested...) are not in the
# Lightweight CMP profile and decode as an unsupported body.
_BODY_TYPES: dict[str, tuple[int, univ.Asn1Item]] = {
    "ir": (0, rfc4211.CertReqMessages()),
    "ip": (1, CertRepMessage()),
    "cr": (2, rfc4211.CertReqMessages()),
    "cp": (3, CertRepMessage()),
    "p10cr": (4, Signed()),
    "kur": (7, rfc4211.CertReqMessages()),
    "kup": (8, CertRepMessage()),
    "rr": (11, rfc4210.RevReqContent()),
    "rp": (12, rfc4210.RevRepContent()),
    "pkiconf": (19, rfc4210.PKIConfirmContent()),
    "genm": (21, rfc9480.GenMsgContent()),
    "genp": (22, rfc9480.GenRepContent()),
    "error": (23, rfc9480.ErrorMsgContent()),
    "certConf": (24, rfc9480.CertConfirmContent()),
    "pollReq": (25, rfc4210.PollReqContent()),
    "pollRep": (26, rfc9480.PollRepContent()),
}


# Wire name -> context tag number, for the bodies encoded by hand.
BODY_TAGS = {name: number for name, (number, _) in _BODY_TYPES.items()}


class PKIBody(univ.Choice):
    componentType = namedtype.NamedTypes(
        *(
            namedtype.NamedType(name, spec.subtype(explicitTag=_explicit(number)))
            for name, (number, spec) in _BODY_TYPES.items()
        )
    )


class PKIMessage(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("header", rfc9480.PKIHeader()),
        namedtype.NamedType("body", PKIBody()),
        namedtype.OptionalNamedType(
            "protection",
            rfc4210.PKIProtection().subtype(
                explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatSimple, 0)
            ),
        ),
        namedtype.OptionalNamedType("extraCerts", _certificates(1)),
    )


class ProtectedPart(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("header", rfc9480.PKIHeader()),
        namedtype.NamedType("body", PKIBody()),
    )
