"""The CMP codec against openssl's bytes, its own round trips, protection and POPO."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.cmp_openssl import mock_messages

from ztpki.protocol.cmp import (
    BadAlg,
    BadDataFormat,
    BadMessageCheck,
    BadPOP,
    BodyType,
    CertConfBody,
    CertRepBody,
    CertReqBody,
    CertRequest,
    CertStatus,
    CMPError,
    ErrorBody,
    FailInfo,
    GenMsgBody,
    Header,
    InfoTypeAndValue,
    P10crBody,
    PKIConfBody,
    PKIStatus,
    PollRepBody,
    PollReqBody,
    RevRepBody,
    RevReqBody,
    StatusInfo,
    certificate_hash,
    decode_message,
    encode_message,
    old_cert_id,
    protection_certificate,
    sign_cert_request,
    sign_message,
    verify_popo,
    verify_protection,
)
from ztpki.protocol.cmp.messages import (
    AlgorithmId,
    CertId,
    CertResponse,
    PollEntry,
    RevDetails,
)

FUZZ = settings(
    max_examples=int(os.environ.get("ZTPKI_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@cache
def openssl_messages() -> tuple[Path, dict[str, bytes]]:
    directory = Path(tempfile.mkdtemp(prefix="cmp-openssl-"))
    return directory, mock_messages(directory)


def _certificate(name: str) -> x509.Certificate:
    directory, _ = openssl_messages()
    return x509.load_pem_x509_certificate((directory / f"{name}.crt").read_bytes())


# ---------------------------------------------------------------- openssl's messages


CLIENT_SENT = frozenset(
    {"ir", "certConf", "cr", "kur", "p10cr", "rr", "genm", "poll-ir", "pollReq",
     "poll-certConf", "refused-ir"}
)  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["ir", "certConf", "ip", "pkiconf", "cr", "cp", "kur", "kup", "p10cr", "p10cp", "rr",
     "rp", "genm", "genp", "poll-ir", "poll-ip", "pollReq", "poll-final-ip", "poll-certConf",
     "poll-pkiconf", "refused-ir", "refused-ip"],
)  # fmt: skip
def test_ok_openssl_message_decodes_verifies_and_encodes_to_the_same_bytes(name: str) -> None:
    data = openssl_messages()[1][name]
    message = decode_message(data)
    signer = protection_certificate(message)
    verify_protection(message, signer)
    again = encode_message(
        message.header, message.body, protection=message.protection,
        extra_certs=message.extra_certs,
    )  # fmt: skip
    assert again == data
    expected = "client" if name in CLIENT_SENT else "server"
    assert signer.subject == _name(expected)
    assert message.header.sender == _name(expected)


def test_ok_openssl_bodies_carry_what_openssl_put_in_them() -> None:
    messages = {k: decode_message(v) for k, v in openssl_messages()[1].items()}
    new = _certificate("new")
    new_der = new.public_bytes(serialization.Encoding.DER)
    ir = messages["ir"].body
    assert isinstance(ir, CertReqBody) and ir.type is BodyType.IR
    (request,) = ir.requests
    verify_popo(request)
    assert request.subject == _name("new")
    assert request.public_key_der == new.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ip = messages["ip"].body
    assert isinstance(ip, CertRepBody) and ip.responses[0].certificate_der == new_der
    assert ip.responses[0].status.status is PKIStatus.ACCEPTED
    conf = messages["certConf"].body
    assert isinstance(conf, CertConfBody)
    assert conf.statuses[0].cert_hash == certificate_hash(new)
    assert messages["ip"].header.recip_nonce == messages["ir"].header.sender_nonce
    assert messages["cr"].header.implicit_confirm and messages["cp"].header.implicit_confirm
    kur = messages["kur"].body
    assert isinstance(kur, CertReqBody)
    assert old_cert_id(kur.requests[0]) == CertId(_certificate("ca").subject, new.serial_number)
    p10 = messages["p10cr"].body
    assert isinstance(p10, P10crBody)
    assert x509.load_der_x509_csr(p10.csr_der).subject == _name("new")
    rr = messages["rr"].body
    assert isinstance(rr, RevReqBody)
    assert rr.details[0].serial_number == new.serial_number
    assert rr.details[0].reason is x509.ReasonFlags.key_compromise
    assert isinstance(messages["rp"].body, RevRepBody)
    genm = messages["genm"].body
    assert isinstance(genm, GenMsgBody) and genm.items[0].oid == "1.3.6.1.5.5.7.4.2"
    assert isinstance(messages["pollReq"].body, PollReqBody)
    waiting = messages["poll-ip"].body
    assert isinstance(waiting, CertRepBody)
    assert waiting.responses[0].status.status is PKIStatus.WAITING
    refused = messages["refused-ip"].body
    assert isinstance(refused, CertRepBody)
    assert refused.responses[0].status.status is PKIStatus.REJECTION
    assert refused.responses[0].status.fail_info == {FailInfo.NOT_AUTHORIZED}


def test_fail_openssl_message_tampered_or_checked_with_another_key() -> None:
    data = openssl_messages()[1]["ir"]
    message = decode_message(data)
    with pytest.raises(BadMessageCheck):
        verify_protection(message, _certificate("server"))
    # Flip a bit (writing a fixed byte left it unchanged when the byte was already that).
    last = message.protected_part[-1] ^ 1
    tampered = replace(message, protected_part=message.protected_part[:-1] + bytes((last,)))
    with pytest.raises(BadMessageCheck, match="does not verify"):
        verify_protection(tampered, protection_certificate(message))
    with pytest.raises(BadMessageCheck, match="not protected"):
        verify_protection(replace(message, protection=None), protection_certificate(message))
    with pytest.raises(BadMessageCheck, match="extraCerts"):
        protection_certificate(replace(message, extra_certs=()))


# ---------------------------------------------------------------- our own signatures


@cache
def _key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _self_signed(key: object, cn: str) -> x509.Certificate:
    assert isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    )
    name = _name(cn)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(NOW).not_valid_after(NOW.replace(year=2027))
    )  # fmt: skip
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _header(**changes: object) -> Header:
    header = Header(
        sender=_name("device"), recipient=_name("node"), transaction_id=b"t" * 16,
        sender_nonce=b"n" * 16, message_time=NOW,
    )  # fmt: skip
    return replace(header, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "pss"), [("ec", False), ("rsa", False), ("rsa", True),
                                           ("ed25519", False)])  # fmt: skip
def test_ok_signed_message_verifies_and_openssl_reads_it(
    kind: str, pss: bool, tmp_path: Path
) -> None:
    key = _key(kind)
    certificate = _self_signed(key, "device")
    der = certificate.public_bytes(serialization.Encoding.DER)
    body = CertReqBody(BodyType.IR, (sign_cert_request(CertRequest(0, subject=_name("x"),
        public_key_der=key.public_key().public_bytes(serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo)), key),))  # fmt: skip
    data = sign_message(_header(), body, key, extra_certs=(der,), pss=pss)
    message = decode_message(data)
    verify_protection(message, certificate)
    assert isinstance(message.body, CertReqBody)
    verify_popo(message.body.requests[0])
    # Another implementation parses it: openssl's ASN.1 parser walks the whole message.
    (tmp_path / "m.der").write_bytes(data)
    from tests.support.cmp_openssl import run_openssl

    parsed = run_openssl("asn1parse", "-inform", "DER", "-in", tmp_path / "m.der")
    assert parsed.returncode == 0, parsed.stderr


def test_fail_popo_signed_by_another_key() -> None:
    key, other = _key("ec"), ec.generate_private_key(ec.SECP256R1())
    spki = other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    request = sign_cert_request(CertRequest(0, subject=_name("x"), public_key_der=spki), key)
    with pytest.raises(BadPOP):
        verify_popo(request)
    with pytest.raises(BadPOP, match="required"):
        verify_popo(replace(request, popo=None))


def test_fail_mac_and_unknown_algorithms_are_refused_with_a_sentence() -> None:
    key = _key("ec")
    certificate = _self_signed(key, "device")
    message = decode_message(sign_message(_header(), PKIConfBody(), key))
    mac = replace(message, header=replace(message.header,
                  protection_alg=AlgorithmId("1.2.840.113533.7.66.13")))  # fmt: skip
    with pytest.raises(BadMessageCheck, match="MAC-based protection"):
        verify_protection(mac, certificate)
    unknown = replace(message, header=replace(message.header,
                      protection_alg=AlgorithmId("1.2.840.113549.1.1.5")))  # fmt: skip
    with pytest.raises(BadAlg):
        verify_protection(unknown, certificate)


# ---------------------------------------------------------------- round trips


_bytes = st.binary(min_size=1, max_size=40)
_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
_names = st.builds(
    lambda cn, o: x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        + ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)] if o else [])
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=20),
    st.one_of(
        st.none(),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=10),
    ),
)  # fmt: skip
_times = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=0))
_status = st.builds(
    StatusInfo, st.sampled_from(PKIStatus), st.frozensets(st.sampled_from(FailInfo)),
    st.lists(_text, max_size=2).map(tuple),
)  # fmt: skip
_ids = st.integers(min_value=-(2**31), max_value=2**31)
_certs = st.lists(st.just(_self_signed(_key("ec"), "ca").public_bytes(serialization.Encoding.DER)),
                  max_size=2).map(tuple)  # fmt: skip
_spki = st.just(_key("ec").public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
_requests = st.builds(
    CertRequest, _ids, st.one_of(st.none(), _names), st.one_of(st.none(), _names),
    st.one_of(st.none(), _spki),
)  # fmt: skip
_bodies = st.one_of(
    st.builds(CertReqBody, st.sampled_from([BodyType.IR, BodyType.CR, BodyType.KUR]),
              st.lists(_requests, min_size=1, max_size=2).map(tuple)),
    st.builds(CertRepBody, st.sampled_from([BodyType.IP, BodyType.CP, BodyType.KUP]),
              st.lists(st.builds(CertResponse, _ids, _status, st.one_of(st.none(), _certs.map(
                  lambda c: c[0] if c else None))), min_size=1, max_size=2).map(tuple), _certs),
    st.builds(CertConfBody, st.lists(st.builds(CertStatus, _bytes, _ids, st.one_of(
        st.none(), _status)), max_size=2).map(tuple)),
    st.just(PKIConfBody()),
    st.builds(RevReqBody, st.lists(st.builds(RevDetails, _names, st.integers(1, 2**159),
        st.one_of(st.none(), st.sampled_from([x509.ReasonFlags.key_compromise,
        x509.ReasonFlags.superseded]))), min_size=1, max_size=2).map(tuple)),
    st.builds(RevRepBody, st.lists(_status, min_size=1, max_size=2).map(tuple),
              st.lists(st.builds(CertId, _names, st.integers(1, 2**64)), max_size=2).map(tuple)),
    st.builds(GenMsgBody, st.sampled_from([BodyType.GENM, BodyType.GENP]), st.lists(st.builds(
        InfoTypeAndValue, st.sampled_from(["1.3.6.1.5.5.7.4.17", "1.3.6.1.5.5.7.4.2"]),
        st.one_of(st.none(), st.just(b"\x05\x00"))), max_size=2).map(tuple)),
    st.builds(PollReqBody, st.lists(_ids, min_size=1, max_size=2).map(tuple)),
    st.builds(PollRepBody, st.lists(st.builds(PollEntry, _ids, st.integers(0, 3600),
        st.lists(_text, max_size=1).map(tuple)), min_size=1, max_size=2).map(tuple)),
    st.builds(ErrorBody, _status, st.one_of(st.none(), _ids),
              st.lists(_text, max_size=2).map(tuple)),
)  # fmt: skip
_headers = st.builds(
    Header, _names, _names, _bytes, _bytes, st.sampled_from([2, 3]),
    recip_nonce=st.one_of(st.none(), _bytes), message_time=st.one_of(st.none(), _times),
    sender_kid=st.one_of(st.none(), _bytes), implicit_confirm=st.booleans(),
    confirm_wait_time=st.one_of(st.none(), _times),
    free_text=st.lists(_text, max_size=2).map(tuple),
)  # fmt: skip


@pytest.mark.fuzz
@FUZZ
@given(header=_headers, body=_bodies, protection=st.one_of(st.none(), _bytes), extra=_certs)
def test_ok_every_body_round_trips(
    header: Header, body: object, protection: bytes | None, extra: tuple[bytes, ...]
) -> None:
    data = encode_message(header, body, protection=protection, extra_certs=extra)  # type: ignore[arg-type]
    message = decode_message(data)
    assert message.header == header
    if isinstance(body, CertReqBody):
        assert isinstance(message.body, CertReqBody)
        assert [replace(r, der=b"") for r in message.body.requests] == list(body.requests)
    else:
        assert message.body == body
    assert message.protection == protection and message.extra_certs == extra
    assert encode_message(message.header, message.body, protection=protection,
                          extra_certs=extra) == data  # fmt: skip


@pytest.mark.fuzz
@FUZZ
@given(data=st.binary(max_size=600))
def test_fail_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    with contextlib.suppress(CMPError):
        decode_message(data)


EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)
CUTS = st.one_of(st.none(), st.integers(0, 10_000))


def mutated_openssl_message(name: str, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """openssl's message ``name`` with octets overwritten and maybe cut short."""
    data = bytearray(openssl_messages()[1][name])
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data[: cut % len(data)] if cut is not None else data)


@pytest.mark.fuzz
@FUZZ
@given(
    name=st.sampled_from(["ir", "ip", "certConf", "kur", "rr", "genm", "p10cr", "refused-ip"]),
    edits=EDITS,
    cut=CUTS,
)
def test_fail_mutated_openssl_messages_raise_only_typed_errors(
    name: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    mutated = mutated_openssl_message(name, edits, cut)
    try:
        message = decode_message(mutated)
    except CMPError:
        return
    with contextlib.suppress(CMPError):
        verify_protection(message, protection_certificate(message))


def test_fail_trailing_bytes_and_a_body_outside_the_profile() -> None:
    data = openssl_messages()[1]["ir"]
    with pytest.raises(BadDataFormat, match="follow"):
        decode_message(data + b"\x00")
    # The same message with its body's tag changed to [5] (popdecc, not in the profile).
    message = bytearray(data)
    body_at = 4 + 2 + message[5]  # SEQUENCE hdr (4) + header TLV
    assert message[body_at] == 0xA0
    message[body_at] = 0xA5
    with pytest.raises(BadDataFormat):
        decode_message(bytes(message))


def test_fail_header_out_of_order_and_lengths_not_minimal_are_refused() -> None:
    from ztpki.protocol.cmp import tlv
    from ztpki.protocol.cmp.codec import assemble, header_der

    data = openssl_messages()[1]["ir"]
    message = decode_message(data)
    body = tlv.elements(tlv.content(data), what="m")[1][1]
    fields = tlv.elements(tlv.content(header_der(message.header)), what="h")
    # transactionID [4] before messageTime [0]: PKIHeader's order is fixed.
    swapped = [fields[0], fields[1], fields[2], *fields[4:], fields[3]]
    shuffled = tlv.wrap(tlv.SEQUENCE, b"".join(e for _, e in swapped))
    with pytest.raises(BadDataFormat, match="order"):
        decode_message(assemble(shuffled, body))
    # The same header in order decodes; a short length written in the long form does not.
    assert decode_message(assemble(header_der(message.header), body)).header == message.header
    long_form = bytes((0xB3, 0x81, 0x02)) + b"\x05\x00"  # pkiconf, its length as 81 02
    with pytest.raises(BadDataFormat, match="not minimal"):
        decode_message(tlv.wrap(tlv.SEQUENCE, header_der(message.header) + long_form))


def test_ok_popo_is_checked_over_the_certrequest_as_received() -> None:
    # openssl's ir: the POPO signature covers the CertRequest's bytes as openssl wrote them,
    # and decode_message keeps exactly those bytes.
    data = openssl_messages()[1]["ir"]
    message = decode_message(data)
    assert isinstance(message.body, CertReqBody)
    request = message.body.requests[0]
    assert request.der in data
    verify_popo(request)
    with pytest.raises(BadPOP):
        verify_popo(replace(request, der=request.der[:-1] + bytes((request.der[-1] ^ 1,))))
