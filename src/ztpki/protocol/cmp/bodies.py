"""PKIBody both ways: each body dataclass to its pyasn1 choice and back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache

from pyasn1.type import univ
from pyasn1_alt_modules import rfc4211, rfc5280

from ztpki.pki.ocsp_der import REASON_CODES
from ztpki.protocol.cmp import asn1, tlv
from ztpki.protocol.cmp.errors import BadDataFormat
from ztpki.protocol.cmp.fields import (
    decode_algorithm,
    decode_exact,
    decode_free_text,
    decode_info,
    decode_status,
    der,
    encode_algorithm,
    encode_free_text,
    encode_info,
    encode_status,
    signed_der,
)
from ztpki.protocol.cmp.header import integer
from ztpki.protocol.cmp.messages import (
    Body,
    BodyType,
    CertConfBody,
    CertId,
    CertRepBody,
    CertReqBody,
    CertRequest,
    CertResponse,
    CertStatus,
    ErrorBody,
    GenMsgBody,
    InfoTypeAndValue,
    P10crBody,
    PKIConfBody,
    PollEntry,
    PollRepBody,
    PollReqBody,
    ProofOfPossession,
    RevDetails,
    RevRepBody,
    RevReqBody,
    StatusInfo,
)
from ztpki.protocol.cmp.names import decode_general_name, decode_name, encode_name, general_name

_CRL_REASON = "2.5.29.21"
OLD_CERT_ID = "1.3.6.1.5.5.7.5.1.5"


# ---------------------------------------------------------------- certificate requests


def encode_cert_request(request: CertRequest) -> rfc4211.CertRequest:
    """The CertRequest of one CertReqMsg (what a POPO signature covers)."""
    value = rfc4211.CertRequest()
    value["certReqId"] = request.cert_req_id
    template = value["certTemplate"]
    if request.issuer is not None:
        template["issuer"]["rdnSequence"] = encode_name(request.issuer)["rdnSequence"]
    if request.subject is not None:
        template["subject"]["rdnSequence"] = encode_name(request.subject)["rdnSequence"]
    if request.public_key_der is not None:
        spki = decode_exact(
            request.public_key_der, rfc5280.SubjectPublicKeyInfo(), what="the public key"
        )
        template["publicKey"]["algorithm"] = spki["algorithm"]
        template["publicKey"]["subjectPublicKey"] = spki["subjectPublicKey"]
    if request.extensions_der is not None:
        extensions = decode_exact(
            request.extensions_der, rfc5280.Extensions(), what="the extensions"
        )
        target = template["extensions"]
        for extension in extensions:
            target.append(extension)
    for control in request.controls:
        item = value["controls"].getComponentType().clone()
        item["type"] = univ.ObjectIdentifier(control.oid)
        item["value"] = univ.Any(control.value or b"")
        value["controls"].append(item)
    return value


def encode_cert_id(cert_id: CertId, into: univ.Sequence | None = None) -> univ.Sequence:
    value = into if into is not None else rfc4211.CertId()
    value["issuer"] = general_name(cert_id.issuer)
    value["serialNumber"] = cert_id.serial_number
    return value


def decode_cert_id(value: univ.Sequence) -> CertId:
    return CertId(
        decode_general_name(value["issuer"], field="certificate issuer"),
        int(value["serialNumber"]),
    )


def old_cert_id(request: CertRequest) -> CertId | None:
    """kur's oldCertID control (RFC 4211 section 6.5): the certificate being updated."""
    for control in request.controls:
        if control.oid == OLD_CERT_ID and control.value is not None:
            return decode_cert_id(
                decode_exact(control.value, rfc4211.CertId(), what="the oldCertID control")
            )
    return None


def cert_request_der(request: CertRequest) -> bytes:
    return der(encode_cert_request(request))


def _encode_cert_req_messages(body: CertReqBody, into: univ.SequenceOf) -> None:
    for request in body.requests:
        message = into.getComponentType().clone()
        message["certReq"] = encode_cert_request(request)
        popo = request.popo
        if popo is not None:
            if popo.ra_verified:
                message["popo"]["raVerified"] = univ.Null("")
            else:
                signing = message["popo"]["signature"]
                assert popo.algorithm is not None, "a POPO signature needs its algorithm"
                encode_algorithm(popo.algorithm, signing["algorithmIdentifier"])
                signing["signature"] = univ.BitString.fromOctetString(popo.signature)
        into.append(message)


def _received_requests(body: bytes) -> list[tuple[bytes, dict[int, bytes]]]:
    """Each CertReqMsg's CertRequest as the bytes that came (what its POPO signature covers,
    RFC 4211 section 4.1), with its CertTemplate's fields by tag. Called once the schema
    decoded the body, so the framing is known to be sound."""
    found = []
    messages = tlv.single(tlv.content(body), tlv.SEQUENCE, what="the certificate requests")
    for _, message in tlv.elements(messages, what="a CertReqMsg"):
        request = tlv.elements(tlv.content(message), what="a CertReqMsg")[0][1]
        template = tlv.elements(tlv.content(request), what="a CertRequest")[1][1]
        fields = dict(tlv.elements(tlv.content(template), what="a CertTemplate"))
        found.append((request, fields))
    return found


def _implicit(element: bytes | None) -> bytes | None:
    """An [n] IMPLICIT SEQUENCE's element as the untagged SEQUENCE's DER."""
    return None if element is None else bytes((tlv.SEQUENCE,)) + element[1:]


def _decode_cert_request(
    message: univ.Sequence, received: tuple[bytes, dict[int, bytes]]
) -> CertRequest:
    request = message["certReq"]
    template = request["certTemplate"]
    subject = decode_name(template["subject"]) if template["subject"].isValue else None
    issuer = decode_name(template["issuer"]) if template["issuer"].isValue else None
    request_der, fields = received
    # publicKey [6] and extensions [9] (RFC 4211 CertTemplate), taken as received.
    public_key = _implicit(fields.get(0xA6))
    extensions = _implicit(fields.get(0xA9))
    controls: tuple[InfoTypeAndValue, ...] = ()
    if request["controls"].isValue:
        controls = tuple(
            InfoTypeAndValue(str(c["type"]), bytes(c["value"])) for c in request["controls"]
        )
    popo = None
    if message["popo"].isValue:
        choice = message["popo"].getName()
        if choice == "raVerified":
            popo = ProofOfPossession(ra_verified=True)
        elif choice == "signature":
            signing = message["popo"]["signature"]
            if signing["poposkInput"].isValue:
                raise BadDataFormat(
                    "POPOSigningKey with poposkInput is not in the Lightweight CMP profile "
                    "(RFC 9483 section 4.1.1): sign the CertRequest itself"
                )
            popo = ProofOfPossession(
                decode_algorithm(signing["algorithmIdentifier"]),
                signing["signature"].asOctets(),
            )
        else:
            raise BadDataFormat(f"proof of possession by {choice} is not supported")
    return CertRequest(
        cert_req_id=int(request["certReqId"]),
        subject=subject,
        issuer=issuer,
        public_key_der=public_key,
        extensions_der=extensions,
        controls=controls,
        popo=popo,
        der=request_der,
    )


# ---------------------------------------------------------------- certificate responses


def _fill_signed(into: univ.Sequence, data: bytes, *, what: str) -> None:
    """Put a certificate's or CSR's DER into a (tagged) opaque Signed slot."""
    parts = decode_exact(data, asn1.Signed(), what=what)
    for name in ("toBeSigned", "algorithm", "signature"):
        into[name] = parts[name]


def _encode_cert_rep(body: CertRepBody, into: univ.Sequence) -> None:
    for ca in body.ca_pubs:
        into["caPubs"].append(univ.Any(ca))
    responses = into["response"]
    for response in body.responses:
        item = asn1.CertResponse()
        item["certReqId"] = response.cert_req_id
        encode_status(response.status, item["status"])
        if response.certificate_der is not None:
            choice = item["certifiedKeyPair"]["certOrEncCert"]
            _fill_signed(choice["certificate"], response.certificate_der, what="a certificate")
        responses.append(item)


def _decode_cert_rep(kind: BodyType, value: univ.Sequence) -> CertRepBody:
    responses = []
    for item in value["response"]:
        certificate = None
        if item["certifiedKeyPair"].isValue:
            choice = item["certifiedKeyPair"]["certOrEncCert"]
            if choice.getName() != "certificate":
                raise BadDataFormat("an encrypted certificate (encryptedCert) is not supported")
            certificate = signed_der(choice["certificate"])
        responses.append(
            CertResponse(int(item["certReqId"]), decode_status(item["status"]), certificate)
        )
    ca_pubs = tuple(bytes(c) for c in value["caPubs"]) if value["caPubs"].isValue else ()
    return CertRepBody(kind, tuple(responses), ca_pubs)


# ---------------------------------------------------------------- revocation


def _encode_rev_req(body: RevReqBody, into: univ.SequenceOf) -> None:
    for details in body.details:
        item = into.getComponentType().clone()
        template = item["certDetails"]
        template["issuer"]["rdnSequence"] = encode_name(details.issuer)["rdnSequence"]
        template["serialNumber"] = details.serial_number
        if details.reason is not None:
            extension = rfc5280.Extension()
            extension["extnID"] = univ.ObjectIdentifier(_CRL_REASON)
            code = _REASON_CODES[details.reason]
            extension["extnValue"] = der(univ.Enumerated(code))
            item["crlEntryDetails"].append(extension)
        into.append(item)


# RFC 5280 CRLReason codes, as the OCSP encoder writes them.
_REASON_CODES = REASON_CODES
_REASONS = {code: reason for reason, code in _REASON_CODES.items()}


def _decode_rev_req(value: univ.SequenceOf) -> RevReqBody:
    details = []
    for item in value:
        template = item["certDetails"]
        if not template["issuer"].isValue or not template["serialNumber"].isValue:
            raise BadDataFormat("a revocation request must name the issuer and serial number")
        reason = None
        if item["crlEntryDetails"].isValue:
            for extension in item["crlEntryDetails"]:
                if str(extension["extnID"]) == _CRL_REASON:
                    code = decode_exact(
                        bytes(extension["extnValue"]), univ.Enumerated(), what="a CRL reason"
                    )
                    reason = _REASONS.get(int(code))
                    if reason is None:
                        raise BadDataFormat(f"unknown CRL reason code {int(code)}")
        details.append(
            RevDetails(decode_name(template["issuer"]), int(template["serialNumber"]), reason)
        )
    return RevReqBody(tuple(details))


# ---------------------------------------------------------------- the choice


def encode_body(body: Body) -> asn1.PKIBody:
    value = asn1.PKIBody()
    name = body.type.value
    slot = value.getComponentByName(name)
    match body:
        case CertReqBody():
            _encode_cert_req_messages(body, slot)
        case P10crBody():
            _fill_signed(slot, body.csr_der, what="the PKCS#10 request")
        case CertRepBody():
            _encode_cert_rep(body, slot)
        case CertConfBody():
            for status in body.statuses:
                item = slot.getComponentType().clone()
                item["certHash"] = status.cert_hash
                item["certReqId"] = status.cert_req_id
                if status.status is not None:
                    encode_status(status.status, item["statusInfo"])
                if status.hash_alg is not None:
                    encode_algorithm(status.hash_alg, item["hashAlg"])
                slot.append(item)
        case PKIConfBody():
            slot = slot.clone("")
        case RevReqBody():
            _encode_rev_req(body, slot)
        case RevRepBody():
            for info in body.statuses:
                slot["status"].append(encode_status(info))
            for cert_id in body.rev_certs:
                slot["revCerts"].append(encode_cert_id(cert_id))
        case GenMsgBody():
            for entry in body.items:
                slot.append(encode_info(entry, slot.getComponentType().clone()))
        case PollReqBody():
            for cert_req_id in body.cert_req_ids:
                item = slot.getComponentType().clone()
                item["certReqId"] = cert_req_id
                slot.append(item)
        case PollRepBody():
            for poll in body.entries:
                item = slot.getComponentType().clone()
                item["certReqId"] = poll.cert_req_id
                item["checkAfter"] = poll.check_after
                if poll.reason:
                    encode_free_text(poll.reason, item["reason"])
                slot.append(item)
        case ErrorBody():
            encode_status(body.status, slot["pKIStatusInfo"])
            if body.error_code is not None:
                slot["errorCode"] = body.error_code
            if body.details:
                encode_free_text(body.details, slot["errorDetails"])
    value[name] = slot
    return value


def body_der(body: Body, keys: Mapping[int, bytes] | None = None) -> bytes:
    """The DER of body's PKIBody. The bodies the node answers every enrollment with (ip, cp,
    kup, pkiconf) are framed by hand around their DER parts: through pyasn1 a certificate
    would be decoded only to be encoded again. ``keys``: certReqId -> DER of the
    EnvelopedData of a centrally generated key (RFC 9483 section 4.1.6), for those bodies."""
    if isinstance(body, CertRepBody):
        return _cert_rep_der(body, keys or {})
    if isinstance(body, PKIConfBody):
        return _PKI_CONF_DER
    return der(encode_body(body))


# pkiconf [19] EXPLICIT NULL: the same bytes every time.
_PKI_CONF_DER = tlv.wrap(0xA0 | 19, b"\x05\x00")
_IMPLICIT_0 = 0xA0


@lru_cache(maxsize=64)
def _status_der(status: StatusInfo) -> bytes:
    return der(encode_status(status))


def _cert_rep_der(body: CertRepBody, keys: Mapping[int, bytes]) -> bytes:
    responses = []
    for response in body.responses:
        parts = [integer(response.cert_req_id), _status_der(response.status)]
        if response.certificate_der is not None:
            # certOrEncCert: certificate [0] CMPCertificate (explicit: CMPCertificate is a
            # CHOICE); privateKey: [0] EncryptedKey, whose envelopedData is [0] IMPLICIT.
            pair = [tlv.wrap(_IMPLICIT_0, response.certificate_der)]
            enveloped = keys.get(response.cert_req_id)
            if enveloped is not None:
                if not enveloped or enveloped[0] != tlv.SEQUENCE:
                    raise ValueError(
                        "a delivered key's envelope must be the DER of an EnvelopedData"
                    )
                retagged = bytes((_IMPLICIT_0,)) + enveloped[1:]
                pair.append(tlv.wrap(_IMPLICIT_0, retagged))
            parts.append(tlv.wrap(tlv.SEQUENCE, b"".join(pair)))
        responses.append(tlv.wrap(tlv.SEQUENCE, b"".join(parts)))
    content = [tlv.wrap(tlv.SEQUENCE, b"".join(responses))]
    if body.ca_pubs:
        content.insert(0, tlv.wrap(0xA1, tlv.wrap(tlv.SEQUENCE, b"".join(body.ca_pubs))))
    number = asn1.BODY_TAGS[body.type.value]
    return tlv.wrap(0xA0 | number, tlv.wrap(tlv.SEQUENCE, b"".join(content)))


def decode_body(value: asn1.PKIBody, received: bytes) -> Body:
    """The body value decoded from received, the body's DER as it came."""
    name = value.getName()
    slot = value[name]
    kind = BodyType(name)
    if kind in (BodyType.IR, BodyType.CR, BodyType.KUR):
        requests = zip(slot, _received_requests(received), strict=True)
        return CertReqBody(kind, tuple(_decode_cert_request(m, r) for m, r in requests))
    if kind in (BodyType.IP, BodyType.CP, BodyType.KUP):
        return _decode_cert_rep(kind, slot)
    if kind is BodyType.GENM or kind is BodyType.GENP:
        return GenMsgBody(kind, tuple(decode_info(item) for item in slot))
    decoders: dict[BodyType, Callable[[], Body]] = {
        BodyType.P10CR: lambda: P10crBody(signed_der(slot)),
        BodyType.CERT_CONF: lambda: CertConfBody(
            tuple(
                CertStatus(
                    bytes(item["certHash"]),
                    int(item["certReqId"]),
                    decode_status(item["statusInfo"]) if item["statusInfo"].isValue else None,
                    decode_algorithm(item["hashAlg"]) if item["hashAlg"].isValue else None,
                )
                for item in slot
            )
        ),
        BodyType.PKI_CONF: PKIConfBody,
        BodyType.RR: lambda: _decode_rev_req(slot),
        BodyType.RP: lambda: RevRepBody(
            tuple(decode_status(s) for s in slot["status"]),
            tuple(decode_cert_id(c) for c in slot["revCerts"]) if slot["revCerts"].isValue else (),
        ),
        BodyType.POLL_REQ: lambda: PollReqBody(tuple(int(i["certReqId"]) for i in slot)),
        BodyType.POLL_REP: lambda: PollRepBody(
            tuple(
                PollEntry(
                    int(i["certReqId"]),
                    int(i["checkAfter"]),
                    decode_free_text(i["reason"]) if i["reason"].isValue else (),
                )
                for i in slot
            )
        ),
        BodyType.ERROR: lambda: ErrorBody(
            decode_status(slot["pKIStatusInfo"]),
            int(slot["errorCode"]) if slot["errorCode"].isValue else None,
            decode_free_text(slot["errorDetails"]) if slot["errorDetails"].isValue else (),
        ),
    }
    return decoders[kind]()
