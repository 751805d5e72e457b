"""XML enrollment codec: round trips, refusals of malformed and hostile XML, secrecy, the XSD
and the examples of docs/xml-enrollment.md."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from ztpki.errors import MalformedInput
from ztpki.pki.keys import KeySpec
from ztpki.protocol.enrollment import (
    NAMESPACE,
    EnrollmentAnswer,
    EnrollmentError,
    EnrollmentParameters,
    EnrollmentRequest,
    ErrorCode,
    InvalidEnrollmentMessage,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    request_id_of,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "xml-enrollment.md"
FUZZ = settings(
    max_examples=int(os.environ.get("ZTPKI_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PASSPHRASE = b"Sesame-Opens-7-Doors"
NS = f'xmlns="{NAMESPACE}"'


# --- material built once per process (hypothesis forbids function-scoped fixtures) ------


@dataclass(frozen=True)
class Material:
    root_der: bytes
    leaf_der: bytes
    csr_der: bytes
    key_der: bytes


@cache
def material() -> Material:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Root")])
    start = datetime(2025, 1, 1, tzinfo=UTC)

    def certificate(subject: str, serial: int) -> bytes:
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-1")]))
        .sign(key, hashes.SHA256())
    )
    return Material(
        root_der=certificate("Test Root", 1),
        leaf_der=certificate("device-1", 2),
        csr_der=csr.public_bytes(serialization.Encoding.DER),
        key_der=key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE),
        ),
    )


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


def full_request() -> EnrollmentRequest:
    return EnrollmentRequest(
        request_id="req-1",
        device_id="device-1",
        ca="ops",
        parameters=EnrollmentParameters(
            key_algorithm=KeySpec.RSA_3072,
            validity_days=730,
            organization="Acme & Söhne <GmbH>",
            organizational_unit="Line 1",
            locality="Zürich",
            country="CH",
            email="pki@acme.example",
            encrypt_private_key=PASSPHRASE,
            include_ca_certificates=False,
            dns_names=("node.acme.example",),
            ip_addresses=("192.0.2.1", "2001:db8::1"),
        ),
        reissue=True,
    )


def full_answer() -> EnrollmentAnswer:
    m = material()
    return EnrollmentAnswer(
        request_id="req-1",
        certificate_der=m.leaf_der,
        ca_certificates_der=(m.root_der,),
        private_key_der=m.key_der,
        private_key_encrypted=True,
    )


def request_xml(inner: str, attributes: str = 'id="r1"') -> bytes:
    return f"<EnrollmentRequest {NS} {attributes}>{inner}</EnrollmentRequest>".encode()


def with_parameters(parameters: str) -> bytes:
    return request_xml(f"<DeviceId>d1</DeviceId><Parameters>{parameters}</Parameters>")


def answer_xml(inner: str, attributes: str = 'requestId="r1"') -> bytes:
    return f"<EnrollmentAnswer {NS} {attributes}>{inner}</EnrollmentAnswer>".encode()


def error_xml(message: str, code: str = "internal") -> bytes:
    return (
        f'<EnrollmentError {NS} requestId="r1" code="{code}">{message}</EnrollmentError>'.encode()
    )


def refusal(decode: object, data: bytes) -> str:
    assert callable(decode)
    with pytest.raises(MalformedInput) as caught:
        decode(data)
    return caught.value.message


# --- strategies -----------------------------------------------------------------------------

XML_CHARS = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\ufffe\uffff")
IDENTIFIERS = st.from_regex(r"[A-Za-z0-9._\-]{1,64}", fullmatch=True)
TEXTS = st.text(XML_CHARS, min_size=1, max_size=64)
LABELS = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", fullmatch=True)
DNS_NAMES = st.lists(LABELS, min_size=1, max_size=4).map(".".join).filter(lambda n: len(n) <= 253)
LOCAL_PARTS = st.from_regex(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,16}(\.[A-Za-z0-9_-]{1,8}){0,2}", fullmatch=True
)
EMAILS = st.builds("{}@{}".format, LOCAL_PARTS, DNS_NAMES).filter(lambda e: len(e) <= 128)
PARAMETERS = st.builds(
    EnrollmentParameters,
    key_algorithm=st.none() | st.sampled_from(KeySpec),
    validity_days=st.none() | st.integers(1, 36500),
    organization=st.none() | TEXTS,
    organizational_unit=st.none() | TEXTS,
    locality=st.none() | TEXTS,
    country=st.none() | st.from_regex(r"[A-Z]{2}", fullmatch=True),
    email=st.none() | EMAILS,
    encrypt_private_key=st.none()
    | st.text(XML_CHARS, min_size=8, max_size=256).map(lambda s: s.encode("utf-8")),
    include_ca_certificates=st.booleans(),
    dns_names=st.lists(DNS_NAMES, max_size=16).map(tuple),
    ip_addresses=st.lists(st.ip_addresses().map(str), max_size=16).map(tuple),
)


@st.composite
def requests(draw: st.DrawFn) -> EnrollmentRequest:
    return EnrollmentRequest(
        request_id=draw(IDENTIFIERS),
        device_id=draw(IDENTIFIERS),
        ca=draw(st.none() | IDENTIFIERS),
        parameters=draw(PARAMETERS),
        csr_der=draw(st.none() | st.just(material().csr_der)),
        reissue=draw(st.booleans()),
    )


@st.composite
def answers(draw: st.DrawFn) -> EnrollmentAnswer:
    certificates = st.sampled_from([material().root_der, material().leaf_der])
    key = draw(st.none() | st.binary(min_size=1, max_size=3000))
    return EnrollmentAnswer(
        request_id=draw(IDENTIFIERS),
        certificate_der=draw(certificates),
        ca_certificates_der=tuple(draw(st.lists(certificates, max_size=10))),
        private_key_der=key,
        private_key_encrypted=key is not None and draw(st.booleans()),
    )


ERRORS = st.builds(
    EnrollmentError,
    request_id=IDENTIFIERS,
    code=st.sampled_from(ErrorCode),
    message=st.text(XML_CHARS, min_size=1, max_size=1024),
)


# --- round trips ------------------------------------------------------------------------------


@PROPERTY
@given(requests())
def test_ok_request_round_trip(request: EnrollmentRequest) -> None:
    data = encode_request(request)
    assert decode_request(data) == request
    assert encode_request(decode_request(data)) == data


@PROPERTY
@given(answers())
def test_ok_answer_round_trip(answer: EnrollmentAnswer) -> None:
    data = encode_answer(answer)
    assert decode_answer(data) == answer


@PROPERTY
@given(ERRORS)
def test_ok_error_round_trip(error: EnrollmentError) -> None:
    assert decode_answer(encode_answer(error)) == error


def test_ok_full_request_round_trip() -> None:
    request = full_request()
    data = encode_request(request)
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert decode_request(data) == request
    assert request_id_of(data) == "req-1"


def test_ok_minimal_request_omits_defaults() -> None:
    data = encode_request(EnrollmentRequest(request_id="r1", device_id="d1"))
    assert b"Parameters" not in data
    assert b"reissue" not in data
    root = etree.fromstring(data)
    assert root.tag == f"{{{NAMESPACE}}}EnrollmentRequest"
    assert decode_request(data) == EnrollmentRequest(request_id="r1", device_id="d1")


def test_ok_include_ca_certificates_written_only_when_false() -> None:
    on = EnrollmentParameters(validity_days=1)
    off = EnrollmentParameters(validity_days=1, include_ca_certificates=False)
    request = EnrollmentRequest(request_id="r1", device_id="d1", parameters=on)
    assert b"IncludeCACertificates" not in encode_request(request)
    request = EnrollmentRequest(request_id="r1", device_id="d1", parameters=off)
    assert b"<IncludeCACertificates>false<" in encode_request(request)


def test_ok_answer_with_csr_has_no_private_key() -> None:
    answer = EnrollmentAnswer(request_id="r1", certificate_der=material().leaf_der)
    data = encode_answer(answer)
    assert b"PrivateKey" not in data and b"CACertificates" not in data
    assert decode_answer(data) == answer


def test_ok_answer_chain_order_kept() -> None:
    m = material()
    answer = EnrollmentAnswer("r1", m.leaf_der, (m.leaf_der, m.root_der))
    assert decode_answer(encode_answer(answer)).ca_certificates_der == (m.leaf_der, m.root_der)


def test_ok_request_with_csr() -> None:
    request = EnrollmentRequest(request_id="r1", device_id="d1", csr_der=material().csr_der)
    assert decode_request(encode_request(request)).csr_der == material().csr_der


def _public_key_der() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_ok_request_with_a_proven_public_key() -> None:
    spki = _public_key_der()
    request = EnrollmentRequest(request_id="r1", device_id="d1", public_key_der=spki)
    assert decode_request(encode_request(request)) == request


def test_fail_request_with_csr_and_public_key_or_a_public_key_not_der() -> None:
    with pytest.raises(InvalidEnrollmentMessage, match="not both"):
        EnrollmentRequest("r1", "d1", csr_der=material().csr_der, public_key_der=_public_key_der())
    document = encode_request(EnrollmentRequest("r1", "d1", public_key_der=_public_key_der()))
    broken = re.sub(rb"<PublicKey>[^<]*</PublicKey>", b"<PublicKey>AAAA</PublicKey>", document)
    with pytest.raises(MalformedInput):
        decode_request(broken)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            with_parameters("<KeyAlgorithm>\n  ed25519\n</KeyAlgorithm>"),
            EnrollmentParameters(key_algorithm=KeySpec.ED25519),
            id="ok-enum-whitespace",
        ),
        pytest.param(
            with_parameters("<ValidityDays> 90 </ValidityDays>"),
            EnrollmentParameters(validity_days=90),
            id="ok-integer-whitespace",
        ),
        pytest.param(
            with_parameters("<IncludeCACertificates> 0 </IncludeCACertificates>"),
            EnrollmentParameters(include_ca_certificates=False),
            id="ok-boolean-digit",
        ),
        pytest.param(
            with_parameters("<Organization>Ac<!-- note -->me</Organization>"),
            EnrollmentParameters(organization="Acme"),
            id="ok-comment-ignored",
        ),
        pytest.param(
            with_parameters("<Organization><![CDATA[A&B <x>]]></Organization>"),
            EnrollmentParameters(organization="A&B <x>"),
            id="ok-cdata",
        ),
        pytest.param(
            with_parameters("<Locality>&#x4D;&amp;&lt;</Locality>"),
            EnrollmentParameters(locality="M&<"),
            id="ok-predefined-entities-and-char-refs",
        ),
        pytest.param(with_parameters(""), EnrollmentParameters(), id="ok-empty-parameters"),
    ],
)
def test_ok_lenient_forms(data: bytes, expected: EnrollmentParameters) -> None:
    assert decode_request(data).parameters == expected


def test_ok_wrapped_base64_and_prefix_and_declaration() -> None:
    csr = b64(material().csr_der)
    wrapped = "\n".join(csr[i : i + 64] for i in range(0, len(csr), 64))
    data = (
        f'\ufeff<?xml version="1.0" encoding="utf-8" standalone="yes"?>\n'
        f'<e:EnrollmentRequest xmlns:e="{NAMESPACE}" id="r1" reissue="1">\n'
        f"  <e:DeviceId>d1</e:DeviceId>\n  <e:CSR>\n{wrapped}\n  </e:CSR>\n"
        f"</e:EnrollmentRequest>\n"
    ).encode()
    request = decode_request(data)
    assert request.csr_der == material().csr_der
    assert request.reissue is True


# --- refusals -------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<EnrollmentRequest xmlns="urn:ztpki:enrollment:1" id="r1"><DeviceId>&lol9;</DeviceId>
</EnrollmentRequest>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<EnrollmentRequest xmlns="urn:ztpki:enrollment:1" id="r1"><DeviceId>d</DeviceId>
<Parameters><Organization>&xxe;</Organization></Parameters></EnrollmentRequest>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE EnrollmentRequest SYSTEM "http://127.0.0.1:9/evil.dtd">
<EnrollmentRequest xmlns="urn:ztpki:enrollment:1" id="r1"><DeviceId>d</DeviceId>
</EnrollmentRequest>"""
PARAMETER_ENTITY = b"""<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>
<EnrollmentRequest xmlns="urn:ztpki:enrollment:1" id="r1"><DeviceId>d</DeviceId>
</EnrollmentRequest>"""
LOWERCASE_DOCTYPE = b'<!doctype r [<!entity x "y">]><EnrollmentRequest/>'
XINCLUDE = request_xml(
    '<DeviceId>d</DeviceId><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
    'href="file:///etc/passwd" parse="text"/>'
)
SCHEMA_LOCATION_TYPE = request_xml(
    '<DeviceId xmlns:xs="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="xs:string">a b</DeviceId>'
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(BILLION_LAUGHS, "DOCTYPE or ENTITY", id="fail-billion-laughs"),
        pytest.param(XXE, "DOCTYPE or ENTITY", id="fail-xxe-file"),
        pytest.param(EXTERNAL_DTD, "DOCTYPE or ENTITY", id="fail-external-dtd"),
        pytest.param(PARAMETER_ENTITY, "DOCTYPE or ENTITY", id="fail-parameter-entity"),
        pytest.param(LOWERCASE_DOCTYPE, "DOCTYPE or ENTITY", id="fail-lowercase-doctype"),
        pytest.param(
            request_xml("<DeviceId>&ext;</DeviceId>"),
            "reference to an undefined entity",
            id="fail-entity-ref",
        ),
        pytest.param(
            b'<?xml version="1.0"?><?xml-stylesheet href="x"?>'
            + request_xml("<DeviceId>d</DeviceId>"),
            "processing instruction",
            id="fail-processing-instruction",
        ),
        pytest.param(
            request_xml("<DeviceId>d<?php x?></DeviceId>"),
            "processing instruction",
            id="fail-processing-instruction-inside",
        ),
        pytest.param(
            XINCLUDE,
            "XInclude}include': This element is not expected",
            id="fail-xinclude-not-processed",
        ),
        pytest.param(SCHEMA_LOCATION_TYPE, "xsi:type", id="fail-xsi-type-substitution"),
        pytest.param(b"", "empty", id="fail-empty"),
        pytest.param(b"\x00\x01\x02garbage", "not well-formed", id="fail-binary"),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>")[:-9], "not well-formed", id="fail-truncated"
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>") + b"<x/>",
            "not well-formed",
            id="fail-trailing-content",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>").replace(NAMESPACE.encode(), b"urn:other"),
            "(urn:other) EnrollmentRequest",
            id="fail-wrong-namespace",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>").replace(NS.encode(), b""),
            "got 'EnrollmentRequest'",
            id="fail-no-namespace",
        ),
        pytest.param(
            answer_xml(f"<Certificate>{b64(b'x')}</Certificate>"),
            "expected EnrollmentRequest",
            id="fail-wrong-root",
        ),
        pytest.param(
            request_xml("<CA>ops</CA>"),
            "Element 'CA': This element is not expected",
            id="fail-missing-device-id",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>", attributes=""),
            "attribute 'id' is required",
            id="fail-missing-id",
        ),
        pytest.param(
            request_xml("<DeviceId>a b</DeviceId>"),
            "DeviceId 'a b' is not 1-64 characters of A-Z a-z 0-9 . _ -",
            id="fail-device-id-charset",
        ),
        pytest.param(
            request_xml("<DeviceId>" + "d" * 65 + "</DeviceId>"),
            "DeviceId 'ddd",
            id="fail-device-id-length",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>", 'id="r 1"'),
            "id 'r 1' is not",
            id="fail-request-id",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>", 'id="r1" reissue="yes"'),
            "reissue 'yes' is not true or false",
            id="fail-reissue-not-boolean",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>", 'id="r1" extra="1"'),
            "attribute 'extra' is not allowed",
            id="fail-unknown-attribute",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId><DeviceId>e</DeviceId>"),
            "Element 'DeviceId': This element is not expected",
            id="fail-duplicate-element",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId><Extra/>"),
            "Element 'Extra': This element is not expected",
            id="fail-unknown-element",
        ),
        pytest.param(
            request_xml("<DeviceId>d<b/></DeviceId>"),
            "Element content is not allowed",
            id="fail-nested-element",
        ),
        pytest.param(
            request_xml("text<DeviceId>d</DeviceId>"), "Character content", id="fail-mixed-content"
        ),
        pytest.param(
            with_parameters("<Country>DE</Country><KeyAlgorithm>ec-p256</KeyAlgorithm>"),
            "Element 'KeyAlgorithm': This element is not expected",
            id="fail-parameter-order",
        ),
        pytest.param(
            with_parameters("<KeyAlgorithm>dsa-1024</KeyAlgorithm>"),
            "KeyAlgorithm 'dsa-1024' is not one of ec-p256",
            id="fail-unknown-key-algorithm",
        ),
        pytest.param(
            with_parameters("<ValidityDays>0</ValidityDays>"),
            "ValidityDays '0' is not",
            id="fail-validity-zero",
        ),
        pytest.param(
            with_parameters("<ValidityDays>36501</ValidityDays>"),
            "ValidityDays '36501'",
            id="fail-validity-too-long",
        ),
        pytest.param(
            with_parameters("<ValidityDays>0365</ValidityDays>"),
            "ValidityDays '0365'",
            id="fail-validity-leading-zero",
        ),
        pytest.param(
            with_parameters("<ValidityDays>" + "1" * 5000 + "</ValidityDays>"),
            "(5000 characters)",
            id="fail-validity-huge-number",
        ),
        pytest.param(
            with_parameters("<Country>de</Country>"),
            "Country 'de' is not 2 upper-case",
            id="fail-country",
        ),
        pytest.param(
            with_parameters("<Organization></Organization>"),
            "Organization '' is not",
            id="fail-text-empty",
        ),
        pytest.param(
            with_parameters("<Organization>" + "o" * 65 + "</Organization>"),
            "(65 characters) is not 1-64 characters",
            id="fail-text-too-long",
        ),
        pytest.param(
            with_parameters("<Locality>a&#x85;b</Locality>"),
            "Locality 'a\\x85b' is not 1-64 characters without control characters",
            id="fail-text-control-character",
        ),
        pytest.param(
            with_parameters("<Locality>a&#9;b</Locality>"), "Locality 'a\\tb'", id="fail-text-tab"
        ),
        pytest.param(
            with_parameters("<Email>no-at-sign</Email>"), "Email 'no-at-sign'", id="fail-email"
        ),
        pytest.param(
            with_parameters("<Email>" + "a" * 120 + "@example.com</Email>"),
            "at most 128 characters",
            id="fail-email-too-long",
        ),
        pytest.param(
            with_parameters("<DnsName>*.example.com</DnsName>"),
            "DnsName '*.example.com'",
            id="fail-dns-wildcard",
        ),
        pytest.param(
            with_parameters("<DnsName>a.example</DnsName>" * 17),
            "Element 'DnsName': This element is not expected",
            id="fail-too-many-dns-names",
        ),
        pytest.param(
            with_parameters("<IpAddress>10.0.0.256</IpAddress>"),
            "IpAddress '10.0.0.256' is not an IPv4 or IPv6",
            id="fail-ip-address",
        ),
        pytest.param(
            with_parameters("<IpAddress>fe80::1%eth0</IpAddress>"),
            "IpAddress 'fe80::1%eth0'",
            id="fail-ip-zone",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId><CSR>not base64!</CSR>"),
            "CSR is not base64",
            id="fail-csr-base64",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId><CSR>AAA=AAA=</CSR>"),
            "CSR is not base64",
            id="fail-csr-base64-inner-padding",
        ),
        pytest.param(
            request_xml(f"<DeviceId>d</DeviceId><CSR>{b64(b'not a csr')}</CSR>"),
            "CSR is not a DER PKCS#10",
            id="fail-csr-not-der",
        ),
        pytest.param(
            request_xml(f"<DeviceId>d</DeviceId><CSR>{b64(material().leaf_der)}</CSR>"),
            "CSR is not a DER PKCS#10",
            id="fail-csr-is-a-certificate",
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId><CSR></CSR>"),
            "CSR is not base64",
            id="fail-csr-empty",
        ),
        pytest.param(
            request_xml(f"<DeviceId>d</DeviceId><CSR>{b64(bytes(65537))}</CSR>"),
            "CSR is not base64 of a DER PKCS#10 request of 1 byte to 64 KiB",
            id="fail-csr-too-large",
        ),
        pytest.param(
            b'<?xml version="1.0" encoding="ISO-8859-1"?>' + request_xml("<DeviceId>d</DeviceId>"),
            "declares encoding 'ISO-8859-1'",
            id="fail-latin1-declared",
        ),
        pytest.param(
            '<?xml version="1.0" encoding="UTF-16"?><EnrollmentRequest/>'.encode("utf-16"),
            "UTF-16",
            id="fail-utf16",
        ),
        pytest.param(
            '<EnrollmentRequest id="r1"/>'.encode("utf-16-le"),
            "not well-formed",
            id="fail-utf16-without-bom",
        ),
        pytest.param(
            request_xml(
                "<DeviceId>d</DeviceId><Parameters><Locality>M\xfcnchen</Locality></Parameters>"
            ).replace(b"M\xc3\xbcnchen", b"M\xfcnchen"),
            "bytes that are not UTF-8",
            id="fail-invalid-utf8",
        ),
        pytest.param(
            b'<?xml version="1.1"?>' + request_xml("<DeviceId>d</DeviceId>"),
            "XML version '1.1'",
            id="fail-xml-1-1",
        ),
        pytest.param(b"<a>" * 300 + b"</a>" * 300, "nested too deeply", id="fail-deep-nesting"),
        pytest.param(
            with_parameters("<Organization>" + "x" * (1 << 20) + "</Organization>"),
            "exceeds the limit of 1048576 bytes",
            id="fail-oversize",
        ),
        pytest.param(
            with_parameters("<Organization>" + "x" * 1_000_000 + "</Organization>"),
            "(1000000 characters) is not 1-64",
            id="fail-huge-text",
        ),
    ],
)
def test_fail_request(data: bytes, expected: str) -> None:
    message = refusal(decode_request, data)
    assert expected in message
    assert len(message) < 400
    assert "root:" not in message  # nothing from /etc/passwd


def test_fail_request_control_valid() -> None:
    """Negative control for the table above: the unbroken base document decodes."""
    assert decode_request(request_xml("<DeviceId>d</DeviceId>")).device_id == "d"
    assert decode_request(with_parameters("<Locality>ab</Locality>")).parameters.locality == "ab"


def test_fail_billion_laughs_is_fast() -> None:
    started = time.perf_counter()
    refusal(decode_request, BILLION_LAUGHS)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            answer_xml(f"<Certificate>{b64(b'junk')}</Certificate>"),
            "Certificate is not a DER X.509",
            id="fail-certificate-not-der",
        ),
        pytest.param(
            answer_xml(
                "<Certificate>"
                + b64(
                    material().leaf_der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x05", 1)
                )
                + "</Certificate>"
            ),
            "Certificate is not a DER X.509",
            id="fail-certificate-unknown-version",
        ),
        pytest.param(
            answer_xml(
                f"<Certificate>{b64(material().leaf_der)}</Certificate><CACertificates>"
                f"<Certificate>{b64(material().root_der)}</Certificate>"
                f"<Certificate>{b64(material().csr_der)}</Certificate></CACertificates>"
            ),
            "CA certificate 2 is not a DER X.509",
            id="fail-ca-certificate-not-der",
        ),
        pytest.param(
            answer_xml(f"<Certificate>{b64(material().leaf_der)}</Certificate><CACertificates/>"),
            "Missing child element",
            id="fail-empty-chain",
        ),
        pytest.param(
            answer_xml(
                f"<Certificate>{b64(material().leaf_der)}</Certificate><CACertificates>"
                + f"<Certificate>{b64(material().root_der)}</Certificate>" * 11
                + "</CACertificates>"
            ),
            "This element is not expected",
            id="fail-chain-too-long",
        ),
        pytest.param(
            answer_xml(
                f"<PrivateKey>{b64(b'k')}</PrivateKey><Certificate>{b64(material().leaf_der)}</Certificate>"
            ),
            "attribute 'encrypted' is required",
            id="fail-key-without-encrypted",
        ),
        pytest.param(
            answer_xml(
                f'<PrivateKey encrypted="true">SECRETKEY%%</PrivateKey>'
                f"<Certificate>{b64(material().leaf_der)}</Certificate>"
            ),
            "PrivateKey is not base64",
            id="fail-key-not-base64",
        ),
        pytest.param(answer_xml(""), "Missing child element", id="fail-no-certificate"),
        pytest.param(
            error_xml("x", code="teapot"),
            "code 'teapot' is not one of malformed",
            id="fail-error-code",
        ),
        pytest.param(
            error_xml(""),
            "EnrollmentError '' is not a message of 1-1024",
            id="fail-error-empty-message",
        ),
        pytest.param(
            error_xml("m" * 1025),
            "(1025 characters) is not a message of 1-1024 characters",
            id="fail-error-message-too-long",
        ),
        pytest.param(
            encode_request(full_request()),
            "expected EnrollmentAnswer or EnrollmentError",
            id="fail-request-as-answer",
        ),
    ],
)
def test_fail_answer(data: bytes, expected: str) -> None:
    message = refusal(decode_answer, data)
    assert expected in message
    assert "SECRETKEY" not in message


def test_fail_answer_control_valid() -> None:
    data = answer_xml(
        f'<PrivateKey encrypted="false">{b64(b"k")}</PrivateKey>'
        f"<Certificate>{b64(material().leaf_der)}</Certificate>"
    )
    answer = decode_answer(data)
    assert isinstance(answer, EnrollmentAnswer) and answer.private_key_der == b"k"
    error = decode_answer(error_xml("try later", code=" unavailable "))
    assert error == EnrollmentError("r1", ErrorCode.UNAVAILABLE, "try later")


# --- secrecy ----------------------------------------------------------------------------------


def test_secret_not_in_repr() -> None:
    request = full_request()
    answer = full_answer()
    assert PASSPHRASE.decode() not in repr(request) and PASSPHRASE.decode() not in str(request)
    assert repr(answer.private_key_der) not in repr(answer)
    assert b64(answer.private_key_der or b"")[:20] not in repr(answer)


@pytest.mark.parametrize(
    "passphrase",
    [
        pytest.param("short-1", id="fail-too-short"),
        pytest.param("long-secret-" * 30, id="fail-too-long"),
        pytest.param("tab\tsecret-pass", id="fail-control-character"),
    ],
)
def test_secret_never_in_refusal(passphrase: str) -> None:
    data = with_parameters(f"<EncryptPrivateKey>{passphrase}</EncryptPrivateKey>")
    message = refusal(decode_request, data)
    assert message.startswith("EncryptPrivateKey is not a passphrase")
    assert "secret" not in message and "short-1" not in message
    with pytest.raises(InvalidEnrollmentMessage) as caught:
        EnrollmentParameters(encrypt_private_key=passphrase.encode())
    assert "secret" not in str(caught.value) and "short-1" not in str(caught.value)


def test_secret_structural_error_names_element_only() -> None:
    data = with_parameters("<EncryptPrivateKey>secret-passphrase<x/></EncryptPrivateKey>")
    message = refusal(decode_request, data)
    assert "EncryptPrivateKey" in message and "secret" not in message


@FUZZ
@pytest.mark.fuzz
@given(st.data())
def test_fuzz_secret_never_echoed_under_mutation(data: st.DataObject) -> None:
    """Whatever breaks around an intact EncryptPrivateKey element, its value stays unsaid."""
    document = encode_request(full_request())
    secret = PASSPHRASE
    start = document.index(b"<EncryptPrivateKey>")
    end = document.index(b"</EncryptPrivateKey>") + len(b"</EncryptPrivateKey>")
    parts = [bytearray(document[:start]), bytearray(document[end:])]
    for _ in range(data.draw(st.integers(1, 4))):
        part = parts[data.draw(st.integers(0, 1))]
        position = data.draw(st.integers(0, len(part)))
        action = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        snippet = data.draw(
            st.sampled_from([b"<", b">", b"<!--", b"<![CDATA[", b'"', b"&", b"x", b"\xff"])
        )
        if action == "delete":
            del part[position : position + data.draw(st.integers(1, 20))]
        elif action == "insert":
            part[position:position] = snippet
        else:
            part[position : position + 1] = snippet
    mutated = parts[0] + document[start:end] + parts[1]
    try:
        decode_request(bytes(mutated))
    except MalformedInput as exc:
        assert secret.decode() not in exc.message
        assert secret.decode()[:12] not in exc.message


# --- hostile and random input -----------------------------------------------------------------

HOSTILE_TOKENS = [
    "<",
    ">",
    "</",
    "/>",
    "=",
    '"',
    "'",
    " ",
    "\n",
    "&",
    ";",
    "#",
    "&#x0;",
    "&#65;",
    "&amp;",
    "<!DOCTYPE",
    "<!ENTITY",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "<?",
    "?>",
    "<?xml",
    'version="1.0"',
    "EnrollmentRequest",
    "EnrollmentAnswer",
    "EnrollmentError",
    "DeviceId",
    "Parameters",
    "CSR",
    "Certificate",
    "CACertificates",
    "PrivateKey",
    "encrypted",
    "requestId",
    "id",
    "reissue",
    "code",
    f'xmlns="{NAMESPACE}"',
    "xmlns:e",
    "e:",
    "AAAA",
    "true",
    "é",
    "\U0001f600",
    "\x00",
    "\x85",
    "%p;",
    "SYSTEM",
    "file:///etc/passwd",
]


@FUZZ
@pytest.mark.fuzz
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_only_malformed(data: bytes) -> None:
    for decode in (decode_request, decode_answer):
        with contextlib.suppress(MalformedInput):
            decode(data)
    request_id_of(data)


@FUZZ
@pytest.mark.fuzz
@given(st.lists(st.sampled_from(HOSTILE_TOKENS), max_size=60))
def test_fuzz_token_soup_only_malformed(tokens: list[str]) -> None:
    data = "".join(tokens).encode("utf-8", "surrogatepass")
    for decode in (decode_request, decode_answer):
        with contextlib.suppress(MalformedInput):
            decode(data)


@FUZZ
@pytest.mark.fuzz
@given(st.sampled_from(["request", "answer", "error"]), st.data())
def test_fuzz_mutated_documents_only_malformed(kind: str, data: st.DataObject) -> None:
    if kind == "request":
        document, decode = encode_request(full_request()), decode_request
    elif kind == "answer":
        document, decode = encode_answer(full_answer()), decode_answer
    else:
        document, decode = (
            encode_answer(EnrollmentError("r1", ErrorCode.INTERNAL, "x")),
            decode_answer,
        )
    mutated = bytearray(document)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(mutated)))
        action = data.draw(st.sampled_from(["delete", "insert", "flip", "truncate"]))
        if action == "delete":
            del mutated[position : position + data.draw(st.integers(1, 40))]
        elif action == "insert":
            token = data.draw(st.sampled_from(HOSTILE_TOKENS) | st.text(max_size=8))
            mutated[position:position] = token.encode("utf-8", "surrogatepass")
        elif action == "flip" and position < len(mutated):
            mutated[position] ^= 1 << data.draw(st.integers(0, 7))
        else:
            del mutated[position:]
    try:
        decode(bytes(mutated))
    except MalformedInput as exc:
        assert exc.message and "\n" not in exc.message


# --- dataclass validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        pytest.param(
            lambda: EnrollmentRequest("r1", "a b"), "DeviceId 'a b' is not", id="fail-device-id"
        ),
        pytest.param(
            lambda: EnrollmentRequest("", "d"), "id '' is not", id="fail-empty-request-id"
        ),
        pytest.param(lambda: EnrollmentRequest("r1", "d", ca="x/y"), "CA 'x/y'", id="fail-ca"),
        pytest.param(
            lambda: EnrollmentRequest("r1", "d", csr_der=b""), "CSR is not", id="fail-empty-csr"
        ),
        pytest.param(
            lambda: EnrollmentParameters(key_algorithm="dsa"),  # type: ignore[arg-type]
            "KeyAlgorithm 'dsa'",
            id="fail-key-algorithm",
        ),
        pytest.param(
            lambda: EnrollmentParameters(validity_days=0), "ValidityDays '0'", id="fail-validity"
        ),
        pytest.param(
            lambda: EnrollmentParameters(country="DEU"), "Country 'DEU'", id="fail-country"
        ),
        pytest.param(
            lambda: EnrollmentParameters(organization="a\nb"),
            "Organization 'a\\nb'",
            id="fail-newline",
        ),
        pytest.param(
            lambda: EnrollmentParameters(locality="\ud800"), "Locality", id="fail-surrogate"
        ),
        pytest.param(
            lambda: EnrollmentParameters(locality="\ufffe"), "Locality", id="fail-noncharacter"
        ),
        pytest.param(
            lambda: EnrollmentParameters(encrypt_private_key=b"\xff" * 10),
            "EncryptPrivateKey",
            id="fail-passphrase-utf8",
        ),
        pytest.param(
            lambda: EnrollmentParameters(dns_names=("a.example",) * 17),
            "at most 16 DnsName",
            id="fail-dns-count",
        ),
        pytest.param(
            lambda: EnrollmentParameters(ip_addresses=("1.2.3",)), "IpAddress '1.2.3'", id="fail-ip"
        ),
        pytest.param(
            lambda: EnrollmentAnswer("r1", b"c", private_key_encrypted=True),
            "no key",
            id="fail-encrypted-without-key",
        ),
        pytest.param(
            lambda: EnrollmentAnswer("r1", b"c", (b"c",) * 11), "at most 10", id="fail-chain-count"
        ),
        pytest.param(
            lambda: EnrollmentAnswer("r1", b""), "Certificate is not", id="fail-empty-certificate"
        ),
        pytest.param(
            lambda: EnrollmentError("r1", "teapot", "x"), "code 'teapot'", id="fail-error-code"
        ),  # type: ignore[arg-type]
        pytest.param(
            lambda: EnrollmentError("r1", ErrorCode.INTERNAL, ""),
            "EnrollmentError",
            id="fail-empty-message",
        ),
    ],
)
def test_fail_dataclass_value(build: object, expected: str) -> None:
    assert callable(build)
    with pytest.raises(InvalidEnrollmentMessage) as caught:
        build()
    assert expected in caught.value.message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, MalformedInput)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: EnrollmentRequest("r1", 5), id="fail-device-id-int"),  # type: ignore[arg-type]
        pytest.param(lambda: EnrollmentRequest("r1", "d", reissue=1), id="fail-reissue-int"),  # type: ignore[arg-type]
        pytest.param(lambda: EnrollmentParameters(validity_days=True), id="fail-days-bool"),  # type: ignore[arg-type]
        pytest.param(
            lambda: EnrollmentParameters(encrypt_private_key="text"), id="fail-passphrase-str"
        ),  # type: ignore[arg-type]
        pytest.param(lambda: EnrollmentParameters(dns_names="a.example"), id="fail-names-str"),  # type: ignore[arg-type]
        pytest.param(lambda: EnrollmentAnswer("r1", "cert"), id="fail-certificate-str"),  # type: ignore[arg-type]
        pytest.param(lambda: encode_request("<xml/>"), id="fail-encode-str"),  # type: ignore[arg-type]
        pytest.param(lambda: decode_request("<xml/>"), id="fail-decode-str"),  # type: ignore[arg-type]
    ],
)
def test_fail_dataclass_type(build: object) -> None:
    assert callable(build)
    with pytest.raises(TypeError):
        build()


def test_ok_dataclass_coercions() -> None:
    params = EnrollmentParameters(key_algorithm="ec-p384", dns_names=["a.example"])  # type: ignore[arg-type]
    assert params.key_algorithm is KeySpec.EC_P384
    assert params.dns_names == ("a.example",)
    error = EnrollmentError("r1", "unknown-ca", "line one\nline two\x00" + "x" * 2000)  # type: ignore[arg-type]
    assert error.code is ErrorCode.UNKNOWN_CA
    assert error.message.startswith("line one line two ")
    assert len(error.message) == 1024 and error.message.endswith("\u2026")
    assert decode_answer(encode_answer(error)) == error


@PROPERTY
@given(st.text(min_size=1, max_size=3000))
def test_ok_any_error_message_can_be_sent(message: str) -> None:
    error = EnrollmentError("r1", ErrorCode.INTERNAL, message)
    assert decode_answer(encode_answer(error)) == error


def test_fail_encoder_checks_schema() -> None:
    """The encoder's own XSD check catches a value that bypassed __post_init__."""
    request = EnrollmentRequest("r1", "d1")
    object.__setattr__(request, "device_id", "has space")
    with pytest.raises(MalformedInput, match="DeviceId 'has space'"):
        encode_request(request)
    answer = EnrollmentAnswer("r1", b"c")
    object.__setattr__(answer, "ca_certificates_der", (b"c",) * 11)
    with pytest.raises(MalformedInput, match="not expected"):
        encode_answer(answer)


def test_threads_get_their_own_errors() -> None:
    """Validators keep their error log on the object; each thread has its own."""

    def refuse(n: int) -> tuple[int, str]:
        return n, refusal(decode_request, request_xml(f"<DeviceId>bad {n}</DeviceId>"))

    with ThreadPoolExecutor(4) as pool:
        for n, message in pool.map(refuse, range(400)):
            assert f"DeviceId 'bad {n}' is not" in message


# --- request_id_of ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            request_xml("<DeviceId>a b</DeviceId>", 'id="r-9.x_1"'), "r-9.x_1", id="ok-invalid-body"
        ),
        pytest.param(
            b"<EnrollmentRequest id='r2' reissue='maybe'", "r2", id="ok-truncated-single-quotes"
        ),
        pytest.param(
            f'<e:EnrollmentRequest xmlns:e="{NAMESPACE}"\n  reissue="true"\tid = "r3">'.encode(),
            "r3",
            id="ok-prefix-whitespace",
        ),
        pytest.param(
            BILLION_LAUGHS.replace(b'id="r1"', b'id="lol"'), "lol", id="ok-billion-laughs"
        ),
        pytest.param(request_xml("<DeviceId>d</DeviceId>", 'id="r 1"'), None, id="fail-invalid-id"),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>", 'id="' + "r" * 65 + '"'), None, id="fail-long-id"
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>", 'xml:id="r1"'), None, id="fail-other-attribute"
        ),
        pytest.param(
            request_xml("<DeviceId>d</DeviceId>", 'reid="r1"'), None, id="fail-suffix-attribute"
        ),
        pytest.param(answer_xml(""), None, id="fail-not-a-request"),
        pytest.param(
            b" " * 5000 + request_xml("<DeviceId>d</DeviceId>"), None, id="fail-beyond-window"
        ),
        pytest.param(b"", None, id="fail-empty"),
    ],
)
def test_request_id_of(data: bytes, expected: str | None) -> None:
    assert request_id_of(data) == expected


@FUZZ
@pytest.mark.fuzz
@given(st.binary(max_size=4096))
def test_fuzz_request_id_of_total(data: bytes) -> None:
    found = request_id_of(data)
    assert found is None or re.fullmatch(r"[A-Za-z0-9._\-]{1,64}", found)


def test_request_id_of_is_fast_on_pathological_input() -> None:
    data = b"<EnrollmentRequest " + b" " * 4000 + b"i" * 1_000_000
    started = time.perf_counter()
    assert request_id_of(data) is None
    assert time.perf_counter() - started < 0.5


# --- the schema and the documentation -------------------------------------------------------


def schema() -> etree.XMLSchema:
    xsd = resources.files("ztpki.protocol").joinpath("enrollment.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(xsd))


def test_schema_ships_with_the_package() -> None:
    assert schema().validate(etree.fromstring(encode_request(full_request())))
    assert not schema().validate(etree.fromstring(request_xml("<CA>x</CA>")))


def doc_examples() -> list[str]:
    """The enrollment examples (the revocation ones are tested with their codec)."""
    found = re.findall(r"```xml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    return [x for x in found if "<Revocation" not in x and "revoke" not in x]


def test_doc_has_every_kind_of_example() -> None:
    roots = [etree.QName(etree.fromstring(x.encode())).localname for x in doc_examples()]
    assert {"EnrollmentRequest", "EnrollmentAnswer", "EnrollmentError"} <= set(roots)


@pytest.mark.parametrize("index", range(5))
def test_doc_example_validates_and_decodes(index: int) -> None:
    examples = doc_examples()
    if index >= len(examples):
        pytest.skip("fewer examples")
    data = examples[index].encode("utf-8")
    assert schema().validate(etree.fromstring(data)), schema().error_log
    decoded = decode_request(data) if b"<EnrollmentRequest" in data else decode_answer(data)
    if isinstance(decoded, EnrollmentAnswer) and decoded.private_key_encrypted:
        assert decoded.private_key_der is not None
        key = serialization.load_der_private_key(
            decoded.private_key_der, password=b"correct horse battery staple"
        )
        leaf = x509.load_der_x509_certificate(decoded.certificate_der)
        assert leaf.public_key() == key.public_key()


def test_doc_examples_count() -> None:
    assert len(doc_examples()) == 5  # keep test_doc_example_validates_and_decodes in step
