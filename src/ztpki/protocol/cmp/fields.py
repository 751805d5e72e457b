"""Small CMP values both ways: PKIStatusInfo, PKIFreeText, GeneralizedTime, AlgorithmIdentifier,
InfoTypeAndValue. Shared by the header and the body codecs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from pyasn1.codec.der import decoder, encoder
from pyasn1.type import char, univ, useful
from pyasn1_alt_modules import rfc4210, rfc5280, rfc9480

from ztpki.protocol.cmp import tlv
from ztpki.protocol.cmp.errors import BadDataFormat
from ztpki.protocol.cmp.messages import (
    AlgorithmId,
    FailInfo,
    InfoTypeAndValue,
    PKIStatus,
    StatusInfo,
)

_FAIL_BITS = {bit.value: bit for bit in FailInfo}


def encode_free_text(texts: Iterable[str], into: univ.SequenceOf) -> univ.SequenceOf:
    for text in texts:
        into.append(char.UTF8String(text))
    return into


def decode_free_text(value: univ.SequenceOf) -> tuple[str, ...]:
    return tuple(str(text) for text in value)


def encode_status(info: StatusInfo, into: rfc9480.PKIStatusInfo | None = None) -> univ.Sequence:
    value = into if into is not None else rfc9480.PKIStatusInfo()
    value["status"] = int(info.status)
    if info.text:
        encode_free_text(info.text, value["statusString"])
    if info.fail_info:
        # DER: a named bit list ends at its last set bit (X.690 section 11.2.2).
        top = max(info.fail_info)
        bits = "".join("1" if bit in info.fail_info else "0" for bit in range(top + 1))
        value["failInfo"] = rfc4210.PKIFailureInfo(binValue=bits)
    return value


def decode_status(value: univ.Sequence) -> StatusInfo:
    try:
        status = PKIStatus(int(value["status"]))
    except ValueError:
        raise BadDataFormat(f"unknown PKIStatus {int(value['status'])}") from None
    fail: set[FailInfo] = set()
    if value["failInfo"].isValue:
        for position, bit in enumerate(value["failInfo"]):
            if bit and position in _FAIL_BITS:
                fail.add(_FAIL_BITS[position])
    text = decode_free_text(value["statusString"]) if value["statusString"].isValue else ()
    return StatusInfo(status, frozenset(fail), text)


def encode_time(moment: datetime, into: useful.GeneralizedTime) -> useful.GeneralizedTime:
    # DER GeneralizedTime: UTC, 'Z', whole seconds (X.690 section 11.7).
    return into.clone(moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ"))


def decode_time(value: useful.GeneralizedTime) -> datetime:
    try:
        moment: datetime = value.asDateTime
        return moment.astimezone(UTC)
    except (ValueError, TypeError) as exc:
        raise BadDataFormat(f"a GeneralizedTime does not decode: {exc}") from None


def encode_algorithm(alg: AlgorithmId, into: univ.Sequence | None = None) -> univ.Sequence:
    value = into if into is not None else rfc5280.AlgorithmIdentifier()
    value["algorithm"] = univ.ObjectIdentifier(alg.oid)
    if alg.parameters is not None:
        value["parameters"] = univ.Any(alg.parameters)
    return value


def decode_algorithm(value: univ.Sequence) -> AlgorithmId:
    parameters = value["parameters"]
    return AlgorithmId(str(value["algorithm"]), bytes(parameters) if parameters.isValue else None)


def encode_info(item: InfoTypeAndValue, into: univ.Sequence) -> univ.Sequence:
    into["infoType"] = univ.ObjectIdentifier(item.oid)
    if item.value is not None:
        into["infoValue"] = univ.Any(item.value)
    return into


def decode_info(value: univ.Sequence) -> InfoTypeAndValue:
    info = value["infoValue"]
    return InfoTypeAndValue(str(value["infoType"]), bytes(info) if info.isValue else None)


def der(value: univ.Asn1Item) -> bytes:
    return bytes(encoder.encode(value))


def decode_exact(data: bytes, spec: univ.Asn1Item, *, what: str) -> univ.Asn1Item:
    """DER data of spec with nothing after it, or BadDataFormat naming what it should be."""
    try:
        value, rest = decoder.decode(data, asn1Spec=spec)
    except Exception as exc:  # pyasn1 raises more than PyAsn1Error on hostile input
        raise BadDataFormat(f"{what} is not valid DER: {type(exc).__name__}") from None
    if rest:
        raise BadDataFormat(f"{len(rest)} bytes follow {what}")
    return value


def sequence_der(*encoded: bytes) -> bytes:
    """A DER SEQUENCE of already encoded elements, taken as they are."""
    return tlv.wrap(tlv.SEQUENCE, b"".join(encoded))


def signed_der(value: univ.Sequence) -> bytes:
    """The DER of an opaque certificate or CSR (asn1.Signed), whatever tag its slot has."""
    return sequence_der(*(bytes(value[name]) for name in ("toBeSigned", "algorithm", "signature")))
