"""Structure-aware fuzzing of the parsers that read hostile bytes, with hypothesis.

tests/unit/protocol already throws random bytes, token soup and byte mutations at the XML and
EST codecs, and tests/unit/factory mutates signed manifests byte by byte. These targets go past
the first parse: documents built from the protocol's own vocabulary (schema-shaped XML),
manifests that are *validly signed* around hostile JSON, multipart answers assembled from
plausible parts, CSRs signed around hostile names and extensions, and client certificates
mutated before the node's authentication module reads them. Only the parsers' typed errors
may escape. `make test` runs a few dozen examples each; `make fuzz` (ZTPKI_FUZZ_EXAMPLES) many
more.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from tests.attacks.attack_report import AttackReport

from ztpki.errors import MalformedInput, NotAuthenticated, PayloadTooLarge, VerificationFailed
from ztpki.factory.signer import verify_own_manifest
from ztpki.node.authentication import AuthenticationModule, FactoryTrust
from ztpki.pki.authority import CertificateAuthority, IssuanceGrant, create_self_signed_ca
from ztpki.pki.keys import KeySpec, encode_pkcs8, generate_private_key
from ztpki.pki.names import SubjectFields, build_subject
from ztpki.pki.pem import certificate_der
from ztpki.pki.profiles import CertificateProfile
from ztpki.protocol.enrollment import decode_answer, decode_request
from ztpki.protocol.est import (
    csr_device_id,
    decode_csr,
    decode_serverkeygen,
    encode_certs_only,
    spki_sha256,
)
from ztpki.protocol.manifest import Manifest, ManifestEntry, sign_manifest

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("ZTPKI_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CATEGORY = "fuzzing"
NOW = datetime(2030, 6, 1, tzinfo=UTC)


def _record(report: AttackReport, target: str, attack: str, errors: str) -> None:
    report.record(
        case=f"{CATEGORY}/{target}",
        category=CATEGORY,
        attack=attack,
        observed=(
            f"up to {EXAMPLES} generated inputs per run (ZTPKI_FUZZ_EXAMPLES; `make fuzz`: "
            f"20,000): only {errors} ever escaped; every accepted input decoded to a valid object"
        ),
        verdict="robust",
    )


# --- a small PKI, made once per process ----------------------------------------------------


@cache
def pki() -> dict[str, Any]:
    start = NOW - timedelta(days=1)
    root_key = generate_private_key(KeySpec.EC_P256)
    root = create_self_signed_ca(
        root_key,
        build_subject("Fuzz Root", SubjectFields(organization="Fuzz"), serial_number=None),
        now=start,
        validity=timedelta(days=3650),
    )
    root_ca = CertificateAuthority("root", root_key, root)
    factory_key = generate_private_key(KeySpec.EC_P256)
    factory_cert = root_ca.issue(
        factory_key.public_key(),
        IssuanceGrant(
            subject=build_subject("Fuzz Factory", SubjectFields(), serial_number=None),
            profile=CertificateProfile.CA,
            not_before=start,
            not_after=start + timedelta(days=3000),
            path_length=0,
        ),
    )
    factory = CertificateAuthority("factory", factory_key, factory_cert, (root,))

    def leaf(profile: CertificateProfile, name: str) -> tuple[Any, x509.Certificate]:
        key = generate_private_key(KeySpec.EC_P256)
        cert = factory.issue(
            key.public_key(),
            IssuanceGrant(
                subject=build_subject(name, SubjectFields(), serial_number=name),
                profile=profile,
                not_before=start,
                not_after=start + timedelta(days=365),
            ),
        )
        return key, cert

    signer_key, signer = leaf(CertificateProfile.MANIFEST_SIGNER, "signer")
    device_key, device = leaf(CertificateProfile.DEVICE, "DEV-000001")
    return {
        "root": root,
        "factory": factory_cert,
        "signer_key": signer_key,
        "signer": signer,
        "device_key": device_key,
        "device": device,
    }


# --- manifests: validly signed around hostile content --------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jws(header: Any, payload: bytes) -> bytes:
    """A flattened JWS whose ES256 signature over header and payload is genuine."""
    protected = _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
    body = _b64url(payload)
    der = pki()["signer_key"].sign(f"{protected}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    container = {"payload": body, "protected": protected, "signature": signature}
    return json.dumps(container, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def _header(**changes: Any) -> dict[str, Any]:
    chain = [pki()["signer"], pki()["factory"]]
    header = {
        "alg": "ES256",
        "typ": "ztpki-manifest+json",
        "x5c": [base64.b64encode(certificate_der(c)).decode() for c in chain],
    }
    header.update(changes)
    return header


def _genuine_payload() -> dict[str, Any]:
    signed = sign_manifest(
        Manifest(
            manifest_id="m1",
            manufacturer="Fuzz",
            batch="B1",
            order=None,
            issued_at=NOW,
            entries=(ManifestEntry("DEV-000001", "ab" * 32, "box", "B1", NOW),),
        ),
        key=pki()["signer_key"],
        chain=[pki()["signer"], pki()["factory"]],
    )
    payload = json.loads(signed)["payload"]
    result: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return result


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    """The genuine manifest JSON with members replaced, removed or added at any depth."""
    payload = _genuine_payload()
    for _ in range(draw(st.integers(1, 4))):
        target: Any = payload
        if draw(st.booleans()) and payload.get("devices"):
            devices = payload["devices"]
            target = devices[0] if isinstance(devices, list) and devices else payload
        if not isinstance(target, dict):
            break
        action = draw(st.sampled_from(["replace", "remove", "add", "duplicate-device"]))
        key = draw(st.sampled_from(sorted(target) or ["x"]))
        if action == "replace":
            target[key] = draw(JSON)
        elif action == "remove":
            target.pop(key, None)
        elif action == "add":
            target[draw(st.text(max_size=10))] = draw(JSON)
        elif isinstance(payload.get("devices"), list):
            payload["devices"] = payload["devices"] * draw(st.integers(0, 3))
    text = json.dumps(payload, sort_keys=draw(st.booleans()), ensure_ascii=draw(st.booleans()))
    return text.encode()


@st.composite
def hostile_headers(draw: st.DrawFn) -> Any:
    choice = draw(st.sampled_from(["alg", "typ", "x5c", "extra", "crit", "any"]))
    if choice == "any":
        return draw(JSON)
    if choice == "extra":
        return _header(**{draw(st.text(max_size=8)): draw(JSON)})
    if choice == "crit":
        return _header(crit=draw(JSON))
    if choice == "x5c":
        certs = draw(
            st.lists(
                st.one_of(
                    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
                    st.deferred(lambda: mutated_certificates()).map(
                        lambda b: base64.b64encode(b).decode()
                    ),
                    st.text(max_size=30),
                    JSON,
                ),
                max_size=10,
            )
        )
        return _header(x5c=certs)
    return _header(**{choice: draw(JSON)})


def _verify(data: bytes) -> None:
    try:
        verified = verify_own_manifest(data, anchors=[pki()["root"]], now=NOW)
    except (MalformedInput, VerificationFailed) as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert isinstance(verified.manifest, Manifest)


def test_robust_manifest_signed_hostile_payload(attack_report: AttackReport) -> None:
    @FUZZ
    @given(st.one_of(mutated_payloads(), JSON.map(lambda v: json.dumps(v).encode())))
    def check(payload: bytes) -> None:
        _verify(_jws(_header(), payload))

    check()
    _record(
        attack_report,
        "manifest-signed-hostile-payload",
        "verify_manifest on manifests whose ES256 signature and signer chain are genuine but "
        "whose payload is the real manifest JSON with members replaced by arbitrary JSON, "
        "removed, added or duplicated (or arbitrary JSON)",
        "MalformedInput and VerificationFailed",
    )


def test_robust_manifest_signed_hostile_header(attack_report: AttackReport) -> None:
    @FUZZ
    @given(hostile_headers(), st.sampled_from([b"{}", json.dumps(_genuine_payload()).encode()]))
    def check(header: Any, payload: bytes) -> None:
        _verify(_jws(header, payload))

    check()
    _record(
        attack_report,
        "manifest-signed-hostile-header",
        "verify_manifest on validly signed manifests whose protected header has arbitrary "
        "alg, typ, crit, extra members, or an x5c of arbitrary strings and non-certificates",
        "MalformedInput and VerificationFailed",
    )


# --- the XML codec: documents built from the protocol's own vocabulary ---------------------

NAMESPACES = st.sampled_from(["urn:ztpki:enrollment:1", "", "urn:other", "urn:ztpki:enrollment:2"])
ROOTS = ["EnrollmentRequest", "EnrollmentAnswer", "EnrollmentError"]
ELEMENTS = [
    "DeviceId",
    "CA",
    "Parameters",
    "KeyAlgorithm",
    "ValidityDays",
    "Organization",
    "OrganizationalUnit",
    "Locality",
    "Country",
    "Email",
    "EncryptPrivateKey",
    "IncludeCACertificates",
    "DnsName",
    "IpAddress",
    "CSR",
    "PrivateKey",
    "Certificate",
    "CACertificates",
]
ATTRIBUTES = ["id", "reissue", "requestId", "code", "encrypted", "xml:lang", "other"]
TEXTS = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "true",
            "false",
            "1",
            "0",
            "ec-p256",
            "rsa-4096",
            "SE",
            "a@b.se",
            "1.2.3.4",
            "::1",
            "-1",
            "99999999999999999999",
            "dev-1",
            "",
        ]
    ),
    st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
)


def _clean(text: str) -> str:
    # lxml refuses characters XML cannot carry; the wire can, and the decoder sees them in
    # the random-bytes tests of tests/unit/protocol.
    return "".join(c for c in text if c in "\t\n\r" or (" " <= c <= "\ud7ff") or c >= "\ue000")


@st.composite
def xml_documents(draw: st.DrawFn) -> bytes:
    namespace = draw(NAMESPACES)

    def element(name: str) -> etree._Element:
        tag = f"{{{namespace}}}{name}" if namespace else name
        node = etree.Element(tag, nsmap={None: namespace} if namespace else None)  # type: ignore[dict-item]
        for attribute in draw(st.lists(st.sampled_from(ATTRIBUTES), max_size=3, unique=True)):
            key = (
                "{http://www.w3.org/XML/1998/namespace}lang"
                if attribute == "xml:lang"
                else attribute
            )
            node.set(key, _clean(draw(TEXTS)))
        return node

    def fill(node: etree._Element, depth: int) -> None:
        if depth == 0 or draw(st.booleans()):
            node.text = _clean(draw(TEXTS))
            return
        for name in draw(st.lists(st.sampled_from(ELEMENTS), max_size=5)):
            child = element(name)
            node.append(child)
            fill(child, depth - 1)

    root = element(draw(st.sampled_from(ROOTS)))
    fill(root, draw(st.integers(1, 4)))
    return bytes(etree.tostring(root, xml_declaration=draw(st.booleans()), encoding="UTF-8"))


def test_robust_xml_codec_schema_shaped(attack_report: AttackReport) -> None:
    @FUZZ
    @given(xml_documents())
    def check(document: bytes) -> None:
        for decode in (decode_request, decode_answer):
            try:
                decode(document)
            except MalformedInput as exc:
                assert exc.message and "\n" not in exc.message

    check()
    _record(
        attack_report,
        "xml-codec-schema-shaped",
        "decode_request and decode_answer on well-formed documents built from the protocol's "
        "own element and attribute names, in any order and nesting, in four namespaces, "
        "with arbitrary text, booleans, numbers, addresses and base64",
        "MalformedInput",
    )


# --- EST: multipart serverkeygen answers and signed CSRs ----------------------------------------


@cache
def parts() -> dict[str, bytes]:
    key = generate_private_key(KeySpec.EC_P256)
    return {
        "pkcs8": base64.encodebytes(encode_pkcs8(key, passphrase=None)),
        "certs": encode_certs_only([pki()["device"]]),
        "junk": base64.encodebytes(b"\x30\x03\x02\x01\x00"),
    }


PART_TYPES = st.sampled_from(
    [
        "application/pkcs8",
        "application/pkcs7-mime; smime-type=certs-only",
        "application/pkcs7-mime",
        "text/plain",
        "application/pkcs8; charset=x",
        "",
    ]
)
ENCODINGS = st.sampled_from(["base64", "binary", "7bit", "", "BASE64"])


@st.composite
def multipart_answers(draw: st.DrawFn) -> tuple[str, bytes]:
    boundary = draw(st.sampled_from(["est-boundary", "b", "x" * 70, "a b", "=_?"]))
    declared = boundary if draw(st.integers(0, 4)) else draw(st.text(max_size=10))
    chunks = [draw(st.sampled_from([b"", b"preamble\r\n"]))]
    for _ in range(draw(st.integers(0, 4))):
        body = draw(
            st.sampled_from(sorted(parts())).map(parts().__getitem__) | st.binary(max_size=80)
        )
        headers = f"Content-Type: {draw(PART_TYPES)}\r\n"
        if draw(st.booleans()):
            headers += f"Content-Transfer-Encoding: {draw(ENCODINGS)}\r\n"
        chunks.append(f"--{boundary}\r\n{headers}\r\n".encode() + body + b"\r\n")
    if draw(st.booleans()):
        chunks.append(f"--{boundary}--\r\n".encode())
    content_type = (
        draw(st.sampled_from(["multipart/mixed", "multipart/related", "text/plain"]))
        + f'; boundary="{declared}"'
    )
    return content_type, b"".join(chunks)


def test_robust_serverkeygen_multipart(attack_report: AttackReport) -> None:
    @FUZZ
    @given(multipart_answers())
    def check(answer: tuple[str, bytes]) -> None:
        try:
            decode_serverkeygen(*answer)
        except (MalformedInput, PayloadTooLarge) as exc:
            assert exc.message

    check()
    _record(
        attack_report,
        "est-serverkeygen-multipart",
        "decode_serverkeygen on multipart answers assembled from real parts (a PKCS#8 key, a "
        "certs-only PKCS#7, junk DER, random bytes) with varied part types, transfer "
        "encodings, boundaries (declared and used apart), preambles and missing terminators",
        "MalformedInput and PayloadTooLarge",
    )


_UTF8 = _ASN1Type.UTF8String
SUBJECT_OIDS = st.sampled_from(
    [
        NameOID.COMMON_NAME,
        NameOID.SERIAL_NUMBER,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.EMAIL_ADDRESS,
        x509.ObjectIdentifier("1.2.3.4"),
    ]
)


@st.composite
def hostile_csrs(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(st.tuples(SUBJECT_OIDS, st.text(min_size=1, max_size=64)), max_size=5))
    # UTF8String throughout: cryptography would refuse to write most text as the
    # PrintableString that serialNumber defaults to, and an attacker is not so polite.
    attributes = []
    for oid, value in names:
        try:
            attributes.append(x509.NameAttribute(oid, value, _type=_UTF8))
        except ValueError:  # a length cryptography itself refuses to write
            continue
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    used: set[str] = set()
    for _ in range(draw(st.integers(0, 4))):
        dotted = draw(st.sampled_from(["2.5.29.19", "2.5.29.17", "2.5.29.15", "1.3.6.1.4.1.1.1"]))
        if dotted in used:
            continue
        used.add(dotted)
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(dotted), draw(st.binary(max_size=40))),
            critical=draw(st.booleans()),
        )
    for dotted in draw(st.lists(st.sampled_from(["1.2.840.113549.1.9.7", "1.2.3.5"]), unique=True)):
        raw = draw(st.text(min_size=1, max_size=40)).encode("utf-8", "surrogatepass")
        builder = builder.add_attribute(x509.ObjectIdentifier(dotted), raw)
    csr = builder.sign(pki()["device_key"], hashes.SHA256())
    der = csr.public_bytes(serialization.Encoding.DER)
    encoded = base64.encodebytes(der) if draw(st.booleans()) else base64.b64encode(der)
    return encoded


def test_robust_est_csr_signed_hostile_content(attack_report: AttackReport) -> None:
    @FUZZ
    @given(hostile_csrs(), st.sampled_from(["application/pkcs10", "application/PKCS10; x=1"]))
    def check(body: bytes, content_type: str) -> None:
        try:
            csr = decode_csr(body, content_type=content_type)
        except (MalformedInput, PayloadTooLarge) as exc:
            assert exc.message
            return
        spki_sha256(csr.public_key())
        try:
            named = csr_device_id(csr)
        except MalformedInput:
            return
        assert named is None or isinstance(named, str)

    check()
    _record(
        attack_report,
        "est-csr-signed-hostile-content",
        "decode_csr, csr_device_id and spki_sha256 on validly signed CSRs with arbitrary "
        "subject attributes (repeated, unknown, any text), raw unparsed extensions "
        "(basicConstraints, SAN, keyUsage, private; critical or not) and attributes",
        "MalformedInput and PayloadTooLarge",
    )


# --- the node's authentication module on mutated client certificates -------------------------


@st.composite
def mutated_certificates(draw: st.DrawFn) -> bytes:
    der = bytearray(certificate_der(pki()["device"]))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(der) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if action == "flip":
            der[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            der[position] = draw(st.integers(0, 255))
        elif action == "insert":
            der[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del der[position : position + draw(st.integers(1, 8))]
        else:
            del der[position:]
        if not der:
            break
    return bytes(der)


def test_robust_node_authentication_mutated_certificates(attack_report: AttackReport) -> None:
    module = AuthenticationModule(
        FactoryTrust.from_bundles([[pki()["factory"], pki()["root"]]]), []
    )
    genuine = module.authenticate(certificate_der(pki()["device"]), now=NOW)
    assert genuine.device_id == "DEV-000001"  # the control: the unmutated one is accepted

    @FUZZ
    @given(st.one_of(mutated_certificates(), st.binary(max_size=300)))
    def check(der: bytes) -> None:
        try:
            identity = module.authenticate(der, now=NOW)
        except NotAuthenticated as exc:
            assert exc.message
            return
        # A mutation the signature does not cover (there is none in a certificate's TBS and
        # signature) could only be accepted as the genuine device.
        assert identity.device_id == "DEV-000001"

    check()
    _record(
        attack_report,
        "node-authentication-mutated-certificates",
        "the node's AuthenticationModule.authenticate on a device certificate's DER with "
        "bits flipped, bytes set, inserted, deleted or truncated, and on random bytes",
        "NotAuthenticated",
    )
